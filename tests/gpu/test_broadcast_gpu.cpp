// Inputs broadcast through zero strides (K/V or Q stored once for every sequence or head): forward
// and both backward splits on the default path (the portable family where no TMA map describes a
// tensor) against fp64 references; sm90 tiles asked for explicitly rejected, naming the tensor,
// before anything is written; the sm90 dK/dV kernel on broadcast K/V; the tests' own geometry.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <random>
#include <sigattn/sigattn.hpp>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "backward_reference.hpp"
#include "generator/kernel_spec.hpp"
#include "generator/tile_policy.hpp"
#include "gpu_test_env.hpp"
#include "numerics.hpp"
#include "problem.hpp"
#include "reference.hpp"
#include "runtime/backward.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/forward.hpp"

namespace sigattn::test {
namespace {

constexpr DType bf16 = DType::bf16;

// K and V shared by every sequence or by every kv head; d64 and d128, GQA and MQA, causal, dense
// (anylen and x128), padded and packed storage. Small enough for the fp64 CPU references.
std::vector<Problem> kv_cases() {
  return {
      Case(bf16, 64).bthd(3, 100, 130).heads(4, 2).causal().broadcast_kv(Broadcast::batch),
      Case(bf16, 128).bthd(2, 128, 128).heads(4, 1).broadcast_kv(Broadcast::batch),
      Case(bf16, 64).bhtd(2, 90, 90).heads(8, 4).broadcast_kv(Broadcast::heads),
      Case(bf16, 128)
          .padded(100, 100, {100, 37, 0}, {80, 100, 64})
          .heads(4, 2)
          .causal()
          .broadcast_kv(Broadcast::batch),
      Case(bf16, 64).varlen({50, 0, 90}, {70, 1, 128}).heads(4, 2).broadcast_kv(Broadcast::heads)};
}

// Q shared, with K/V or alone, which also keeps the sm90 dK/dV kernel (TMA maps of Q and dO) from
// running.
std::vector<Problem> q_cases() {
  return {Case(bf16, 128)
              .bthd(2, 96, 160)
              .heads(4, 2)
              .causal()
              .broadcast_q(Broadcast::batch)
              .broadcast_kv(Broadcast::heads),
          Case(bf16, 64)
              .padded(100, 100, {100, 33}, {64, 100})
              .heads(4, 4)
              .broadcast_q(Broadcast::heads)};
}

// The host addresses that stand in for device pointers where only host-side checks run.
void* placeholder() {
  alignas(256) static std::byte bytes[256];
  return bytes;
}

BackwardArgs backward_args(const Problem& p, const ForwardArgs& inputs, void* dout, void* dq,
                           void* dk, void* dv) {
  const auto with = [](TensorRef layout, void* data) {
    layout.data = data;
    return layout;
  };
  BackwardArgs args;
  args.inputs = inputs;
  args.grad_out = with(p.q_layout(), dout);
  args.grad_q = with(p.q_layout(), dq);
  args.grad_k = with(p.kv_layout(), dk);
  args.grad_v = with(p.kv_layout(), dv);
  return args;
}

BackwardArgs placeholder_backward_args(const Problem& p) {
  return backward_args(p, placeholder_args(p, placeholder()), placeholder(), placeholder(),
                       placeholder(), placeholder());
}

// The fields naming each broadcast stride among q (with_q) and k, v (with_kv), e.g.
// "k.batch_stride": what a rejection must name.
std::vector<std::string> broadcast_strides(const Problem& p, bool with_q, bool with_kv) {
  std::vector<std::string> names;
  const auto add = [&](const char* tensor, Broadcast broadcast) {
    if (broadcast == Broadcast::batch) names.push_back(fmt::format("{}.batch_stride", tensor));
    if (broadcast == Broadcast::heads) names.push_back(fmt::format("{}.head_stride", tensor));
  };
  if (with_q) add("q", p.q_broadcast);
  if (with_kv) {
    add("k", p.kv_broadcast);
    add("v", p.kv_broadcast);
  }
  return names;
}

// The sm90 dK/dV tiles of both splits that the heuristic prefers, where the GPU has them.
std::vector<gen::TileConfig> hopper_dkdv_tiles(const gen::KernelSpec& dkdv,
                                               const policy::Target& target) {
  std::vector<gen::TileConfig> tiles;
  for (bool atomic_dq : {false, true}) {
    const gen::TileConfig tile = policy::default_tile(dkdv, target, atomic_dq).tile;
    if (tile.family == gen::Family::sm90) tiles.push_back(tile);
  }
  return tiles;
}

std::optional<gen::TileConfig> first_sm90_candidate(const gen::KernelSpec& spec,
                                                    const policy::Target& target) {
  for (const gen::TileConfig& tile : policy::candidates(spec, target)) {
    if (tile.family == gen::Family::sm90) return tile;
  }
  return std::nullopt;
}

const bool kVariantsRegistered = register_variants([](const Gpu& gpu) {
  std::vector<gen::Variant> variants;
  const auto add = [&](const std::vector<Problem>& table, bool hopper_dkdv) {
    for (const Problem& p : table) {
      if (!param_selected(p.name())) continue;
      const gen::ParsedVariant forward =
          gen::parse_variant(explain_forward(placeholder_args(p, placeholder())).variant);
      variants.push_back({forward.spec, *forward.tile});
      const BackwardArgs args = placeholder_backward_args(p);
      const BackwardSpecs specs = backward_specs(args);
      for (bool deterministic : {true, false}) {
        const BackwardTiles tiles = chosen_backward_tiles(args, specs, gpu.target, deterministic);
        variants.push_back({specs.dkdv, tiles.dkdv});
        if (!tiles.dkdv.atomic_dq) variants.push_back({specs.dq, tiles.dq});
      }
      if (!hopper_dkdv) continue;
      for (const gen::TileConfig& tile : hopper_dkdv_tiles(specs.dkdv, gpu.target)) {
        variants.push_back({specs.dkdv, tile});
      }
    }
  };
  add(kv_cases(), true);
  add(q_cases(), false);
  return variants;
});

void synchronize() { SIGATTN_CU(cuda::driver().cuCtxSynchronize()); }

bool still_poisoned(const cuda::DeviceBuffer& buffer) {
  std::vector<unsigned char> bytes(buffer.size());
  buffer.download(bytes.data(), bytes.size());
  return std::all_of(bytes.begin(), bytes.end(), [](unsigned char b) { return b == 0xFF; });
}

// Runs `call`, which must throw Error(invalid_argument) whose message names every field of
// `names`.
template <class Call>
void expect_rejected(Call&& call, const std::vector<std::string>& names) {
  try {
    call();
    ADD_FAILURE() << "the call was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::invalid_argument) << e.what();
    for (const std::string& name : names) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos)
          << "the message does not name " << name << ": " << e.what();
    }
  }
}

