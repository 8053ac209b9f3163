// Backward-pass correctness on the GPU, in both work splits: dQ, dK and dV against an fp64 CPU
// reference (small problems, exact sigmoid) or a plain fp32 GPU kernel (large problems and the
// fast sigmoid) for every dtype, head dim, layout, mask, head grouping, bias, scale and
// score_mod, and every feature at each head dim of the Hopper backward; zero gradients on padding;
// the deterministic split bit-identical from run to run and between the Hopper dQ kernel's two
// schedules; the one-pass split (atomic dQ) within tolerance of the deterministic one; every
// one-pass and Hopper dK/dV tile candidate of four specs; every Hopper dQ tile and the portable
// default on problems with many work tiles per CTA; one-pass calls, and the dQ kernel in the
// dynamic schedule, on two streams at once; and the GPU reference itself against the CPU one.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <random>
#include <sigattn/sigattn.hpp>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "backward_reference.hpp"
#include "generator/kernel_spec.hpp"
#include "generator/tile_policy.hpp"
#include "gpu_test_env.hpp"
#include "numerics.hpp"
#include "problem.hpp"
#include "runtime/backward.hpp"
#include "runtime/cuda_driver.hpp"

namespace sigattn::test {
namespace {

constexpr DType bf16 = DType::bf16;
constexpr DType fp16 = DType::fp16;

// Above this many multiply-adds of the forward (the backward does about three times as many,
// about half a second of fp64 on one core) the fp32 GPU reference takes over from the CPU.
constexpr double kCpuReferenceWorkLimit = 2e8;

// Every head dim kind: tiny, not a multiple of 16 (40), one slice (64, 96, 128), two slices
// (136, 192, 256), the Hopper backward's partial 64-column blocks (80, 96, 112, 144); whole
// 128-row tiles (x128) and ragged padded lengths with GQA and causal.
std::vector<Problem> head_dim_cases() {
  std::vector<Problem> cases;
  for (DType dtype : {bf16, fp16}) {
    for (int d : {8, 40, 64, 80, 96, 112, 128, 136, 144, 192, 256}) {
      cases.push_back(Case(dtype, d).bthd(1, 128, 256).heads(2, 1));
      cases.push_back(
          Case(dtype, d).padded(150, 150, {150, 1, 77}, {120, 150, 0}).heads(4, 2).causal());
    }
  }
  return cases;
}

std::vector<Problem> layout_cases() {
  std::vector<Problem> cases;
  for (auto [dtype, d] : {std::pair{bf16, 64}, std::pair{fp16, 128}}) {
    cases.push_back(Case(dtype, d).bhtd(2, 100, 100).heads(3, 3));
    cases.push_back(Case(dtype, d).bhtd(1, 77, 150).heads(4, 2).window(16, 8));
    cases.push_back(Case(dtype, d).padded(100, 100, {0, 1, 57, 100}, {100, 0, 1, 100}));
    cases.push_back(Case(dtype, d).padded(100, 130, {}, {1, 90, 130}));
    cases.push_back(Case(dtype, d).padded(100, 130, {0, 60, 100}, {}));
    cases.push_back(Case(dtype, d).varlen({17, 0, 128, 1}, {40, 0, 129, 300}));
    cases.push_back(Case(dtype, d).varlen({30, 0, 64}, {100, 0, 64}).heads(8, 2).causal());
  }
  return cases;
}

std::vector<Problem> mask_cases() {
  std::vector<Problem> cases;
  for (auto [dtype, d] : {std::pair{bf16, 64}, std::pair{fp16, 96}}) {
    cases.push_back(Case(dtype, d).bthd(2, 200, 200).causal());
    cases.push_back(Case(dtype, d).bthd(1, 200, 200).window(32, 0));
    cases.push_back(Case(dtype, d).bthd(1, 200, 200).window(16, 16));
    cases.push_back(Case(dtype, d).bthd(1, 200, 200).window(-1, 8));
    cases.push_back(Case(dtype, d).bthd(1, 200, 200).causal().window(16, 16));
    // Bottom-right alignment: 17 queries see the last keys; 300 queries over 64 keys leave the
    // first 236 rows with no key at all.
    cases.push_back(Case(dtype, d).bthd(1, 17, 1000).causal());
    cases.push_back(Case(dtype, d).bthd(1, 300, 64).causal());
    cases.push_back(Case(dtype, d).padded(150, 150, {150, 20, 0}, {100, 150, 7}).window(16, 16));
  }
  return cases;
}

std::vector<Problem> grouped_head_cases() {
  std::vector<Problem> cases;
  for (auto [dtype, d] : {std::pair{bf16, 128}, std::pair{fp16, 64}}) {
    cases.push_back(Case(dtype, d).bthd(2, 150, 150).heads(8, 2));
    cases.push_back(Case(dtype, d).bthd(1, 150, 150).heads(4, 1).causal());
    cases.push_back(Case(dtype, d).bhtd(1, 100, 120).heads(8, 2).window(-1, 8));
    cases.push_back(
        Case(dtype, d).padded(128, 128, {128, 64, 1}, {128, 0, 100}).heads(8, 2).causal());
    cases.push_back(Case(dtype, d).varlen({100, 30}, {100, 300}).heads(4, 1).score_mod());
  }
  return cases;
}

std::vector<Problem> bias_and_score_mod_cases() {
  std::vector<Problem> cases;
  for (auto [dtype, d] : {std::pair{bf16, 64}, std::pair{fp16, 40}}) {
    cases.push_back(Case(dtype, d).bthd(2, 150, 150).bias(-3.0f));
    cases.push_back(Case(dtype, d).bthd(2, 150, 150).bias(1.5f).score_mod());
    cases.push_back(Case(dtype, d).bthd(1, 300, 300).scale(0.05f).bias(-1.0f));
    cases.push_back(
        Case(dtype, d).padded(120, 120, {120, 3, 0}, {50, 120, 120}).score_mod().causal());
    cases.push_back(Case(dtype, d).varlen({60, 0, 90}, {60, 10, 200}).score_mod().bias(-2.0f));
  }
  return cases;
}

// The Hopper backward's head dims besides 64 and 128: those whose tiles end in a partial 64-column
// block (TMA fills it with zeros, cp.async leaves it unwritten) and those above 128 (dK/dV with
// one gradient per warpgroup, dQ in 32-key steps up to 192): every feature at each, in both
// dtypes.
std::vector<Problem> hopper_head_dim_cases() {
  std::vector<Problem> cases;
  for (int d : {80, 96, 112, 144, 192, 256}) {
    for (DType dtype : {bf16, fp16}) {
      cases.push_back(
          Case(dtype, d).varlen({17, 0, 128, 1}, {40, 0, 129, 300}).heads(4, 2).causal());
      cases.push_back(Case(dtype, d)
                          .padded(150, 150, {150, 20, 0}, {100, 150, 7})
                          .window(16, 16)
                          .score_mod()
                          .bias(-1.5f));
      cases.push_back(Case(dtype, d).bhtd(1, 200, 260).heads(8, 2).window(32, 0).scale(0.1f));
      cases.push_back(Case(dtype, d).bthd(2, 333, 333).heads(4, 2).causal().score_mod().fast());
    }
  }
  return cases;
}

// The fast sigmoid, checked against the GPU reference (the same tanh.approx).
std::vector<Problem> fast_sigmoid_cases() {
  std::vector<Problem> cases;
  for (DType dtype : {bf16, fp16}) {
    cases.push_back(Case(dtype, 64).bthd(2, 256, 256).fast());
    cases.push_back(Case(dtype, 128).bthd(1, 333, 333).heads(4, 2).causal().fast());
    cases.push_back(Case(dtype, 40).varlen({1, 50, 0, 200}, {1, 0, 70, 200}).heads(4, 1).fast());
    cases.push_back(Case(dtype, 256).padded(130, 130, {130, 9}, {77, 130}).score_mod().fast());
    cases.push_back(Case(dtype, 136).bhtd(1, 90, 200).window(32, 0).bias(-2.0f).fast());
  }
  return cases;
}

// Long sequences (the fp32 GPU reference): dense, GQA/MQA, padded and packed, causal and windows.
std::vector<Problem> large_cases() {
  std::vector<Problem> cases;
  for (auto [dtype, d] : {std::pair{bf16, 128}, std::pair{fp16, 64}}) {
    cases.push_back(Case(dtype, d).bthd(1, 2048, 2048).heads(4, 4).fast());
    cases.push_back(Case(dtype, d).bthd(1, 4097, 4097).heads(4, 1).causal().fast());
    cases.push_back(Case(dtype, d).bhtd(1, 3000, 4097).heads(8, 2).window(256, 0));
    cases.push_back(Case(dtype, d)
                        .padded(4097, 4097, {4097, 1000, 0}, {4097, 2500, 3})
                        .heads(4, 2)
                        .causal()
                        .score_mod()
                        .fast());
    cases.push_back(
        Case(dtype, d).varlen({2048, 1, 4097}, {3000, 17, 4097}).heads(8, 2).window(128, 128));
  }
  return cases;
}

// Every one-pass (atomic dQ) tile candidate and every Hopper dK/dV tile of these specs runs.
std::vector<Problem> tile_sweep_cases() {
  return {Case(bf16, 64).bthd(2, 333, 333).heads(4, 2).fast(),
          Case(fp16, 128).padded(300, 300, {300, 150}, {299, 300}).heads(4, 2).causal(),
          Case(bf16, 80).varlen({300, 0, 129}, {200, 5, 300}).heads(4, 1).score_mod(),
          Case(fp16, 192).bthd(2, 300, 300).heads(4, 2).window(64, 0).fast()};
}

// Every Hopper dQ tile and the portable family's default dQ tile run these, in the deterministic
// split: many more row blocks than CTAs, so that each CTA of the persistent sm90 kernel walks
// several work tiles, with empty sequences, tiles that cross sequence ends, padding rows, GQA,
// score_mod and masks; above d=192 the column split, at d=224 with a partial last 64-column block
// in its second warpgroup's part.
std::vector<Problem> dq_sweep_cases() {
  const std::vector<int> queries = {600, 0, 1, 129, 511, 600, 300, 64, 65, 200, 600, 17};
  const std::vector<int> keys(queries.rbegin(), queries.rend());
  return {Case(bf16, 64).padded(600, 600, queries, keys).heads(8, 2).score_mod().fast(),
          Case(fp16, 128).varlen(queries, keys).heads(4, 4).causal().fast(),
          Case(bf16, 128).bthd(8, 700, 700).heads(8, 8).window(200, 50).fast(),
          Case(fp16, 112).padded(600, 600, queries, keys).heads(4, 2).window(64, 64).fast(),
          Case(bf16, 192).varlen(queries, keys).heads(4, 1).causal().score_mod().fast(),
          Case(fp16, 256).padded(600, 600, queries, keys).heads(4, 2).window(64, 64).fast(),
          Case(bf16, 224).varlen(queries, keys).heads(4, 1).causal().score_mod()};
}

// Every Hopper dK/dV tile of the dynamic schedule (persistent) runs these, in both splits: many
// more key blocks than CTAs, so that each CTA walks several work tiles, with empty sequences,
// blocks that cross sequence ends, padding blocks, GQA, score_mod, masks and the gradient split.
std::vector<Problem> dkdv_sweep_cases() {
  const std::vector<int> queries = {600, 0, 1, 129, 511, 600, 300, 64, 65, 200, 600, 17};
  const std::vector<int> keys(queries.rbegin(), queries.rend());
  return {Case(bf16, 64).padded(600, 600, queries, keys).heads(16, 8).score_mod().fast(),
          Case(fp16, 128).varlen(queries, keys).heads(16, 16).causal().fast(),
          Case(bf16, 128).bthd(4, 1000, 1000).heads(16, 16).window(200, 50).fast(),
          Case(bf16, 192).varlen(queries, keys).heads(8, 8).causal().score_mod().fast()};
}

// The one-pass calls that run on two streams at once.
std::vector<Problem> concurrent_cases() {
  return {Case(bf16, 64).bthd(2, 1000, 1000).heads(4, 2).fast(),
          Case(bf16, 128).bthd(1, 1500, 700).heads(8, 8).causal().fast()};
}

// Problems both references can do, for their agreement.
std::vector<Problem> agreement_cases() {
  return {Case(bf16, 40).bthd(2, 37, 150).heads(4, 2).causal(),
          Case(fp16, 256).bhtd(1, 90, 90).window(-1, 8),
          Case(bf16, 64)
              .padded(120, 120, {0, 1, 120, 60}, {120, 0, 1, 120})
              .heads(4, 1)
              .causal()
              .window(16, 16)
              .score_mod(),
          Case(fp16, 128).varlen({50, 0, 77}, {130, 0, 77}).heads(8, 2).bias(-2.0f).scale(0.1f)};
}

std::vector<std::vector<Problem>> all_reference_tables() {
  return {head_dim_cases(),
          layout_cases(),
          mask_cases(),
          grouped_head_cases(),
          hopper_head_dim_cases(),
          bias_and_score_mod_cases(),
          fast_sigmoid_cases(),
          large_cases()};
}

struct DeviceGradients {
  cuda::DeviceBuffer dout, dq, dk, dv;
  BackwardArgs args;
};

// Upstream gradient dO: Normal(0, 1) rounded to the dtype, at q's offsets.
std::vector<double> random_dout(const Problem& p, std::uint64_t seed) {
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  std::normal_distribution<float> normal;
  std::vector<double> dout(p.q_elements());
  for (double& x : dout) x = from_bits(p.dtype, to_bits(p.dtype, normal(rng)));
  return dout;
}

DeviceGradients prepare(const Problem& p, DeviceInputs& device, const std::vector<double>& dout) {
  DeviceGradients g;
  std::vector<std::uint16_t> bits(dout.size());
  std::transform(dout.begin(), dout.end(), bits.begin(),
                 [&](double x) { return to_bits(p.dtype, static_cast<float>(x)); });
  const std::size_t q_bytes = p.q_elements() * sizeof(std::uint16_t);
  const std::size_t kv_bytes = p.kv_elements() * sizeof(std::uint16_t);
  g.dout = cuda::DeviceBuffer(q_bytes);
  g.dout.upload(bits.data(), q_bytes);
  g.dq = cuda::DeviceBuffer(q_bytes);
  g.dk = cuda::DeviceBuffer(kv_bytes);
  g.dv = cuda::DeviceBuffer(kv_bytes);
  g.args.inputs = device.args;
  const auto with = [](TensorRef layout, void* data) {
    layout.data = data;
    return layout;
  };
  g.args.grad_out = with(p.q_layout(), g.dout.get());
  g.args.grad_q = with(p.q_layout(), g.dq.get());
  g.args.grad_k = with(p.kv_layout(), g.dk.get());
  g.args.grad_v = with(p.kv_layout(), g.dv.get());
  return g;
}

// One problem's inputs and upstream gradient drawn from a seed, their device copies and the
// gradient buffers.
struct PreparedProblem {
  PreparedProblem(const Problem& p, std::uint64_t seed)
      : inputs(make_inputs(p, seed)),
        dout(random_dout(p, seed)),
        device(upload(p, inputs)),
        grads(prepare(p, device, dout)) {}
  HostInputs inputs;
  std::vector<double> dout;
  DeviceInputs device;
  DeviceGradients grads;
};

void poison(DeviceGradients& g) {
  g.dq.fill_bytes(0xFF);
  g.dk.fill_bytes(0xFF);
  g.dv.fill_bytes(0xFF);
}

std::vector<std::uint16_t> download_bits(const cuda::DeviceBuffer& buffer) {
  std::vector<std::uint16_t> bits(buffer.size() / sizeof(std::uint16_t));
  buffer.download(bits.data(), buffer.size());
  return bits;
}

struct GradientBits {
  std::vector<std::uint16_t> dq, dk, dv;
};

void synchronize() { SIGATTN_CU(cuda::driver().cuCtxSynchronize()); }

// Poisons the gradients (NaN in both dtypes), runs `call` and downloads what it wrote.
template <class Call>
GradientBits run(DeviceGradients& g, Call&& call) {
  poison(g);
  call();
  synchronize();
  return {download_bits(g.dq), download_bits(g.dk), download_bits(g.dv)};
}

GradientBits run_backward(DeviceGradients& g, bool deterministic) {
  g.args.deterministic = deterministic;
  return run(g, [&] { backward(g.args, nullptr); });
}

// The one-pass split's heuristic tiles. A call with deterministic = false takes them only where
// policy::one_pass_by_default says so (elsewhere it takes the deterministic split's), so the tests
// ask for them by name.
BackwardTiles one_pass_tiles(const BackwardSpecs& specs, const policy::Target& target) {
  return {policy::default_tile(specs.dkdv, target, /*atomic_dq=*/true).tile,
          policy::default_tile(specs.dq, target).tile};
}

GradientBits run_one_pass(DeviceGradients& g, const BackwardTiles& tiles) {
  g.args.deterministic = false;
  return run(g, [&] { backward_with_tiles(g.args, nullptr, tiles.dkdv, tiles.dq); });
}

// The deterministic split's heuristic tiles with the dQ tile in the other schedule, where that is
// a Hopper tile.
std::optional<BackwardTiles> other_schedule_tiles(const BackwardSpecs& specs,
                                                  const policy::Target& target) {
  BackwardTiles tiles = default_backward_tiles(specs, target, /*deterministic=*/true);
  if (tiles.dq.family != gen::Family::sm90) return std::nullopt;
  tiles.dq.schedule =
      tiles.dq.schedule == gen::Schedule::dynamic ? gen::Schedule::strided : gen::Schedule::dynamic;
  return tiles;
}

// The deterministic split's heuristic tiles with the Hopper ones (dK/dV, dQ) in the dynamic
// schedule.
BackwardTiles dynamic_tiles(const BackwardSpecs& specs, const policy::Target& target) {
  BackwardTiles tiles = default_backward_tiles(specs, target, /*deterministic=*/true);
  if (tiles.dkdv.family == gen::Family::sm90) tiles.dkdv.schedule = gen::Schedule::dynamic;
  if (tiles.dq.family == gen::Family::sm90) tiles.dq.schedule = gen::Schedule::dynamic;
  return tiles;
}

bool use_cpu_reference(const Problem& p) {
  return p.sigmoid == SigmoidMode::accurate && p.work() <= kCpuReferenceWorkLimit;
}

GradientSet<double> reference_for(const Problem& p, const PreparedProblem& prepared) {
  if (use_cpu_reference(p)) return cpu_backward_reference(p, prepared.inputs, prepared.dout);
  const GradientSet<float> gpu =
      gpu_backward_reference(prepared.grads.args, p.q_elements(), p.kv_elements());
  const auto widen = [](const std::vector<float>& v) {
    return std::vector<double>(v.begin(), v.end());
  };
  return {widen(gpu.dq), widen(gpu.dk), widen(gpu.dv)};
}

// Gradients round P and dS to the dtype before their products and sum over many more terms than
// the forward; the bounds are twice the forward's.
Tolerance gradient_tolerance(DType dtype) {
  const Tolerance t = tolerance_for(dtype);
  return {2.0 * t.rel_l2, 2.0 * t.max_rel};
}

// Compares one gradient, whose element i is out(i), over every stored row of the q side or the kv
// side; rows past the valid length must be exactly zero.
template <class Out>
Comparison compare_values(const Problem& p, Out&& out, const std::vector<double>& ref, bool kv_side,
                          Tolerance tolerance) {
  double max_ref = 0.0;
  for (double r : ref) {
    if (std::isfinite(r)) max_ref = std::max(max_ref, std::abs(r));
  }
  ErrorAccumulator acc(max_ref, tolerance);
  const int heads = kv_side ? p.heads_kv : p.heads_q;
  for (int b = 0; b < p.batch; ++b) {
    const int stored =
        kv_side ? (p.storage == Storage::varlen ? p.valid_k(b) : p.len_k) : p.stored_q(b);
    const int valid = kv_side ? p.valid_k(b) : p.valid_q(b);
    for (int t = 0; t < stored; ++t) {
      for (int h = 0; h < heads; ++h) {
        const std::int64_t row = kv_side ? p.kv_offset(b, t, h) : p.q_offset(b, t, h);
        for (int d = 0; d < p.head_dim; ++d) {
          acc.add(Element{row + d, b, t, h, d, t >= valid}, out(row + d), ref[row + d]);
        }
      }
    }
  }
  return acc.result();
}

Comparison compare(const Problem& p, const std::vector<std::uint16_t>& out,
                   const std::vector<double>& ref, bool kv_side) {
  return compare_values(
      p, [&](std::int64_t i) { return from_bits(p.dtype, out[i]); }, ref, kv_side,
      gradient_tolerance(p.dtype));
}

std::vector<double> decoded(const Problem& p, const std::vector<std::uint16_t>& bits) {
  std::vector<double> values(bits.size());
  std::transform(bits.begin(), bits.end(), values.begin(),
                 [&](std::uint16_t b) { return double{from_bits(p.dtype, b)}; });
  return values;
}

void expect_matches(const Problem& p, const GradientBits& out, const GradientSet<double>& ref,
                    const std::string& what) {
  for (const auto& [name, bits, expected, kv] :
       {std::tuple{"dQ", &out.dq, &ref.dq, false}, std::tuple{"dK", &out.dk, &ref.dk, true},
        std::tuple{"dV", &out.dv, &ref.dv, true}}) {
    const Comparison c = compare(p, *bits, *expected, kv);
    EXPECT_TRUE(c.passed) << name << ", " << what << ": " << c.summary;
  }
}

// The spec pair the library chooses for a problem. backward_specs checks the arguments on the
// host only, so an aligned host address can stand in for every device pointer.
BackwardSpecs specs_of(const Problem& p) {
  alignas(256) static std::byte placeholder[256];
  BackwardArgs args;
  args.inputs = placeholder_args(p, placeholder);
  TensorRef q = p.q_layout(), kv = p.kv_layout();
  q.data = kv.data = placeholder;
  args.grad_out = args.grad_q = q;
  args.grad_k = args.grad_v = kv;
  return backward_specs(args);
}

// The dK/dV tiles the sweep runs: every one-pass tile and every Hopper tile (both splits).
bool swept(const gen::TileConfig& tile) {
  return tile.atomic_dq || tile.family == gen::Family::sm90;
}

// The dQ tiles the sweep runs: every Hopper candidate and the portable family's default.
std::vector<gen::TileConfig> dq_swept_tiles(const gen::KernelSpec& dq,
                                            const policy::Target& target) {
  std::vector<gen::TileConfig> tiles = {
      policy::default_tile(dq, policy::target_for_arch("sm_90")).tile};
  for (const gen::TileConfig& tile : policy::candidates(dq, target)) {
    if (tile.family == gen::Family::sm90) tiles.push_back(tile);
  }
  return tiles;
}

// The Hopper dK/dV candidates of the dynamic schedule (the persistent kernel), both splits.
std::vector<gen::TileConfig> dynamic_dkdv_tiles(const gen::KernelSpec& dkdv,
                                                const policy::Target& target) {
  std::vector<gen::TileConfig> tiles;
  for (const gen::TileConfig& tile : policy::candidates(dkdv, target)) {
    if (tile.family == gen::Family::sm90 && tile.schedule == gen::Schedule::dynamic) {
      tiles.push_back(tile);
    }
  }
  return tiles;
}

const bool kVariantsRegistered = register_variants([](const Gpu& gpu) {
  std::vector<gen::Variant> variants;
  const auto add_defaults = [&](const Problem& p) {
    const BackwardSpecs specs = specs_of(p);
    for (bool deterministic : {true, false}) {
      const BackwardTiles tiles = default_backward_tiles(specs, gpu.target, deterministic);
      variants.push_back({specs.dkdv, tiles.dkdv});
      variants.push_back({specs.dq, tiles.dq});
    }
    variants.push_back({specs.dkdv, one_pass_tiles(specs, gpu.target).dkdv});
    if (const auto other = other_schedule_tiles(specs, gpu.target)) {
      variants.push_back({specs.dq, other->dq});
    }
  };
  for (const std::vector<Problem>& table : all_reference_tables()) {
    for (const Problem& p : table) {
      if (param_selected(p.name())) add_defaults(p);
    }
  }
  for (const Problem& p : tile_sweep_cases()) {
    if (!param_selected(p.name())) continue;
    add_defaults(p);
    const BackwardSpecs specs = specs_of(p);
    for (const gen::TileConfig& tile : policy::candidates(specs.dkdv, gpu.target)) {
      if (swept(tile)) variants.push_back({specs.dkdv, tile});
    }
  }
  for (const Problem& p : dkdv_sweep_cases()) {
    if (!param_selected(p.name())) continue;
    add_defaults(p);
    const BackwardSpecs specs = specs_of(p);
    for (const gen::TileConfig& tile : dynamic_dkdv_tiles(specs.dkdv, gpu.target)) {
      variants.push_back({specs.dkdv, tile});
    }
  }
  for (const Problem& p : dq_sweep_cases()) {
    if (!param_selected(p.name())) continue;
    add_defaults(p);
    const BackwardSpecs specs = specs_of(p);
    for (const gen::TileConfig& tile : dq_swept_tiles(specs.dq, gpu.target)) {
      variants.push_back({specs.dq, tile});
    }
  }
  if (test_selected("BackwardConcurrency.AThreadWithNoCurrentContext")) {
    add_defaults(concurrent_cases().front());
  }
  if (test_selected("BackwardConcurrency.TwoStreamsInOnePassMode")) {
    for (const Problem& p : concurrent_cases()) add_defaults(p);
  }
  if (test_selected("BackwardConcurrency.TwoStreamsInTheDynamicSchedule")) {
    for (const Problem& p : concurrent_cases()) {
      const BackwardSpecs specs = specs_of(p);
      const BackwardTiles tiles = dynamic_tiles(specs, gpu.target);
      variants.push_back({specs.dkdv, tiles.dkdv});
      variants.push_back({specs.dq, tiles.dq});
    }
  }
  return variants;
});

std::string context_of(const Problem& p, std::uint64_t seed) {
  return fmt::format("problem {}, seed {} (SIGATTN_TEST_SEED={}), reference {}", p.name(), seed,
                     base_seed(), use_cpu_reference(p) ? "cpu fp64" : "gpu fp32");
}

class BackwardMatchesReference : public GpuTest, public testing::WithParamInterface<Problem> {};

TEST_P(BackwardMatchesReference, BothSplits) {
  const Problem& p = GetParam();
  p.validate();
  SCOPED_TRACE(context_of(p, seed()));
  PreparedProblem prepared(p, seed());
  DeviceGradients& grads = prepared.grads;
  const GradientSet<double> ref = reference_for(p, prepared);

  const GradientBits deterministic = run_backward(grads, true);
  expect_matches(p, deterministic, ref, "deterministic split");
  const GradientBits repeat = run_backward(grads, true);
  EXPECT_EQ(repeat.dq, deterministic.dq) << "dQ differs between two deterministic runs";
  EXPECT_EQ(repeat.dk, deterministic.dk) << "dK differs between two deterministic runs";
  EXPECT_EQ(repeat.dv, deterministic.dv) << "dV differs between two deterministic runs";

  // A Hopper dQ tile in the other schedule (strided or dynamic): the same tiles on other CTAs,
  // so the same bits.
  if (const std::optional<BackwardTiles> other = other_schedule_tiles(specs_of(p), gpu().target)) {
    const GradientBits rescheduled =
        run(grads, [&] { backward_with_tiles(grads.args, nullptr, other->dkdv, other->dq); });
    expect_matches(p, rescheduled, ref, "deterministic split, dQ in the other schedule");
    EXPECT_EQ(rescheduled.dq, deterministic.dq) << "dQ differs between the two schedules";
  }

  const BackwardTiles one_pass_split = one_pass_tiles(specs_of(p), gpu().target);
  const GradientBits one_pass = run_one_pass(grads, one_pass_split);
  expect_matches(p, one_pass, ref, "one-pass split");
  // Against the deterministic result the one-pass one differs by rounding only.
  const GradientSet<double> as_ref{decoded(p, deterministic.dq), decoded(p, deterministic.dk),
                                   decoded(p, deterministic.dv)};
  expect_matches(p, one_pass, as_ref, "one-pass split against the deterministic split");
  // A second one-pass run: only dQ has atomics, so dK and dV repeat bit for bit.
  const GradientBits one_pass_again = run_one_pass(grads, one_pass_split);
  EXPECT_EQ(one_pass_again.dk, one_pass.dk) << "dK differs between two one-pass runs";
  EXPECT_EQ(one_pass_again.dv, one_pass.dv) << "dV differs between two one-pass runs";
  expect_matches(p, one_pass_again, ref, "second one-pass run");
}

const auto name_of = [](const testing::TestParamInfo<Problem>& info) { return info.param.name(); };

INSTANTIATE_TEST_SUITE_P(HeadDims, BackwardMatchesReference, testing::ValuesIn(head_dim_cases()),
                         name_of);
INSTANTIATE_TEST_SUITE_P(Layouts, BackwardMatchesReference, testing::ValuesIn(layout_cases()),
                         name_of);
INSTANTIATE_TEST_SUITE_P(Masks, BackwardMatchesReference, testing::ValuesIn(mask_cases()), name_of);
INSTANTIATE_TEST_SUITE_P(GroupedHeads, BackwardMatchesReference,
                         testing::ValuesIn(grouped_head_cases()), name_of);
INSTANTIATE_TEST_SUITE_P(HopperHeadDims, BackwardMatchesReference,
                         testing::ValuesIn(hopper_head_dim_cases()), name_of);
INSTANTIATE_TEST_SUITE_P(BiasAndScoreMod, BackwardMatchesReference,
                         testing::ValuesIn(bias_and_score_mod_cases()), name_of);
INSTANTIATE_TEST_SUITE_P(FastSigmoid, BackwardMatchesReference,
                         testing::ValuesIn(fast_sigmoid_cases()), name_of);
INSTANTIATE_TEST_SUITE_P(Large, BackwardMatchesReference, testing::ValuesIn(large_cases()),
                         name_of);

// Runs the backward with these dK/dV and dQ tiles and checks it against ref; a throw is a failure
// that names the variant.
void expect_tiles_match(const Problem& p, DeviceGradients& grads, const GradientSet<double>& ref,
                        const gen::TileConfig& dkdv, const gen::TileConfig& dq,
                        const std::string& variant) {
  try {
    const GradientBits out =
        run(grads, [&] { backward_with_tiles(grads.args, nullptr, dkdv, dq); });
    expect_matches(p, out, ref, variant);
  } catch (const std::exception& e) {
    ADD_FAILURE() << variant << ": " << e.what();
  }
}

// What a tile sweep starts from: the problem prepared with the test's seed, its reference
// gradients and the spec pair the library chooses.
struct TileSweep {
  TileSweep(const Problem& p, std::uint64_t seed)
      : prepared(p, seed),
        ref(reference_for(p, prepared)),
        specs(backward_specs(prepared.grads.args)) {}

