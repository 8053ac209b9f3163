// Every kernel template (forward, backward dK/dV in both work splits, backward dQ, the dQ
// conversion) compiles with NVRTC to CUBIN for sm_80 and sm_90a across head dims, dtypes, layouts,
// masks, score_mod and sigmoid modes, and the heuristic default configs compile with no
// local-memory spills (the persistent Hopper forward with masks or score_mod: at most 64 bytes);
// the Hopper (sm90) family's candidates (the persistent kernels in both schedules) and defaults
// of the default specs compile without spills or serialized wgmma; every decode candidate of the
// spec with every mask and score_mod, and the decode defaults and KV-cache helpers of every axis,
// compile without spills for both; the defaults of every head dim compile without spills for
// Blackwell (sm_100a, sm_120a). Runs on the CPU: no GPU is needed to compile.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "generator/generator.hpp"
#include "generator/tile_policy.hpp"
#include "runtime/compiler.hpp"
#include "sigattn/shared_storage.h"

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
    policy::Target target = policy::target_for_arch(arch);
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
        jobs.push_back({{spec, policy::default_tile(spec, target).tile}, arch, true});
        // The two backward kernels of the same spec, and the one-pass dK/dV kernel (atomic dQ).
        for (auto direction : {gen::Direction::dkdv, gen::Direction::dq}) {
          gen::KernelSpec backward = spec;
          backward.direction = direction;
          jobs.push_back({{backward, policy::default_tile(backward, target).tile}, arch, true});
        }
        gen::KernelSpec one_pass = spec;
        one_pass.direction = gen::Direction::dkdv;
        jobs.push_back({{one_pass, policy::default_tile(one_pass, target, /*atomic_dq=*/true).tile},
                        arch,
                        true});
      }
      // One non-default config per head dim and arch: the last candidate of the grid.
      gen::KernelSpec spec;
      spec.head_dim = head_dim;
      auto tiles = policy::candidates(spec, target);
      jobs.push_back({{spec, tiles.back()}, arch, false});
    }
  }
  gen::KernelSpec x128;
  x128.seqlen = gen::SeqLen::x128;
  for (const std::string arch : {"sm_80", "sm_90a"}) {
    jobs.push_back(
        {{x128, policy::default_tile(x128, policy::target_for_arch(arch)).tile}, arch, true});
  }
  return jobs;
}