double max_abs(const std::vector<double>& values) {
  double largest = 0.0;
  for (double value : values) largest = std::max(largest, std::abs(value));
  return largest;
}

// Visits each stored row of the q side (out, dO, dQ) or the kv side (dK, dV) at its offset in
// the full layout; rows past the valid length are padding.
template <class Visit>
void for_each_row(const Problem& p, bool kv_side, Visit&& visit) {
  const int heads = kv_side ? p.heads_kv : p.heads_q;
  for (int b = 0; b < p.batch; ++b) {
    const int stored = kv_side ? p.stored_k(b) : p.stored_q(b);
    const int valid = kv_side ? p.valid_k(b) : p.valid_q(b);
    for (int t = 0; t < stored; ++t) {
      for (int h = 0; h < heads; ++h) {
        visit(kv_side ? p.kv_offset(b, t, h) : p.q_offset(b, t, h), b, t, h, t >= valid);
      }
    }
  }
}

// Compares a 16-bit output or gradient with its reference over every stored row of its side.
Comparison compare(const Problem& p, const std::vector<std::uint16_t>& out,
                   const std::vector<double>& ref, bool kv_side, Tolerance tolerance) {
  ErrorAccumulator accumulator(max_abs(ref), tolerance);
  for_each_row(p, kv_side, [&](std::int64_t row, int b, int t, int h, bool padding) {
    for (int d = 0; d < p.head_dim; ++d) {
      accumulator.add(Element{row + d, b, t, h, d, padding}, from_bits(p.dtype, out[row + d]),
                      ref[row + d]);
    }
  });
  return accumulator.result();
}

std::vector<std::uint16_t> download_bits(const cuda::DeviceBuffer& buffer) {
  std::vector<std::uint16_t> bits(buffer.size() / sizeof(std::uint16_t));
  buffer.download(bits.data(), buffer.size());
  return bits;
}

// Gradients round P and dS to the dtype before their products and sum over many more terms than
// the forward: twice the forward's bounds, as in the backward tests.
Tolerance gradient_tolerance(DType dtype) {
  const Tolerance t = tolerance_for(dtype);
  return {2.0 * t.rel_l2, 2.0 * t.max_rel};
}

