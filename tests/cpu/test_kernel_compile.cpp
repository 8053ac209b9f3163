// Every kernel template (forward, backward dK/dV, backward dQ) compiles with NVRTC to CUBIN for
// sm_80 and sm_90a across head dims, dtypes, layouts, masks, score_mod and sigmoid modes, and the
// heuristic default configs compile with no local-memory spills. Runs on the CPU: no GPU is needed
// to compile.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "generator/generator.hpp"
#include "runtime/compiler.hpp"
#include "tuner/search_space.hpp"

namespace sigattn {
namespace {

struct Job {
  gen::Variant variant;
  std::string arch;
  bool is_default;
};

// Each head dim meets every value of every other axis across the rotation below, on both arches.
std::vector<Job> representative_jobs() {
  std::vector<Job> jobs;
  const int head_dims[] = {8, 32, 40, 64, 96, 128, 192, 256};
  int rotation = 0;
  for (const std::string arch : {"sm_80", "sm_90a"}) {
    tune::Target target = tune::target_for_arch(arch);
    for (int head_dim : head_dims) {
      for (int i = 0; i < 4; ++i, ++rotation) {
        gen::KernelSpec spec;
        spec.head_dim = head_dim;
        spec.dtype = rotation % 2 ? gen::DType::fp16 : gen::DType::bf16;
        spec.layout = static_cast<gen::Layout>(rotation % 3);
        spec.causal = (i & 1) != 0;
        spec.window = (i & 2) != 0;
        spec.score_mod = (rotation / 2) % 2 != 0;
        spec.sigmoid = (rotation / 3) % 2 ? gen::SigmoidMode::accurate : gen::SigmoidMode::fast;
        jobs.push_back({{spec, tune::default_tile(spec, target).tile}, arch, true});
        // The two backward kernels of the same spec.
        for (auto direction : {gen::Direction::dkdv, gen::Direction::dq}) {
          gen::KernelSpec backward = spec;
          backward.direction = direction;
          jobs.push_back({{backward, tune::default_tile(backward, target).tile}, arch, true});
        }
      }
      // One non-default config per head dim and arch: the last candidate of the grid.
      gen::KernelSpec spec;
      spec.head_dim = head_dim;
      auto tiles = tune::candidates(spec, target);
      jobs.push_back({{spec, tiles.back()}, arch, false});
    }
  }
  gen::KernelSpec x128;
  x128.seqlen = gen::SeqLen::x128;
  for (const std::string arch : {"sm_80", "sm_90a"}) {
    jobs.push_back(
        {{x128, tune::default_tile(x128, tune::target_for_arch(arch)).tile}, arch, true});
  }
  return jobs;
}

TEST(KernelCompile, RepresentativeVariantsCompileForSm80AndSm90a) {
  std::vector<Job> jobs = representative_jobs();
  std::atomic<std::size_t> next{0};
  std::mutex mutex;
  std::vector<std::string> failures;
  std::vector<std::string> spills;
  auto worker = [&] {
    for (std::size_t i = next++; i < jobs.size(); i = next++) {
      const Job& job = jobs[i];
      std::string name = gen::to_string(job.variant) + " for " + job.arch;
      try {
        CompiledKernel compiled = compile(gen::generate(job.variant), job.arch);
        std::lock_guard lock(mutex);
        if (compiled.cubin.empty()) failures.push_back(name + ": empty CUBIN");
        if (compiled.registers <= 0) failures.push_back(name + ": no ptxas register report");
        if (job.is_default && (compiled.spills() || compiled.stack_frame_bytes > 0)) {
          spills.push_back(name + ": " + std::to_string(compiled.spill_store_bytes) +
                           " bytes spilled, " + std::to_string(compiled.stack_frame_bytes) +
                           " bytes stack");
        }
      } catch (const std::exception& e) {
        std::lock_guard lock(mutex);
        failures.push_back(name + ": " + e.what());
      }
    }
  };
  unsigned threads = std::max(2u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  for (const auto& f : failures) ADD_FAILURE() << f;
  for (const auto& s : spills) ADD_FAILURE() << s;
  EXPECT_GT(jobs.size(), 200u);
}

TEST(KernelCompile, OddHeadDimPadsTheLastKStep) {
  gen::KernelSpec spec;
  spec.head_dim = 24;
  CompiledKernel compiled = compile(gen::generate({spec, {64, 32, 4, 2}}), "sm_86");
  EXPECT_FALSE(compiled.cubin.empty());
  EXPECT_FALSE(compiled.spills());
}

}  // namespace
}  // namespace sigattn