// The persistent Hopper forward keeps its schedule's position in registers through every work
// tile. Where the consumers' main loop also holds the mask arithmetic and score_mod's shifts
// (causal, window, score_mod), or the producer has 24 registers (head_dim > 128 with tiles that
// cross sequence ends), ptxas spills a few values of that state: at most 52 bytes over the
// representative variants, a handful of local loads per 128-key step. More than 64 bytes, a
// spill of any other default, or one of a plain dense or padded default fails.
bool small_spill_allowed(const gen::Variant& variant, const CompiledKernel& compiled) {
  const gen::KernelSpec& spec = variant.spec;
  const bool masks_or_score_mod = spec.causal || spec.window || spec.score_mod;
  const bool lean_producer = spec.head_dim > 128 && spec.layout != gen::Layout::dense;
  return variant.tile.family == gen::Family::sm90 && spec.direction == gen::Direction::forward &&
         (masks_or_score_mod || lean_producer) && compiled.spill_store_bytes <= 64 &&
         compiled.stack_frame_bytes <= 64;
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
        if (job.is_default && !small_spill_allowed(job.variant, compiled) &&
            (compiled.spills() || compiled.stack_frame_bytes > 0)) {
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

// Compiles every variant on its arch, on all hardware threads, and fails each that does not build,
// spills, or that `check` finds a problem in (its answer, empty when none).
void expect_compile_cleanly(
    const std::vector<std::pair<gen::Variant, std::string>>& jobs,
    const std::function<std::string(const CompiledKernel&)>& check = [](const CompiledKernel&) {
      return std::string();
    }) {
  std::atomic<std::size_t> next{0};
  std::mutex mutex;
  std::vector<std::string> failures;
  auto worker = [&] {
    for (std::size_t i = next++; i < jobs.size(); i = next++) {
      const auto& [variant, arch] = jobs[i];
      const std::string name = gen::to_string(variant) + " for " + arch;
      std::string problem;
      try {
        const CompiledKernel compiled = compile(gen::generate(variant), arch);
        if (compiled.spills() || compiled.stack_frame_bytes > 0) {
          problem = std::to_string(compiled.spill_store_bytes) + " bytes spilled, " +
                    std::to_string(compiled.stack_frame_bytes) + " bytes stack";
        } else {
          problem = check(compiled);
        }
      } catch (const std::exception& e) {
        problem = e.what();
      }
      if (!problem.empty()) {
        std::lock_guard lock(mutex);
        failures.push_back(name + ": " + problem);
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < std::max(2u, std::thread::hardware_concurrency()); ++t) {
    pool.emplace_back(worker);
  }
  for (auto& t : pool) t.join();
  for (const auto& f : failures) ADD_FAILURE() << f;
}

// The Hopper family on sm_90a: every sm90 candidate of a few forward, dK/dV and dQ specs (the
// backward at head dims of whole and of partial 64-column blocks, and above 128, the persistent
// kernels in both schedules; of the persistent dK/dV tiles and the dQ column split, the 2-stage
// ones) and the default tiles of every default forward, dK/dV (both backward splits) and dQ spec
// compile with no spills, no ignored setmaxnreg (C7508) and no serialized wgmma (C7514: the
// accumulators touched while a wgmma is in flight).
std::vector<gen::Variant> sm90_variants() {
  const policy::Target target = policy::target_for_arch("sm_90a");
  std::vector<gen::Variant> variants;
  for (const char* text : {"fwd.bf16.d128.dense.nomask.nosmod.fast.x128",
                           "fwd.fp16.d64.padded.causal.smod.accurate.anylen",
                           "fwd.bf16.d96.varlen.causal+window.nosmod.fast.anylen",
                           "fwd.bf16.d256.dense.window.smod.accurate.anylen",
                           "dkdv.bf16.d128.dense.nomask.nosmod.fast.x128",
                           "dkdv.fp16.d64.padded.causal.smod.accurate.anylen",
                           "dkdv.bf16.d64.varlen.causal+window.nosmod.fast.anylen",
                           "dkdv.bf16.d80.padded.causal.smod.fast.anylen",
                           "dkdv.fp16.d96.varlen.window.nosmod.accurate.anylen",
                           "dkdv.bf16.d112.dense.nomask.nosmod.fast.x128",
                           "dkdv.bf16.d144.dense.nomask.nosmod.fast.x128",
                           "dkdv.bf16.d192.padded.causal.smod.fast.anylen",
                           "dkdv.fp16.d256.varlen.causal+window.nosmod.accurate.anylen",
                           "dq.bf16.d128.dense.nomask.nosmod.fast.x128",
                           "dq.bf16.d80.varlen.causal+window.smod.fast.anylen",
                           "dq.fp16.d96.padded.nomask.nosmod.accurate.anylen",
                           "dq.bf16.d112.dense.causal.nosmod.fast.x128",
                           "dq.fp16.d144.padded.causal.smod.accurate.anylen",
                           "dq.bf16.d160.dense.nomask.nosmod.fast.x128",
                           "dq.bf16.d192.varlen.causal+window.smod.fast.anylen",
                           "dq.fp16.d176.padded.window.smod.accurate.anylen",
                           "dq.fp16.d256.varlen.causal+window.smod.accurate.anylen",
                           "dq.bf16.d224.padded.causal.nosmod.fast.anylen",
                           "dq.fp16.d64.padded.causal.smod.accurate.anylen",
                           "dq.bf16.d128.varlen.causal+window.smod.fast.anylen"}) {
    const gen::KernelSpec spec = gen::parse_spec(text);
    for (const gen::TileConfig& tile : policy::candidates(spec, target)) {
      // The persistent dK/dV kernel's and the dQ column split's 3-stage tiles differ from their
      // 2-stage ones only in the ring's depth; the 2-stage tiles stand for them (the GPU tests
      // run them all).
      const bool deeper_persistent_dkdv = spec.direction == gen::Direction::dkdv &&
                                          tile.schedule == gen::Schedule::dynamic &&
                                          tile.stages > 2;
      const bool deeper_column_split = spec.direction == gen::Direction::dq &&
                                       sigattn::dq_sm90_column_split(tile.block_m, tile.warps) &&
                                       tile.stages > 2;
      if (tile.family == gen::Family::sm90 && !deeper_persistent_dkdv && !deeper_column_split) {
        variants.push_back({spec, tile});
      }
    }
  }
  for (const gen::KernelSpec& spec : policy::default_specs()) {
    for (bool atomic_dq : {false, true}) {
      if (atomic_dq && spec.direction != gen::Direction::dkdv) continue;
      const gen::TileConfig tile = policy::default_tile(spec, target, atomic_dq).tile;
      EXPECT_EQ(tile.family, gen::Family::sm90) << gen::to_string(spec);
      variants.push_back({spec, tile});
    }
  }
  return variants;
}

TEST(KernelCompile, Sm90VariantsCompileWithoutSpillsOrSerializedWgmma) {
  std::vector<std::pair<gen::Variant, std::string>> jobs;
  for (const gen::Variant& variant : sm90_variants()) jobs.push_back({variant, "sm_90a"});
  const auto dynamic = std::count_if(jobs.begin(), jobs.end(), [](const auto& job) {
    return job.first.tile.schedule == gen::Schedule::dynamic;
  });
  EXPECT_GT(dynamic, 20) << "the sweep lacks the dynamic schedule";
  expect_compile_cleanly(jobs, [](const CompiledKernel& compiled) -> std::string {
    if (compiled.log.find("C7514") != std::string::npos ||
        compiled.log.find("C7508") != std::string::npos) {
      return "ptxas warning: " + compiled.log;
    }
    return {};
  });
  EXPECT_GT(jobs.size(), 30u);
}

// Blackwell runs the sm80 family: the default tiles of the forward, both backward splits and
// decode at head dims from 8 to 256, with every mask and score_mod on the varlen layout (decode:
// paged), the most registers, compile for sm_100a and sm_120a without spills. (Every candidate
// of the default specs is the CLI's compile_default_space tests.) With 99 KiB the backward stops
// at d = 160.
TEST(KernelCompile, BlackwellDefaultsCompileWithoutSpillsAtEveryHeadDim) {
  std::vector<std::pair<gen::Variant, std::string>> jobs;
  for (const std::string arch : {"sm_100a", "sm_120a"}) {
    const policy::Target target = policy::target_for_arch(arch);
    for (int head_dim : {8, 32, 40, 64, 96, 128, 160, 192, 256}) {
      gen::KernelSpec decode =
          gen::parse_spec("decode.bf16.d64.paged.causal+window.smod.fast.anylen");
      decode.head_dim = head_dim;
      jobs.push_back({{decode, policy::default_tile(decode, target).tile}, arch});
      gen::KernelSpec spec = gen::parse_spec("fwd.bf16.d64.varlen.causal+window.smod.fast.anylen");
      spec.head_dim = head_dim;
      jobs.push_back({{spec, policy::default_tile(spec, target).tile}, arch});
      if (head_dim > 160 && target.max_smem_optin < 160 * 1024) continue;
      for (auto direction : {gen::Direction::dkdv, gen::Direction::dq}) {
        spec.direction = direction;
        jobs.push_back({{spec, policy::default_tile(spec, target).tile}, arch});
      }
      spec.direction = gen::Direction::dkdv;
      jobs.push_back({{spec, policy::default_tile(spec, target, true).tile}, arch});
    }
  }
  expect_compile_cleanly(jobs);
  EXPECT_EQ(jobs.size(), 2u * 9 * 5 - 2 * 3);
}

TEST(KernelCompile, DqConversionCompilesForEveryDtypeAndLayout) {
  for (const std::string arch : {"sm_80", "sm_90a"}) {
    for (auto dtype : {gen::DType::bf16, gen::DType::fp16}) {
      for (auto layout : {gen::Layout::dense, gen::Layout::padded, gen::Layout::varlen}) {
        for (int head_dim : {8, 40, 136, 256}) {
          gen::KernelSpec spec;
          spec.direction = gen::Direction::dkdv;
          spec.dtype = dtype;
          spec.layout = layout;
          spec.head_dim = head_dim;
          const gen::GeneratedKernel kernel = gen::generate_dq_convert(spec);
          const CompiledKernel compiled = compile(kernel, arch);
          EXPECT_FALSE(compiled.cubin.empty()) << kernel.variant_name << " for " << arch;
          EXPECT_GT(compiled.registers, 0) << kernel.variant_name << " for " << arch;
          EXPECT_FALSE(compiled.spills()) << kernel.variant_name << " for " << arch;
        }
      }
    }
  }
}

// Decode: the default tile of a rotation of every axis (head dims, dtypes, both cache layouts,
// masks, score_mod, sigmoid forms) on both arches, and every candidate of the heaviest spec
// (paged, causal + window, score_mod, accurate) at head dims 128 and 256.
TEST(KernelCompile, DecodeVariantsCompileWithoutSpills) {
  std::vector<std::pair<gen::Variant, std::string>> jobs;
  int rotation = 0;
  for (const std::string arch : {"sm_80", "sm_90a"}) {
    const policy::Target target = policy::target_for_arch(arch);
    for (int head_dim : {8, 40, 64, 96, 128, 256}) {
      for (int i = 0; i < 4; ++i, ++rotation) {
        gen::KernelSpec spec;
        spec.direction = gen::Direction::decode;
        spec.head_dim = head_dim;
        spec.dtype = rotation % 2 ? gen::DType::fp16 : gen::DType::bf16;
        spec.layout = (rotation / 2) % 2 ? gen::Layout::paged : gen::Layout::padded;
        spec.causal = (i & 1) != 0;
        spec.window = (i & 2) != 0;
        spec.score_mod = (rotation / 3) % 2 != 0;
        spec.sigmoid = (rotation / 5) % 2 ? gen::SigmoidMode::accurate : gen::SigmoidMode::fast;
        jobs.push_back({{spec, policy::default_tile(spec, target).tile}, arch});
      }
    }
    for (const char* text : {"decode.bf16.d128.paged.causal+window.smod.accurate.anylen",
                             "decode.fp16.d256.paged.causal+window.smod.accurate.anylen"}) {
      const gen::KernelSpec spec = gen::parse_spec(text);
      for (const gen::TileConfig& tile : policy::candidates(spec, target)) {
        // A tile's fixed split counts launch the program of its open one (splits 0).
        if (tile.splits == 0) jobs.push_back({{spec, tile}, arch});
      }
    }
  }
  expect_compile_cleanly(jobs);
  EXPECT_GT(jobs.size(), 60u);
}

TEST(KernelCompile, CacheHelpersCompileForEveryDtypeAndLayout) {
  for (const std::string arch : {"sm_80", "sm_90a"}) {
    for (auto dtype : {gen::DType::bf16, gen::DType::fp16}) {
      for (auto layout : {gen::Layout::padded, gen::Layout::paged}) {
        for (int head_dim : {8, 40, 128, 256}) {
          gen::KernelSpec spec;
          spec.direction = gen::Direction::decode;
          spec.dtype = dtype;
          spec.layout = layout;
          spec.head_dim = head_dim;
          for (const gen::GeneratedKernel& kernel :
               {gen::generate_kv_append(spec), gen::generate_decode_reduce(spec)}) {
            const CompiledKernel compiled = compile(kernel, arch);
            EXPECT_FALSE(compiled.cubin.empty()) << kernel.variant_name << " for " << arch;
            EXPECT_FALSE(compiled.spills()) << kernel.variant_name << " for " << arch;
          }
        }
      }
    }
  }
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