// A problem's inputs, upstream gradient dO (Normal(0, 1) in the dtype, full layout) and
// gradient buffers on the device.
struct BackwardProblem {
  BackwardProblem(const Problem& p, std::uint64_t seed)
      : problem(p), inputs(make_inputs(p, seed)), device(upload(p, inputs)) {
    std::mt19937_64 engine(seed ^ 0x9E3779B97F4A7C15ull);
    std::normal_distribution<float> normal;
    dout.resize(p.q_elements());
    std::vector<std::uint16_t> bits(dout.size());
    for (std::size_t i = 0; i < dout.size(); ++i) {
      bits[i] = to_bits(p.dtype, normal(engine));
      dout[i] = from_bits(p.dtype, bits[i]);
    }
    const std::size_t q_bytes = p.q_elements() * sizeof(std::uint16_t);
    const std::size_t kv_bytes = p.kv_elements() * sizeof(std::uint16_t);
    grad_out = cuda::DeviceBuffer(q_bytes);
    grad_out.upload(bits.data(), q_bytes);
    grad_q = cuda::DeviceBuffer(q_bytes);
    grad_k = cuda::DeviceBuffer(kv_bytes);
    grad_v = cuda::DeviceBuffer(kv_bytes);
    args = backward_args(p, device.args, grad_out.get(), grad_q.get(), grad_k.get(), grad_v.get());
  }

  void poison() {
    for (cuda::DeviceBuffer* buffer : {&grad_q, &grad_k, &grad_v}) buffer->fill_bytes(0xFF);
  }

  bool gradients_untouched() const {
    return still_poisoned(grad_q) && still_poisoned(grad_k) && still_poisoned(grad_v);
  }

  // Poisons the gradients, runs `call` and compares what it wrote with the fp64 reference.
  template <class Call>
  void expect_matches(Call&& call, const std::string& what) {
    poison();
    try {
      call();
      synchronize();
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": " << e.what();
      return;
    }
    if (!reference) reference = cpu_backward_reference(problem, inputs, dout);
    for (const auto& [name, buffer, expected, kv_side] :
         {std::tuple{"dQ", &grad_q, &reference->dq, false},
          std::tuple{"dK", &grad_k, &reference->dk, true},
          std::tuple{"dV", &grad_v, &reference->dv, true}}) {
      const Comparison c = compare(problem, download_bits(*buffer), *expected, kv_side,
                                   gradient_tolerance(problem.dtype));
      EXPECT_TRUE(c.passed) << name << ", " << what << ": " << c.summary;
    }
  }

  Problem problem;
  HostInputs inputs;
  DeviceInputs device;
  std::vector<double> dout;
  cuda::DeviceBuffer grad_out, grad_q, grad_k, grad_v;
  BackwardArgs args;
  std::optional<GradientSet<double>> reference;  // fp64, computed on first use
};

// Empty when `a` and `b` are equal, else where they first differ.
std::string difference(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return fmt::format("{} elements against {}", a.size(), b.size());
  const auto [x, y] = std::mismatch(a.begin(), a.end(), b.begin());
  if (x == a.end()) return {};
  return fmt::format("element {}: {} against {}", x - a.begin(), *x, *y);
}

std::string context_of(const Problem& p, std::uint64_t seed) {
  return fmt::format("problem {}, seed {} (SIGATTN_TEST_SEED={})", p.name(), seed, base_seed());
}

class BroadcastForward : public GpuTest, public testing::WithParamInterface<Problem> {};