  PreparedProblem prepared;
  GradientSet<double> ref;
  BackwardSpecs specs;
};

class EveryOnePassOrHopperTile : public GpuTest, public testing::WithParamInterface<Problem> {};

TEST_P(EveryOnePassOrHopperTile, MatchesReference) {
  const Problem& p = GetParam();
  SCOPED_TRACE(context_of(p, seed()));
  TileSweep sweep(p, seed());
  DeviceGradients& grads = sweep.prepared.grads;
  const gen::TileConfig dq_tile = default_backward_tiles(sweep.specs, gpu().target, true).dq;
  int tried = 0;
  for (const gen::TileConfig& tile : policy::candidates(sweep.specs.dkdv, gpu().target)) {
    if (!swept(tile)) continue;
    ++tried;
    expect_tiles_match(p, grads, sweep.ref, tile, dq_tile,
                       gen::to_string(gen::Variant{sweep.specs.dkdv, tile}));
  }
  EXPECT_GT(tried, 1) << "too few one-pass candidates for " << gen::to_string(sweep.specs.dkdv)
                      << " on " << gpu().arch;
}

INSTANTIATE_TEST_SUITE_P(TwoSpecs, EveryOnePassOrHopperTile, testing::ValuesIn(tile_sweep_cases()),
                         name_of);

class EveryHopperDqTile : public GpuTest, public testing::WithParamInterface<Problem> {};

TEST_P(EveryHopperDqTile, MatchesReference) {
  const Problem& p = GetParam();
  SCOPED_TRACE(context_of(p, seed()));
  TileSweep sweep(p, seed());
  DeviceGradients& grads = sweep.prepared.grads;
  const gen::TileConfig dkdv_tile = default_backward_tiles(sweep.specs, gpu().target, true).dkdv;
  const std::vector<gen::TileConfig> tiles = dq_swept_tiles(sweep.specs.dq, gpu().target);
  for (const gen::TileConfig& tile : tiles) {
    expect_tiles_match(p, grads, sweep.ref, dkdv_tile, tile,
                       gen::to_string(gen::Variant{sweep.specs.dq, tile}));
  }
  if (tiles.size() == 1) GTEST_SKIP() << gpu().arch << " has no sm90 dq tile";
}

INSTANTIATE_TEST_SUITE_P(PersistentSchedule, EveryHopperDqTile, testing::ValuesIn(dq_sweep_cases()),
                         name_of);

class EveryPersistentDkdvTile : public GpuTest, public testing::WithParamInterface<Problem> {};

// Each persistent dK/dV tile against the reference, with the deterministic split's default dQ
// tile where it is a two-kernel tile; a second run of each gives the same dK and dV bits (the
// order of a CTA's work tiles changes between runs, a key block's sums do not).
TEST_P(EveryPersistentDkdvTile, MatchesReference) {
  const Problem& p = GetParam();
  SCOPED_TRACE(context_of(p, seed()));
  TileSweep sweep(p, seed());
  DeviceGradients& grads = sweep.prepared.grads;
  const gen::TileConfig dq_tile = default_backward_tiles(sweep.specs, gpu().target, true).dq;
  const std::vector<gen::TileConfig> tiles = dynamic_dkdv_tiles(sweep.specs.dkdv, gpu().target);
  if (tiles.empty()) GTEST_SKIP() << gpu().arch << " has no sm90 dkdv tile";
  for (const gen::TileConfig& tile : tiles) {
    const std::string variant = gen::to_string(gen::Variant{sweep.specs.dkdv, tile});
    try {
      const GradientBits first =
          run(grads, [&] { backward_with_tiles(grads.args, nullptr, tile, dq_tile); });
      expect_matches(p, first, sweep.ref, variant);
      const GradientBits second =
          run(grads, [&] { backward_with_tiles(grads.args, nullptr, tile, dq_tile); });
      EXPECT_EQ(second.dk, first.dk) << "dK differs between two runs of " << variant;
      EXPECT_EQ(second.dv, first.dv) << "dV differs between two runs of " << variant;
    } catch (const std::exception& e) {
      ADD_FAILURE() << variant << ": " << e.what();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(PersistentSchedule, EveryPersistentDkdvTile,
                         testing::ValuesIn(dkdv_sweep_cases()), name_of);

using BackwardConcurrency = GpuTest;

// Two threads, each with its own stream and problem, call the backward with tiles_of(specs) three
// times without synchronizing in between; then each result is checked against its reference.
template <class TilesOf>
void expect_streams_apart(const std::vector<Problem>& problems, std::uint64_t seed,
                          const TilesOf& tiles_of, const std::string& what) {
  std::vector<PreparedProblem> prepared;
  prepared.reserve(problems.size());
  for (std::size_t i = 0; i < problems.size(); ++i) {
    poison(prepared.emplace_back(problems[i], seed + i).grads);
  }
  synchronize();  // the poison is written on the legacy stream, the calls run on others
  const CUcontext context = cuda::current_context();
  std::vector<std::string> failures(problems.size());
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < problems.size(); ++i) {
    threads.emplace_back([&, i] {
      try {
        SIGATTN_CU(cuda::driver().cuCtxSetCurrent(context));
        CUstream stream = nullptr;
        SIGATTN_CU(cuda::driver().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
        const BackwardTiles tiles = tiles_of(specs_of(problems[i]));
        for (int repeat = 0; repeat < 3; ++repeat) {
          backward_with_tiles(prepared[i].grads.args, stream, tiles.dkdv, tiles.dq);
        }
        SIGATTN_CU(cuda::driver().cuStreamSynchronize(stream));
        SIGATTN_CU(cuda::driver().cuStreamDestroy(stream));
      } catch (const std::exception& e) {
        failures[i] = e.what();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (std::size_t i = 0; i < problems.size(); ++i) {
    const Problem& p = problems[i];
    SCOPED_TRACE(context_of(p, seed + i));
    ASSERT_EQ(failures[i], "");
    const DeviceGradients& grads = prepared[i].grads;
    expect_matches(p, {download_bits(grads.dq), download_bits(grads.dk), download_bits(grads.dv)},
                   reference_for(p, prepared[i]), what);
  }
}

// The one-pass split's workspace of one stream must never be the other's.
TEST_F(BackwardConcurrency, TwoStreamsInOnePassMode) {
  expect_streams_apart(
      concurrent_cases(), seed(),
      [&](const BackwardSpecs& specs) { return one_pass_tiles(specs, gpu().target); },
      "after three one-pass calls on a stream of its own");
}

// The dK/dV and dQ kernels in the dynamic schedule: each stream's launches take tiles from
// counters of their own.
TEST_F(BackwardConcurrency, TwoStreamsInTheDynamicSchedule) {
  expect_streams_apart(
      concurrent_cases(), seed(),
      [&](const BackwardSpecs& specs) { return dynamic_tiles(specs, gpu().target); },
      "after three calls with the dynamic schedules on a stream of its own");
}

// A thread with no current context (as PyTorch's autograd thread may be) calls the backward: the
// library makes the primary context current and writes the same gradients as this thread.
TEST_F(BackwardConcurrency, AThreadWithNoCurrentContext) {
  const Problem p = concurrent_cases().front();
  SCOPED_TRACE(context_of(p, seed()));
  PreparedProblem prepared(p, seed());
  DeviceGradients& grads = prepared.grads;
  const GradientBits here = run_backward(grads, true);
  poison(grads);
  synchronize();
  std::string failure;
  bool had_context = true;
  std::thread([&] {
    try {
      CUcontext context = nullptr;
      SIGATTN_CU(cuda::driver().cuCtxGetCurrent(&context));
      had_context = context != nullptr;
      backward(grads.args, nullptr);
      SIGATTN_CU(cuda::driver().cuCtxSynchronize());
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }).join();
  EXPECT_FALSE(had_context) << "the new thread already had a current context";
  ASSERT_EQ(failure, "");
  EXPECT_EQ(download_bits(grads.dq), here.dq);
  EXPECT_EQ(download_bits(grads.dk), here.dk);
  EXPECT_EQ(download_bits(grads.dv), here.dv);
}

class BackwardReference : public GpuTest, public testing::WithParamInterface<Problem> {};

// The large-problem checks are only as good as the fp32 GPU reference's agreement with fp64.
TEST_P(BackwardReference, GpuFp32AgreesWithCpuFp64) {
  const Problem& p = GetParam();
  p.validate();
  SCOPED_TRACE(context_of(p, seed()));
  const PreparedProblem prepared(p, seed());
  const GradientSet<double> cpu = cpu_backward_reference(p, prepared.inputs, prepared.dout);
  const GradientSet<float> gpu =
      gpu_backward_reference(prepared.grads.args, p.q_elements(), p.kv_elements());
  for (const auto& [name, exact, approx, kv] :
       {std::tuple{"dQ", &cpu.dq, &gpu.dq, false}, std::tuple{"dK", &cpu.dk, &gpu.dk, true},
        std::tuple{"dV", &cpu.dv, &gpu.dv, true}}) {
    // The same function up to fp32 rounding, which the signed sums of dS terms amplify to about
    // 1e-5 here; any semantic difference (a key more or less, a wrong offset, head or bias)
    // moves the result by more than 1e-3.
    const Comparison c = compare_values(
        p, [&](std::int64_t i) { return (*approx)[i]; }, *exact, kv, Tolerance{1e-4, 1e-4});
    EXPECT_TRUE(c.passed) << name << ": " << c.summary;
  }
}

INSTANTIATE_TEST_SUITE_P(Agreement, BackwardReference, testing::ValuesIn(agreement_cases()),
                         name_of);

class BackwardValidation : public GpuTest {};

TEST_F(BackwardValidation, OverlappingGradientIsRejectedBeforeAnyWrite) {
  const Problem p = Case(bf16, 64).bthd(1, 64, 64);
  HostInputs inputs = make_inputs(p, seed());
  DeviceInputs device = upload(p, inputs);
  DeviceGradients grads = prepare(p, device, std::vector<double>(p.q_elements(), 1.0));
  for (bool deterministic : {true, false}) {
    poison(grads);
    grads.args.deterministic = deterministic;
    grads.args.grad_k.seq_stride = 8;  // rows would overlap
    try {
      backward(grads.args, nullptr);
      ADD_FAILURE() << "accepted overlapping grad_k";
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), Status::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("grad_k"), std::string::npos) << e.what();
    }
    synchronize();
    for (auto bits : download_bits(grads.dq)) ASSERT_EQ(bits, 0xFFFF);
  }
}

// Packed keys of one token (cu_seqlens_k = [0, 1, 1]) below max_seqlen_k = 127, with the seq
// stride 0 a caller may pass for an extent-1 dimension in k, v, grad_k and grad_v: both splits
// run and match the reference.
TEST_F(BackwardValidation, OnePackedKeyTokenBelowALongerMaxSeqlen) {
  const Problem p = Case(bf16, 64).varlen({40, 23}, {1, 0}).heads(4, 2);
  SCOPED_TRACE(context_of(p, seed()));
  PreparedProblem prepared(p, seed());
  DeviceGradients& grads = prepared.grads;
  const GradientSet<double> ref = cpu_backward_reference(p, prepared.inputs, prepared.dout);
  ForwardArgs& in = grads.args.inputs;
  in.max_seqlen_k = 127;
  for (TensorRef* t : {&in.k, &in.v, &grads.args.grad_k, &grads.args.grad_v}) t->seq_stride = 0;
  for (bool deterministic : {true, false}) {
    expect_matches(p, run_backward(grads, deterministic), ref,
                   deterministic ? "deterministic split" : "one-pass split allowed");
  }
}

}  // namespace
}  // namespace sigattn::test
