// Forward-pass correctness on the GPU: every dtype, head dim, layout, mask, head grouping, bias,
// score_mod and sigmoid form against an fp64 CPU reference (small problems) or a plain fp32 GPU
// kernel (large ones and the fast sigmoid), on the default tile and, where that is a Hopper (sm90)
// tile, on the same tile in the other schedule and on the portable family's default too; every tile
// candidate of three specs; problems with many work tiles per CTA of the persistent sm90 kernel, on
// every sm90 tile; NaN in padding rows; bit-identical repeated launches, an invalid length rejected
// before the output is touched, and the info-level line of a new variant.
#include <dlfcn.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <optional>
#include <sigattn/sigattn.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "generator/kernel_spec.hpp"
#include "generator/tile_policy.hpp"
#include "gpu_test_env.hpp"
#include "numerics.hpp"
#include "problem.hpp"
#include "reference.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/forward.hpp"
#include "runtime/tile_counters.hpp"

namespace sigattn::test {
namespace {

constexpr DType bf16 = DType::bf16;
constexpr DType fp16 = DType::fp16;

// Above this many multiply-adds (about half a second of fp64 on one core) the fp32 GPU
// reference takes over from the CPU.
constexpr double kCpuReferenceWorkLimit = 6e8;

std::vector<Problem> head_dim_cases() {
  std::vector<Problem> cases;
  for (DType dtype : {bf16, fp16}) {
    for (int d : {32, 40, 64, 96, 128, 256}) {
      // Whole 128-row tiles (the x128 kernels).
      cases.push_back(Case(dtype, d).bthd(2, 128, 256));
      // Ragged lengths with empty, single and full sequences, GQA, causal, fast sigmoid.
      cases.push_back(
          Case(dtype, d).padded(200, 200, {200, 1, 77}, {150, 200, 0}).heads(4, 2).causal().fast());
    }
  }
  return cases;
}

std::vector<Problem> layout_cases() {
  std::vector<Problem> cases;
  for (DType dtype : {bf16, fp16}) {
    for (int d : {64, 128}) {
      cases.push_back(Case(dtype, d).bhtd(2, 100, 100).heads(3, 3));
      cases.push_back(Case(dtype, d).bhtd(1, 64, 192).heads(4, 2).causal());
      cases.push_back(Case(dtype, d).padded(100, 100, {0, 1, 57, 100}, {100, 0, 1, 100}));
      cases.push_back(Case(dtype, d).padded(100, 130, {}, {1, 90, 130}));
      cases.push_back(Case(dtype, d).padded(100, 130, {0, 60, 100}, {}));
      cases.push_back(Case(dtype, d).varlen({17, 0, 128, 1}, {40, 0, 129, 300}));
      cases.push_back(Case(dtype, d).varlen({33, 0, 100}, {64, 5, 100}).causal());
      cases.push_back(
          Case(dtype, d).varlen({1, 50, 0, 200}, {1, 0, 70, 200}).heads(4, 1).window(32, 0).fast());
    }
  }
  return cases;
}

std::vector<Problem> mask_cases() {
  std::vector<Problem> cases;
  for (auto [dtype, d] : {std::pair{bf16, 64}, std::pair{fp16, 128}}) {
    cases.push_back(Case(dtype, d).bthd(2, 200, 200).causal());
    cases.push_back(Case(dtype, d).bthd(2, 200, 200).window(32, 0));
    cases.push_back(Case(dtype, d).bthd(2, 200, 200).window(16, 16));
    cases.push_back(Case(dtype, d).bthd(2, 200, 200).window(-1, 8));
    cases.push_back(Case(dtype, d).bthd(2, 200, 200).causal().window(32, -1));
    cases.push_back(Case(dtype, d).bthd(2, 200, 200).causal().window(16, 16));
    // Bottom-right alignment: 17 queries see the last keys; 300 queries over 64 keys leave the
    // first 236 rows with no key at all.
    cases.push_back(Case(dtype, d).bthd(2, 17, 1000).causal());
    cases.push_back(Case(dtype, d).bthd(1, 300, 64).causal());
    cases.push_back(Case(dtype, d).bthd(1, 64, 300).window(8, 40));
    cases.push_back(Case(dtype, d).bthd(1, 1000, 1000).window(16, 16).fast());
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
  for (auto [dtype, d] : {std::pair{bf16, 64}, std::pair{fp16, 96}}) {
    cases.push_back(Case(dtype, d).bthd(2, 150, 150).bias(-3.0f));
    cases.push_back(Case(dtype, d).bthd(2, 150, 150).bias(1.5f).score_mod());
    cases.push_back(Case(dtype, d).bthd(2, 150, 150).score_mod());
    cases.push_back(Case(dtype, d).bthd(1, 300, 300).scale(0.05f).bias(-1.0f));
    cases.push_back(
        Case(dtype, d).padded(120, 120, {120, 3, 0}, {50, 120, 120}).score_mod().causal());
    cases.push_back(Case(dtype, d).varlen({60, 0, 90}, {60, 10, 200}).score_mod().bias(-2.0f));
    cases.push_back(Case(dtype, d).bthd(2, 150, 150).bias(-3.0f).score_mod().fast());
    cases.push_back(Case(dtype, d).bthd(1, 1000, 1000).score_mod().fast());
  }
  return cases;
}

std::vector<Problem> length_cases() {
  std::vector<Problem> cases;
  for (auto [dtype, d] : {std::pair{bf16, 64}, std::pair{fp16, 128}}) {
    cases.push_back(Case(dtype, d).bthd(1, 1, 1));
    cases.push_back(Case(dtype, d).bthd(3, 17, 17));
    cases.push_back(Case(dtype, d).bthd(1, 1000, 1000));
    cases.push_back(Case(dtype, d).bthd(1, 4097, 4097));
    cases.push_back(Case(dtype, d).bthd(1, 4097, 4097).heads(4, 1).causal().fast());
    cases.push_back(Case(dtype, d).bthd(1, 1, 4097).causal());
    cases.push_back(Case(dtype, d).bthd(1, 1000, 17));
    cases.push_back(Case(dtype, d).bthd(1, 4097, 1).causal());
    cases.push_back(Case(dtype, d).varlen({4097, 1}, {1, 4097}));
  }
  return cases;
}

std::vector<Problem> sigmoid_cases() {
  std::vector<Problem> cases;
  for (DType dtype : {bf16, fp16}) {
    for (bool fast : {false, true}) {
      Case plain = Case(dtype, 64).bthd(2, 256, 256);
      Case causal = Case(dtype, 64).bthd(1, 333, 333).causal();
      if (fast) {
        plain.fast();
        causal.fast();
      }
      cases.push_back(plain);
      cases.push_back(causal);
    }
  }
  return cases;
}

// Many more work tiles than CTAs, so that each CTA of the persistent sm90 kernel walks several
// of them: empty sequences, tiles that cross a sequence end, padding rows, GQA, score_mod and
// the causal longest-first order.
std::vector<Problem> schedule_cases() {
  const std::vector<int> queries = {600, 0, 1, 129, 511, 600, 300, 64, 65, 200, 600, 17};
  const std::vector<int> keys(queries.rbegin(), queries.rend());
  return {Case(bf16, 64).padded(600, 600, queries, keys).heads(8, 2).fast(),
          Case(fp16, 128).varlen(queries, keys).heads(4, 4).causal().score_mod(),
          Case(bf16, 128).bthd(16, 512, 512).heads(8, 8).fast(),
          Case(bf16, 64).bthd(4, 1000, 1000).heads(16, 4).causal().fast()};
}

// Every sm90 candidate walks the first schedule problem's work tiles.
Problem schedule_sweep_problem() { return schedule_cases().front(); }

// The first sm90 candidate of `spec` with the dynamic schedule (a tile counter per launch).
std::optional<gen::TileConfig> dynamic_sm90_tile(const gen::KernelSpec& spec,
                                                 const policy::Target& target) {
  for (const gen::TileConfig& tile : policy::candidates(spec, target)) {
    if (tile.family == gen::Family::sm90 && tile.schedule == gen::Schedule::dynamic) return tile;
  }
  return std::nullopt;
}

// Every tile candidate of these specs runs: x128, anylen, and packed ones whose tiles cross
// sequence ends (the sm90 family loads those without TMA), at d=256 with the 32-key steps of
// wide heads.
std::vector<Problem> tile_sweep_cases() {
  return {Case(bf16, 64).bthd(2, 333, 333).heads(4, 2).fast(),
          Case(bf16, 128).bthd(1, 256, 256).heads(4, 2).causal().fast(),
          Case(fp16, 96).varlen({200, 1, 77}, {150, 300, 0}).heads(4, 2).causal().score_mod(),
          Case(bf16, 256).varlen({200, 1, 77}, {150, 300, 0}).heads(4, 2).window(40, 8).fast()};
}

// Padding rows of q, k and v hold NaN: no output may depend on them.
Problem nan_padding_problem(DType dtype, int head_dim) {
  return Case(dtype, head_dim).padded(300, 300, {300, 130, 1}, {257, 300, 64}).heads(4, 2);
}

// The determinism and invalid-call problems.
Problem repeat_problem() {
  return Case(bf16, 128)
      .padded(1000, 1000, {1000, 513, 0, 77}, {1000, 1000, 300, 0})
      .heads(8, 2)
      .causal()
      .score_mod()
      .fast();
}

Problem invalid_length_problem() { return Case(bf16, 64).padded(64, 64, {64, 64}, {64, 64}); }

std::vector<std::vector<Problem>> all_reference_tables() {
  return {head_dim_cases(),           layout_cases(), mask_cases(),    grouped_head_cases(),
          bias_and_score_mod_cases(), length_cases(), sigmoid_cases(), schedule_cases()};
}

// The spec the library chooses for a problem. forward_spec checks the arguments on the host only,
// so an aligned host address can stand in for every device pointer.
gen::KernelSpec spec_of(const Problem& problem) {
  alignas(256) static std::byte placeholder[256];
  return forward_spec(placeholder_args(problem, placeholder));
}

// The tiles a reference problem runs on: the default for the GPU and, where that is an sm90 tile,
// the same tile in the other schedule (strided or dynamic), so that both schedules meet every
// layout and mask, and the portable family's default (what sm_90 without the a-features would
// get).
std::vector<gen::TileConfig> family_tiles(const gen::KernelSpec& spec,
                                          const policy::Target& target) {
  std::vector<gen::TileConfig> tiles = {policy::default_tile(spec, target).tile};
  if (tiles.front().family == gen::Family::sm90) {
    gen::TileConfig other = tiles.front();
    other.schedule =
        other.schedule == gen::Schedule::dynamic ? gen::Schedule::strided : gen::Schedule::dynamic;
    tiles.push_back(other);
    tiles.push_back(policy::default_tile(spec, policy::target_for_arch("sm_90")).tile);
  }
  return tiles;
}

const bool kVariantsRegistered = register_variants([](const Gpu& gpu) {
  std::vector<gen::Variant> variants;
  const auto add_default = [&](const Problem& problem) {
    const gen::KernelSpec spec = spec_of(problem);
    for (const gen::TileConfig& tile : family_tiles(spec, gpu.target)) {
      variants.push_back({spec, tile});
    }
  };
  for (const std::vector<Problem>& table : all_reference_tables()) {
    for (const Problem& problem : table) {
      if (param_selected(problem.name())) add_default(problem);
    }
  }
  for (const Problem& problem : tile_sweep_cases()) {
    if (!param_selected(problem.name())) continue;
    const gen::KernelSpec spec = spec_of(problem);
    for (const gen::TileConfig& tile : policy::candidates(spec, gpu.target)) {
      variants.push_back({spec, tile});
    }
  }
  if (test_selected("GpuForward.EverySm90TileWalksSeveralWorkTiles")) {
    const gen::KernelSpec spec = spec_of(schedule_sweep_problem());
    for (const gen::TileConfig& tile : policy::candidates(spec, gpu.target)) {
      if (tile.family == gen::Family::sm90) variants.push_back({spec, tile});
    }
  }
  if (test_selected("GpuForward.CapturedLaunchesReturnTheirTileCountersWithTheGraph")) {
    const gen::KernelSpec spec = spec_of(schedule_sweep_problem());
    if (const std::optional<gen::TileConfig> tile = dynamic_sm90_tile(spec, gpu.target)) {
      variants.push_back({spec, *tile});
    }
  }
  if (test_selected("GpuForward.RepeatedLaunchIsBitIdentical")) add_default(repeat_problem());
  if (test_selected("GpuForward.NaNInPaddingRowsDoesNotReachTheOutput")) {
    for (const Problem& problem : {nan_padding_problem(bf16, 128), nan_padding_problem(fp16, 64)}) {
      const gen::KernelSpec spec = spec_of(problem);
      for (const gen::TileConfig& tile : policy::candidates(spec, gpu.target)) {
        variants.push_back({spec, tile});
      }
    }
  }
  return variants;
});

void synchronize() { SIGATTN_CU(cuda::driver().cuCtxSynchronize()); }

bool use_cpu_reference(const Problem& problem) {
  // The CPU computes the exact sigmoid. The fast form's tanh.approx is off by up to 2^-11 of
  // |tanh|, about 2^-12 in sigma, while sigma itself is near 1/len_k at the default bias, so
  // fast problems are checked against the GPU reference, which uses the same tanh.approx.
  return problem.sigmoid == SigmoidMode::accurate && problem.work() <= kCpuReferenceWorkLimit;
}

std::vector<double> reference_for(const Problem& problem, const HostInputs& inputs,
                                  const DeviceInputs& device) {
  if (use_cpu_reference(problem)) return cpu_reference(problem, inputs);
  const std::vector<float> gpu = gpu_reference(device.args, problem.q_elements());
  return {gpu.begin(), gpu.end()};
}

double max_abs(const std::vector<double>& values) {
  double largest = 0.0;
  for (double value : values) largest = std::max(largest, std::abs(value));
  return largest;
}

Comparison compare_output(const Problem& problem, const std::vector<float>& out,
                          const std::vector<double>& ref) {
  ErrorAccumulator accumulator(max_abs(ref), tolerance_for(problem.dtype));
  for_each_output(problem,
                  [&](const Element& e) { accumulator.add(e, out[e.offset], ref[e.offset]); });
  return accumulator.result();
}

// Poisons the output (NaN in both dtypes: any element left unwritten fails), runs `launch` and
// compares what it wrote with `ref`.
template <class Launch>
void expect_output_matches(const Problem& problem, DeviceInputs& device,
                           const std::vector<double>& ref, Launch&& launch) {
  device.out.fill_bytes(0xFF);
  try {
    launch();
    synchronize();
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
    return;
  }
  const Comparison result = compare_output(problem, download_output(problem, device), ref);
  EXPECT_TRUE(result.passed) << result.summary;
}

class ForwardMatchesReference : public GpuTest, public testing::WithParamInterface<Problem> {};

TEST_P(ForwardMatchesReference, Output) {
  const Problem& problem = GetParam();
  problem.validate();
  const HostInputs inputs = make_inputs(problem, seed());
  DeviceInputs device = upload(problem, inputs);
  const gen::KernelSpec spec = forward_spec(device.args);
  const std::vector<double> ref = reference_for(problem, inputs, device);
  const std::vector<gen::TileConfig> tiles = family_tiles(spec, gpu().target);
  for (std::size_t i = 0; i < tiles.size(); ++i) {
    const gen::Variant variant{spec, tiles[i]};
    SCOPED_TRACE(fmt::format("variant {}, problem {}, seed {} (SIGATTN_TEST_SEED={}), reference {}",
                             gen::to_string(variant), problem.name(), seed(), base_seed(),
                             use_cpu_reference(problem) ? "cpu fp64" : "gpu fp32"));
    expect_output_matches(problem, device, ref, [&] {
      // The first tile is the default, reached through forward() as a caller would.
      if (i == 0) {
        forward(device.args, nullptr);
      } else {
        forward_with_tile(device.args, nullptr, tiles[i]);
      }
    });
  }
}

const auto name_of = [](const testing::TestParamInfo<Problem>& info) { return info.param.name(); };

INSTANTIATE_TEST_SUITE_P(HeadDims, ForwardMatchesReference, testing::ValuesIn(head_dim_cases()),
                         name_of);
INSTANTIATE_TEST_SUITE_P(Layouts, ForwardMatchesReference, testing::ValuesIn(layout_cases()),
                         name_of);
INSTANTIATE_TEST_SUITE_P(Masks, ForwardMatchesReference, testing::ValuesIn(mask_cases()), name_of);
INSTANTIATE_TEST_SUITE_P(GroupedHeads, ForwardMatchesReference,
                         testing::ValuesIn(grouped_head_cases()), name_of);
INSTANTIATE_TEST_SUITE_P(BiasAndScoreMod, ForwardMatchesReference,
                         testing::ValuesIn(bias_and_score_mod_cases()), name_of);
INSTANTIATE_TEST_SUITE_P(Lengths, ForwardMatchesReference, testing::ValuesIn(length_cases()),
                         name_of);
INSTANTIATE_TEST_SUITE_P(SigmoidForms, ForwardMatchesReference, testing::ValuesIn(sigmoid_cases()),
                         name_of);
INSTANTIATE_TEST_SUITE_P(PersistentSchedule, ForwardMatchesReference,
                         testing::ValuesIn(schedule_cases()), name_of);

class EveryTileCandidate : public GpuTest, public testing::WithParamInterface<Problem> {};

TEST_P(EveryTileCandidate, MatchesReference) {
  const Problem& problem = GetParam();
  problem.validate();
  const HostInputs inputs = make_inputs(problem, seed());
  DeviceInputs device = upload(problem, inputs);
  const gen::KernelSpec spec = forward_spec(device.args);
  const std::vector<gen::TileConfig> tiles = policy::candidates(spec, gpu().target);
  ASSERT_FALSE(tiles.empty()) << "no tile candidate for " << gen::to_string(spec) << " on "
                              << gpu().arch;
  const std::vector<double> ref = reference_for(problem, inputs, device);
  for (const gen::TileConfig& tile : tiles) {
    const gen::Variant variant{spec, tile};
    SCOPED_TRACE(fmt::format("variant {}, seed {} (SIGATTN_TEST_SEED={})", gen::to_string(variant),
                             seed(), base_seed()));
    expect_output_matches(problem, device, ref,
                          [&] { forward_with_tile(device.args, nullptr, tile); });
  }
}

INSTANTIATE_TEST_SUITE_P(TwoSpecs, EveryTileCandidate, testing::ValuesIn(tile_sweep_cases()),
                         name_of);

using GpuForward = GpuTest;

TEST_F(GpuForward, EverySm90TileWalksSeveralWorkTiles) {
  const Problem problem = schedule_sweep_problem();
  const HostInputs inputs = make_inputs(problem, seed());
  DeviceInputs device = upload(problem, inputs);
  const gen::KernelSpec spec = forward_spec(device.args);
  const std::vector<double> ref = reference_for(problem, inputs, device);
  int sm90_tiles = 0;
  for (const gen::TileConfig& tile : policy::candidates(spec, gpu().target)) {
    if (tile.family != gen::Family::sm90) continue;
    ++sm90_tiles;
    SCOPED_TRACE(fmt::format("variant {}, problem {}, seed {} (SIGATTN_TEST_SEED={})",
                             gen::to_string(gen::Variant{spec, tile}), problem.name(), seed(),
                             base_seed()));
    expect_output_matches(problem, device, ref,
                          [&] { forward_with_tile(device.args, nullptr, tile); });
  }
  if (sm90_tiles == 0) GTEST_SKIP() << gpu().arch << " has no sm90 tile";
}

// The graph API of the driver the library loaded (the library itself only captures into graphs).
struct GraphApi {
  CUresult (*begin)(CUstream, CUstreamCaptureMode);
  CUresult (*end)(CUstream, CUgraph*);
  CUresult (*instantiate)(CUgraphExec*, CUgraph, unsigned long long);
  CUresult (*launch)(CUgraphExec, CUstream);
  CUresult (*destroy_exec)(CUgraphExec);
  CUresult (*destroy)(CUgraph);
};

GraphApi graph_api() {
  void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (library == nullptr) throw std::runtime_error("libcuda.so.1 is not loaded");
  const auto symbol = [&]<class Pointer>(Pointer& entry, const char* name) {
    entry = reinterpret_cast<Pointer>(dlsym(library, name));
    if (entry == nullptr) throw std::runtime_error(fmt::format("libcuda.so.1 lacks {}", name));
  };
  GraphApi api{};
  symbol(api.begin, "cuStreamBeginCapture_v2");
  symbol(api.end, "cuStreamEndCapture");
  symbol(api.instantiate, "cuGraphInstantiateWithFlags");
  symbol(api.launch, "cuGraphLaunch");
  symbol(api.destroy_exec, "cuGraphExecDestroy");
  symbol(api.destroy, "cuGraphDestroy");
  return api;
}

// Each captured launch of the dynamic schedule holds a tile counter of its own; destroying the
// graph and its executable copy returns them (the driver runs the release on its own thread, so
// the test waits for it), and a second graph that reuses them computes the same output.
TEST_F(GpuForward, CapturedLaunchesReturnTheirTileCountersWithTheGraph) {
  const Problem problem = schedule_sweep_problem();
  const HostInputs inputs = make_inputs(problem, seed());
  DeviceInputs device = upload(problem, inputs);
  const gen::KernelSpec spec = forward_spec(device.args);
  const std::optional<gen::TileConfig> tile = dynamic_sm90_tile(spec, gpu().target);
  if (!tile) GTEST_SKIP() << gpu().arch << " has no dynamic sm90 tile";
  const std::vector<double> ref = reference_for(problem, inputs, device);
  const GraphApi graphs = graph_api();
  const cuda::DriverApi& api = cuda::driver();
  CUstream stream = nullptr;
  SIGATTN_CU(api.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  TileCounters& counters = TileCounters::instance();
  const int before = counters.held_by_graphs();
  constexpr int kLaunches = 3;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(fmt::format("graph {}, variant {}, problem {}, seed {}", round + 1,
                             gen::to_string(gen::Variant{spec, *tile}), problem.name(), seed()));
    CUgraph graph = nullptr;
    SIGATTN_CU(graphs.begin(stream, CU_STREAM_CAPTURE_MODE_GLOBAL));
    for (int i = 0; i < kLaunches; ++i) forward_with_tile(device.args, stream, *tile);
    SIGATTN_CU(graphs.end(stream, &graph));
    EXPECT_EQ(counters.held_by_graphs(), before + kLaunches);
    CUgraphExec exec = nullptr;
    SIGATTN_CU(graphs.instantiate(&exec, graph, 0));
    expect_output_matches(problem, device, ref, [&] {
      SIGATTN_CU(graphs.launch(exec, stream));
      SIGATTN_CU(api.cuStreamSynchronize(stream));
    });
    SIGATTN_CU(graphs.destroy_exec(exec));
    SIGATTN_CU(graphs.destroy(graph));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (counters.held_by_graphs() != before && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_EQ(counters.held_by_graphs(), before);
  }
  SIGATTN_CU(api.cuStreamDestroy(stream));
}

TEST_F(GpuForward, RepeatedLaunchIsBitIdentical) {
  const Problem problem = repeat_problem();
  const HostInputs inputs = make_inputs(problem, seed());
  DeviceInputs device = upload(problem, inputs);
  const auto run = [&] {
    device.out.fill_bytes(0xFF);
    forward(device.args, nullptr);
    synchronize();
    std::vector<std::uint16_t> bits(problem.q_elements());
    device.out.download(bits.data(), bits.size() * sizeof(std::uint16_t));
    return bits;
  };
  const std::vector<std::uint16_t> first = run();
  const std::vector<std::uint16_t> second = run();
  // Equal outputs prove nothing if neither launch wrote them: every element must be finite.
  const auto non_finite = std::count_if(first.begin(), first.end(), [&](std::uint16_t b) {
    return !std::isfinite(from_bits(problem.dtype, b));
  });
  EXPECT_EQ(non_finite, 0) << "problem " << problem.name() << ", seed " << seed();
  const auto differ = std::mismatch(first.begin(), first.end(), second.begin());
  EXPECT_TRUE(differ.first == first.end())
      << "launch 2 differs from launch 1 first at element " << (differ.first - first.begin())
      << ": " << from_bits(problem.dtype, *differ.first) << " vs "
      << from_bits(problem.dtype, *differ.second) << " (problem " << problem.name() << ", seed "
      << seed() << ")";
}

TEST_F(GpuForward, NaNInPaddingRowsDoesNotReachTheOutput) {
  for (const Problem& problem : {nan_padding_problem(bf16, 128), nan_padding_problem(fp16, 64)}) {
    HostInputs inputs = make_inputs(problem, seed());
    const std::uint16_t nan_bits = 0xFFFF;  // NaN in both dtypes
    for (int b = 0; b < problem.batch; ++b) {
      for (int t = problem.valid_q(b); t < problem.len_q; ++t) {
        for (int h = 0; h < problem.heads_q; ++h) {
          std::fill_n(inputs.q.begin() + problem.q_offset(b, t, h), problem.head_dim, nan_bits);
        }
      }
      for (int t = problem.valid_k(b); t < problem.len_k; ++t) {
        for (int h = 0; h < problem.heads_kv; ++h) {
          std::fill_n(inputs.k.begin() + problem.kv_offset(b, t, h), problem.head_dim, nan_bits);
          std::fill_n(inputs.v.begin() + problem.kv_offset(b, t, h), problem.head_dim, nan_bits);
        }
      }
    }
    DeviceInputs device = upload(problem, inputs);
    const gen::KernelSpec spec = forward_spec(device.args);
    // The fp64 CPU reference visits valid rows only.
    const std::vector<double> ref = cpu_reference(problem, inputs);
    for (const gen::TileConfig& tile : policy::candidates(spec, gpu().target)) {
      SCOPED_TRACE(fmt::format("variant {}, problem {}, seed {}",
                               gen::to_string(gen::Variant{spec, tile}), problem.name(), seed()));
      expect_output_matches(problem, device, ref,
                            [&] { forward_with_tile(device.args, nullptr, tile); });
    }
  }
}

// A packed query tensor of one token (cu_seqlens_q = [0, 1, 1]) below max_seqlen_q = 127, with
// the seq stride 0 a caller may pass for an extent-1 dimension: forward() runs it once the prefix
// sums are read. With trust_lengths the token axis is held to max_seqlen_q rows, so the zero
// stride is refused, naming it, before the output is touched.
TEST_F(GpuForward, OnePackedQueryTokenBelowALongerMaxSeqlen) {
  const Problem problem = Case(bf16, 64).varlen({1, 0}, {60, 67}).heads(4, 2);
  SCOPED_TRACE(fmt::format("problem {}, seed {}", problem.name(), seed()));
  const HostInputs inputs = make_inputs(problem, seed());
  DeviceInputs device = upload(problem, inputs);
  device.args.max_seqlen_q = 127;
  device.args.q.seq_stride = 0;
  device.args.out.seq_stride = 0;
  expect_output_matches(problem, device, cpu_reference(problem, inputs),
                        [&] { forward(device.args, nullptr); });

  device.args.trust_lengths = true;
  device.out.fill_bytes(0xFF);
  try {
    forward(device.args, nullptr);
    ADD_FAILURE() << "out.seq_stride = 0 over max_seqlen_q rows was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::invalid_argument) << e.what();
    EXPECT_NE(std::string(e.what()).find("out.seq_stride is 0 over an extent of 127"),
              std::string::npos)
        << e.what();
  }
  synchronize();
  std::vector<unsigned char> bytes(device.out.size());
  device.out.download(bytes.data(), bytes.size());
  EXPECT_TRUE(std::all_of(bytes.begin(), bytes.end(), [](unsigned char b) { return b == 0xFF; }))
      << "the output buffer was written by a rejected call";
}

TEST_F(GpuForward, LengthAboveMaxIsRejectedBeforeTheOutputIsTouched) {
  const Problem problem = invalid_length_problem();
  const HostInputs inputs = make_inputs(problem, seed());
  DeviceInputs device = upload(problem, inputs);
  const std::vector<std::int32_t> too_long = {problem.len_k + 1, 10};
  device.seq_lens_k.upload(too_long.data(), too_long.size() * sizeof(std::int32_t));
  device.out.fill_bytes(0xFF);
  try {
    forward(device.args, nullptr);
    ADD_FAILURE() << "seq_lens_k[0] = " << too_long[0] << " > max_seqlen_k = " << problem.len_k
                  << " was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::invalid_argument) << e.what();
    EXPECT_NE(std::string(e.what()).find("seq_lens_k"), std::string::npos)
        << "the message does not name seq_lens_k: " << e.what();
  }
  synchronize();
  std::vector<unsigned char> bytes(device.out.size());
  device.out.download(bytes.data(), bytes.size());
  EXPECT_TRUE(std::all_of(bytes.begin(), bytes.end(), [](unsigned char b) { return b == 0xFF; }))
      << "the output buffer was written by a rejected call";
}

// At info level the first call of a variant prints the choice explain_forward reports, once.
// fp16, head dim 24 and a window: a variant no other test of this process launches.
TEST_F(GpuForward, InfoLevelShowsANewVariantsChoiceOnce) {
  Problem problem;
  problem.dtype = DType::fp16;
  problem.head_dim = 24;
  problem.len_q = problem.len_k = 77;
  problem.window_left = 9;
  problem.window_right = 2;
  DeviceInputs device = upload(problem, make_inputs(problem, seed()));
  const Dispatch dispatch = explain_forward(device.args);
  const LogLevel saved = log_level();
  set_log_level(LogLevel::info);
  testing::internal::CaptureStderr();
  forward(device.args, nullptr);
  forward(device.args, nullptr);
  synchronize();
  const std::string printed = testing::internal::GetCapturedStderr();
  set_log_level(saved);
  const std::string line = fmt::format("sigattn: info: {}: tile {} from {} (", dispatch.variant,
                                       dispatch.tile, dispatch.served_by);
  const std::size_t first = printed.find(line);
  ASSERT_NE(first, std::string::npos) << printed;
  EXPECT_EQ(printed.rfind(line), first) << "the variant was shown twice: " << printed;
  EXPECT_NE(printed.find("; binary ", first), std::string::npos) << printed;
}

}  // namespace
}  // namespace sigattn::test