TEST_P(BroadcastForward, DefaultPathRunsThePortableFamilyAndMatchesReference) {
  const Problem& p = GetParam();
  p.validate();
  SCOPED_TRACE(context_of(p, seed()));
  const HostInputs inputs = make_inputs(p, seed());
  DeviceInputs device = upload(p, inputs);

  const Dispatch dispatch = explain_forward(device.args);
  const gen::ParsedVariant chosen = gen::parse_variant(dispatch.variant);
  EXPECT_NE(chosen.tile->family, gen::Family::sm90)
      << dispatch.variant << " chosen for broadcast inputs: " << dispatch.reason;
  // Where the same call on full tensors would take an sm90 tile, the fallback says why.
  Problem full = p;
  full.q_broadcast = full.kv_broadcast = Broadcast::none;
  const Dispatch full_dispatch = explain_forward(placeholder_args(full, placeholder()));
  if (gen::parse_variant(full_dispatch.variant).tile->family == gen::Family::sm90) {
    for (const std::string& name : broadcast_strides(p, true, true)) {
      EXPECT_NE(dispatch.reason.find(name), std::string::npos)
          << "the fallback reason does not name " << name << ": " << dispatch.reason;
    }
  }

  device.out.fill_bytes(0xFF);  // NaN in both dtypes: an unwritten element fails
  try {
    forward(device.args, nullptr);
    synchronize();
  } catch (const std::exception& e) {
    FAIL() << dispatch.variant << ": " << e.what();
  }
  EXPECT_EQ(last_dispatch().variant, dispatch.variant);
  const std::vector<double> ref = cpu_reference(p, inputs);
  ErrorAccumulator accumulator(max_abs(ref), tolerance_for(p.dtype));
  const std::vector<float> out = download_output(p, device);
  for_each_output(p, [&](const Element& e) { accumulator.add(e, out[e.offset], ref[e.offset]); });
  const Comparison result = accumulator.result();
  EXPECT_TRUE(result.passed) << dispatch.variant << ": " << result.summary;
}

TEST_P(BroadcastForward, ExplicitSm90TileIsRejectedBeforeTheOutputIsTouched) {
  const Problem& p = GetParam();
  p.validate();
  SCOPED_TRACE(context_of(p, seed()));
  const HostInputs inputs = make_inputs(p, seed());
  DeviceInputs device = upload(p, inputs);
  const gen::KernelSpec spec = forward_spec(device.args);
  const std::optional<gen::TileConfig> tile = first_sm90_candidate(spec, gpu().target);
  if (!tile) GTEST_SKIP() << gpu().arch << " has no sm90 tile for " << gen::to_string(spec);
  device.out.fill_bytes(0xFF);
  expect_rejected([&] { forward_with_tile(device.args, nullptr, *tile); },
                  broadcast_strides(p, true, true));
  synchronize();
  EXPECT_TRUE(still_poisoned(device.out)) << "the output was written by a rejected call";
}

const auto name_of = [](const testing::TestParamInfo<Problem>& info) { return info.param.name(); };

INSTANTIATE_TEST_SUITE_P(SharedKv, BroadcastForward, testing::ValuesIn(kv_cases()), name_of);
INSTANTIATE_TEST_SUITE_P(SharedQ, BroadcastForward, testing::ValuesIn(q_cases()), name_of);

class BroadcastBackward : public GpuTest, public testing::WithParamInterface<Problem> {};

TEST_P(BroadcastBackward, DefaultPathMatchesReferenceInBothSplits) {
  const Problem& p = GetParam();
  p.validate();
  SCOPED_TRACE(context_of(p, seed()));
  BackwardProblem bp(p, seed());
  const BackwardSpecs specs = backward_specs(bp.args);
  for (bool deterministic : {true, false}) {
    const BackwardTiles tiles = chosen_backward_tiles(bp.args, specs, gpu().target, deterministic);
    // The sm90 dQ kernel streams k and v, the sm90 dK/dV kernel only q and dO.
    if (!tiles.dkdv.atomic_dq) {
      EXPECT_NE(tiles.dq.family, gen::Family::sm90) << gen::to_string(tiles.dq);
    }
    if (p.q_broadcast != Broadcast::none) {
      EXPECT_NE(tiles.dkdv.family, gen::Family::sm90) << gen::to_string(tiles.dkdv);
    }
    bp.args.deterministic = deterministic;
    bp.expect_matches(
        [&] { backward(bp.args, nullptr); },
        fmt::format("{} split, dkdv {}, dq {}", deterministic ? "deterministic" : "one-pass",
                    gen::to_string(gen::Variant{specs.dkdv, tiles.dkdv}),
                    gen::to_string(gen::Variant{specs.dq, tiles.dq})));
  }
}

// The dK/dV tile backward() would run ahead of it is a real launch: a dQ tile rejected only at
// its own launch would leave dK and dV written.
TEST_P(BroadcastBackward, ExplicitSm90DqTileIsRejectedBeforeAnyGradientIsWritten) {
  const Problem& p = GetParam();
  p.validate();
  SCOPED_TRACE(context_of(p, seed()));
  BackwardProblem bp(p, seed());
  const BackwardSpecs specs = backward_specs(bp.args);
  const std::optional<gen::TileConfig> dq = first_sm90_candidate(specs.dq, gpu().target);
  if (!dq) GTEST_SKIP() << gpu().arch << " has no sm90 tile for " << gen::to_string(specs.dq);
  const gen::TileConfig dkdv = chosen_backward_tiles(bp.args, specs, gpu().target, true).dkdv;
  bp.poison();
  expect_rejected([&] { backward_with_tiles(bp.args, nullptr, dkdv, *dq); },
                  broadcast_strides(p, true, true));
  synchronize();
  EXPECT_TRUE(bp.gradients_untouched())
      << "a rejected call wrote gradients (dkdv tile " << gen::to_string(dkdv) << ")";
}

INSTANTIATE_TEST_SUITE_P(SharedKv, BroadcastBackward, testing::ValuesIn(kv_cases()), name_of);
INSTANTIATE_TEST_SUITE_P(SharedQ, BroadcastBackward, testing::ValuesIn(q_cases()), name_of);

// The sm90 dK/dV tiles of both splits on one broadcast problem: run(bp, specs, tile) for each, or
// a skip where the GPU has none for the problem's spec.
class BroadcastHopperDkdv : public GpuTest, public testing::WithParamInterface<Problem> {
 protected:
  template <class Run>
  void for_each_hopper_tile(Run&& run) {
    const Problem& p = GetParam();
    p.validate();
    SCOPED_TRACE(context_of(p, seed()));
    BackwardProblem bp(p, seed());
    const BackwardSpecs specs = backward_specs(bp.args);
    const std::vector<gen::TileConfig> tiles = hopper_dkdv_tiles(specs.dkdv, gpu().target);
    if (tiles.empty()) {
      GTEST_SKIP() << gpu().arch << " has no sm90 tile for " << gen::to_string(specs.dkdv);
    }
    for (const gen::TileConfig& dkdv : tiles) {
      SCOPED_TRACE(gen::to_string(gen::Variant{specs.dkdv, dkdv}));
      run(bp, specs, dkdv);
    }
  }
};

// The sm90 dK/dV kernel loads K and V with plain strided copies, so broadcast K/V are its to run.
class BroadcastKvHopperDkdv : public BroadcastHopperDkdv {};

TEST_P(BroadcastKvHopperDkdv, MatchesReference) {
  for_each_hopper_tile(
      [&](BackwardProblem& bp, const BackwardSpecs& specs, const gen::TileConfig& dkdv) {
        const gen::TileConfig dq = chosen_backward_tiles(bp.args, specs, gpu().target, true).dq;
        bp.expect_matches([&] { backward_with_tiles(bp.args, nullptr, dkdv, dq); },
                          gen::to_string(gen::Variant{specs.dkdv, dkdv}));
      });
}

INSTANTIATE_TEST_SUITE_P(SharedKv, BroadcastKvHopperDkdv, testing::ValuesIn(kv_cases()), name_of);

// Broadcast Q has no TMA map, which the sm90 dK/dV kernel streams Q through.
class BroadcastQHopperDkdv : public BroadcastHopperDkdv {};

TEST_P(BroadcastQHopperDkdv, IsRejectedBeforeAnyGradientIsWritten) {
  for_each_hopper_tile(
      [&](BackwardProblem& bp, const BackwardSpecs& specs, const gen::TileConfig& dkdv) {
        const gen::TileConfig dq =
            policy::default_tile(specs.dq, policy::target_for_arch("sm_90")).tile;
        bp.poison();
        expect_rejected([&] { backward_with_tiles(bp.args, nullptr, dkdv, dq); },
                        broadcast_strides(GetParam(), true, false));
        synchronize();
        EXPECT_TRUE(bp.gradients_untouched()) << "a rejected call wrote gradients";
      });
}

INSTANTIATE_TEST_SUITE_P(SharedQ, BroadcastQHopperDkdv, testing::ValuesIn(q_cases()), name_of);

// The tests' own broadcast description, on the host: what every check above rests on.
class BroadcastProblem : public testing::TestWithParam<Problem> {};

// The library's view of the inputs (built from its bthd/bhtd helpers) has the strides the host
// offsets use; every stored input row is read, by exactly the sequences or heads sharing it.
TEST_P(BroadcastProblem, InputOffsetsCoverTheStorageTheLibrarySees) {
  const Problem& p = GetParam();
  p.validate();
  const ForwardArgs args = placeholder_args(p, placeholder());
  const auto strides = [](const TensorRef& t) {
    return std::tuple{t.batch_stride, t.seq_stride, t.head_stride};
  };
  EXPECT_EQ(strides(args.q), strides(p.q_input_layout()));
  EXPECT_EQ(strides(args.k), strides(p.kv_input_layout()));
  EXPECT_EQ(strides(args.v), strides(p.kv_input_layout()));
  EXPECT_EQ(strides(args.out), strides(p.q_layout()));

  const auto check_side = [&](bool kv_side) {
    const Broadcast broadcast = kv_side ? p.kv_broadcast : p.q_broadcast;
    const int heads = kv_side ? p.heads_kv : p.heads_q;
    const std::int64_t elements = kv_side ? p.kv_input_elements() : p.q_input_elements();
    const int readers = broadcast == Broadcast::batch   ? p.batch
                        : broadcast == Broadcast::heads ? heads
                                                        : 1;
    std::vector<int> reads(elements / p.head_dim, 0);
    for (int b = 0; b < p.batch; ++b) {
      for (int t = 0; t < (kv_side ? p.stored_k(b) : p.stored_q(b)); ++t) {
        for (int h = 0; h < heads; ++h) {
          const std::int64_t offset =
              kv_side ? p.kv_input_offset(b, t, h) : p.q_input_offset(b, t, h);
          ASSERT_EQ(offset % p.head_dim, 0) << "row (" << b << ", " << t << ", " << h << ")";
          ASSERT_TRUE(offset >= 0 && offset + p.head_dim <= elements)
              << "row (" << b << ", " << t << ", " << h << ") at " << offset << " outside "
              << elements << " stored elements";
          ++reads[offset / p.head_dim];
        }
      }
    }
    for (std::size_t row = 0; row < reads.size(); ++row) {
      ASSERT_EQ(reads[row], readers) << (kv_side ? "k/v" : "q") << " stored row " << row;
    }
  };
  check_side(false);
  check_side(true);
}

// The references on broadcast inputs equal the references on the same inputs copied out to every
// sequence and head: inputs are read at their stored offsets, outputs written at the full ones.
TEST_P(BroadcastProblem, ReferencesEqualThoseOfExpandedInputs) {
  const Problem& p = GetParam();
  p.validate();
  const testing::TestInfo& info = *testing::UnitTest::GetInstance()->current_test_info();
  const std::uint64_t seed = seed_for(fmt::format("{}.{}", info.test_suite_name(), info.name()));
  SCOPED_TRACE(context_of(p, seed));
  const HostInputs inputs = make_inputs(p, seed);
  Problem full = p;
  full.q_broadcast = full.kv_broadcast = Broadcast::none;
  HostInputs expanded = inputs;
  expanded.q.assign(full.q_input_elements(), 0);
  expanded.k.assign(full.kv_input_elements(), 0);
  expanded.v.assign(full.kv_input_elements(), 0);
  for (int b = 0; b < p.batch; ++b) {
    for (int t = 0; t < p.stored_q(b); ++t) {
      for (int h = 0; h < p.heads_q; ++h) {
        std::copy_n(inputs.q.begin() + p.q_input_offset(b, t, h), p.head_dim,
                    expanded.q.begin() + full.q_input_offset(b, t, h));
      }
    }
    for (int t = 0; t < p.stored_k(b); ++t) {
      for (int h = 0; h < p.heads_kv; ++h) {
        for (auto [from, to] :
             {std::pair{&inputs.k, &expanded.k}, std::pair{&inputs.v, &expanded.v}}) {
          std::copy_n(from->begin() + p.kv_input_offset(b, t, h), p.head_dim,
                      to->begin() + full.kv_input_offset(b, t, h));
        }
      }
    }
  }
  EXPECT_EQ(difference(cpu_reference(p, inputs), cpu_reference(full, expanded)), "") << "O";
  std::mt19937_64 engine(seed);
  std::normal_distribution<double> normal;
  std::vector<double> dout(p.q_elements());
  for (double& value : dout) value = normal(engine);
  const GradientSet<double> broadcast = cpu_backward_reference(p, inputs, dout);
  const GradientSet<double> reference = cpu_backward_reference(full, expanded, dout);
  EXPECT_EQ(difference(broadcast.dq, reference.dq), "") << "dQ";
  EXPECT_EQ(difference(broadcast.dk, reference.dk), "") << "dK";
  EXPECT_EQ(difference(broadcast.dv, reference.dv), "") << "dV";
}

INSTANTIATE_TEST_SUITE_P(SharedKv, BroadcastProblem, testing::ValuesIn(kv_cases()), name_of);
INSTANTIATE_TEST_SUITE_P(SharedQ, BroadcastProblem, testing::ValuesIn(q_cases()), name_of);

}  // namespace
}  // namespace sigattn::test
