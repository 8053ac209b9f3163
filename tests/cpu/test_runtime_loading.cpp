// Loading of libnvrtc and libcuda on a machine without a GPU, NVRTC compilation to CUBIN with
// the ptxas report parsed, compile errors carrying their log, and the compile cache counting
// one miss per key however often and from however many threads it is asked.
#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "generator/generator.hpp"
#include "runtime/compiler.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/errors.hpp"
#include "runtime/module_cache.hpp"
#include "runtime/nvrtc.hpp"

namespace sigattn {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(NvrtcLoading, LoadsVersion13) {
  std::string why;
  ASSERT_NE(nvrtc::try_api(&why), nullptr) << why;
  EXPECT_EQ(nvrtc::version_string().rfind("13.", 0), 0u) << nvrtc::version_string();
}

TEST(NvrtcLoading, MissingOverrideLibraryIsNamedInTheError) {
  // The loaded state is process-wide, so the override is tried in a freshly started child.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("SIGATTN_NVRTC_LIBRARY", "/nonexistent/libnvrtc-override.so", 1);
        std::string why;
        const bool loaded = nvrtc::try_api(&why) != nullptr;
        std::cerr << why;
        std::exit(loaded ? 1 : 0);
      },
      ::testing::ExitedWithCode(0), "NVRTC not available.*/nonexistent/libnvrtc-override\\.so");
}

TEST(DriverLoading, MissingDriverIsNotAvailableAndNamesLibcuda) {
  if (cuda::try_driver(nullptr) != nullptr) {
    GTEST_SKIP() << "a CUDA driver is present; this checks the behaviour without one";
  }
  std::string why;
  EXPECT_EQ(cuda::try_driver(&why), nullptr);
  EXPECT_TRUE(contains(why, "dlopen libcuda.so.1 failed")) << why;
  try {
    cuda::current_context();
    ADD_FAILURE() << "current_context() without a driver";
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), Status::not_available);
    EXPECT_TRUE(contains(error.what(), "CUDA driver not available")) << error.what();
  }
}

TEST(ArchMapping, ComputeCapabilityToNvrtcArch) {
  EXPECT_EQ(cuda::arch_for(8, 0), "sm_80");
  EXPECT_EQ(cuda::arch_for(8, 6), "sm_86");
  EXPECT_EQ(cuda::arch_for(8, 9), "sm_89");
  EXPECT_EQ(cuda::arch_for(9, 0), "sm_90a");
  EXPECT_EQ(cuda::arch_for(10, 0), "sm_100a");
  EXPECT_EQ(cuda::arch_for(12, 0), "sm_120a");
  EXPECT_EQ(cuda::arch_for(13, 0), "compute_121");
  try {
    cuda::arch_for(7, 5);
    ADD_FAILURE() << "7.5 accepted";
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), Status::unsupported);
    EXPECT_TRUE(contains(error.what(), "7.5"));
  }
}

TEST(ArchMapping, SupportedArchitectures) {
  for (const char* arch : {"sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_90a", "sm_100",
                           "sm_100a", "sm_103a", "sm_110a", "sm_120a", "sm_121a", "compute_121"}) {
    EXPECT_TRUE(arch_supported(arch)) << arch;
  }
  for (const char* arch : {"sm_75", "sm_101", "compute_90a", "", "sm_90a "}) {
    EXPECT_FALSE(arch_supported(arch)) << arch;
  }
}

constexpr const char* kScaleSource = R"(
extern "C" __global__ void scale(float* data, float factor, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) data[i] *= factor;
}
)";

// A dynamically indexed local array lives in local memory: a non-zero stack frame.
constexpr const char* kStackSource = R"(
template <int N>
__global__ void pick(const int* index, float* out) {
  float values[N];
  for (int i = 0; i < N; ++i) values[i] = out[i] * 2.0f;
  out[0] = values[index[threadIdx.x] % N];
}
)";

bool is_elf(const std::vector<char>& binary) {
  return binary.size() > 4 && binary[0] == 0x7f && binary[1] == 'E' && binary[2] == 'L' &&
         binary[3] == 'F';
}

TEST(Compiler, CompilesTinyKernelForAmpereHopperAndBlackwell) {
  for (const char* arch : {"sm_80", "sm_90a", "sm_100a", "sm_120a"}) {
    SCOPED_TRACE(arch);
    const CompiledKernel kernel =
        compile_source("scale", kScaleSource, "scale", {"-std=c++17"}, arch);
    EXPECT_TRUE(is_elf(kernel.cubin));
    EXPECT_EQ(kernel.lowered_name, "scale");
    EXPECT_EQ(kernel.arch, arch);
    EXPECT_EQ(kernel.variant_name, "scale");
    EXPECT_GT(kernel.registers, 0) << kernel.log;
    EXPECT_FALSE(kernel.spills());
    EXPECT_TRUE(contains(kernel.log, "Used")) << kernel.log;
    EXPECT_GT(kernel.compile_ms, 0.0);
  }
}

TEST(Compiler, ParsesStackFrameOfTheRequestedTemplateInstance) {
  const CompiledKernel kernel = compile_source("pick", kStackSource, "pick<64>", {}, "sm_80");
  EXPECT_TRUE(contains(kernel.lowered_name, "pick")) << kernel.lowered_name;
  EXPECT_GE(kernel.stack_frame_bytes, 64 * 4) << kernel.log;
  EXPECT_GT(kernel.registers, 0) << kernel.log;
}

TEST(Compiler, CompileErrorCarriesLogOptionsAndArch) {
  const std::string broken = "__global__ void broken() { undeclared_identifier_xyz = 1; }\n";
  try {
    compile_source("broken", broken, "broken", {"-DSIGATTN_MARK=1"}, "sm_90a");
    ADD_FAILURE() << "broken source compiled";
  } catch (const CompileError& error) {
    EXPECT_EQ(error.status(), Status::compile_error);
    EXPECT_EQ(error.variant(), "broken");
    EXPECT_EQ(error.arch(), "sm_90a");
    EXPECT_TRUE(contains(error.log(), "undeclared_identifier_xyz")) << error.log();
    ASSERT_FALSE(error.options().empty());
    EXPECT_EQ(error.options().front(), "-DSIGATTN_MARK=1");
    EXPECT_TRUE(contains(error.what(), "undeclared_identifier_xyz"));
    EXPECT_TRUE(contains(error.what(), "--gpu-architecture=sm_90a"));
  }
}

TEST(Compiler, UnsupportedArchIsRefusedBeforeNvrtc) {
  try {
    compile_source("scale", kScaleSource, "scale", {}, "sm_75");
    ADD_FAILURE() << "sm_75 accepted";
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), Status::unsupported);
    EXPECT_TRUE(contains(error.what(), "sm_75"));
  }
}

// A small generated kernel, cheap enough to compile in a CPU test.
gen::GeneratedKernel small_generated_kernel() {
  gen::Variant variant;
  variant.spec.head_dim = 64;
  variant.tile = {64, 32, 4, 2};
  return gen::generate(variant);
}

TEST(Compiler, CompilesGeneratedKernelWithEmbeddedTemplates) {
  const gen::GeneratedKernel generated = small_generated_kernel();
  for (const char* arch : {"sm_80", "sm_90a"}) {
    SCOPED_TRACE(arch);
    const CompiledKernel kernel = compile(generated, arch);
    EXPECT_TRUE(is_elf(kernel.cubin));
    EXPECT_EQ(kernel.variant_name, generated.variant_name);
    EXPECT_FALSE(kernel.lowered_name.empty());
    EXPECT_GT(kernel.registers, 0) << kernel.log;
  }
}

// A compute_XY target gives PTX text with its NUL for cuModuleLoadData, and no ptxas report.
TEST(Compiler, CompilesPtxForTheDriverToJitCompile) {
  const CompiledKernel kernel = compile(small_generated_kernel(), "compute_121");
  EXPECT_FALSE(is_elf(kernel.cubin));
  ASSERT_FALSE(kernel.cubin.empty());
  EXPECT_EQ(kernel.cubin.back(), '\0');
  EXPECT_TRUE(contains(kernel.cubin.data(), ".target sm_121")) << kernel.cubin.data();
  EXPECT_TRUE(contains(kernel.cubin.data(), "mma.sync"));
  EXPECT_EQ(kernel.arch, "compute_121");
  EXPECT_EQ(kernel.registers, 0);
}

TEST(ModuleCache, CompilesEachKeyOnce) {
  ModuleCache& cache = ModuleCache::instance();
  cache.clear();
  const gen::GeneratedKernel generated = small_generated_kernel();
  const auto first = cache.compiled(generated, "sm_80");
  const auto second = cache.compiled(generated, "sm_80");
  EXPECT_EQ(first.get(), second.get());
  CacheStats stats = cache.stats();
  EXPECT_EQ(stats.compile_misses, 1u);
  EXPECT_EQ(stats.compile_hits, 1u);

  // Another arch is another key.
  const auto hopper = cache.compiled(generated, "sm_90a");
  EXPECT_NE(hopper.get(), first.get());
  EXPECT_EQ(hopper->arch, "sm_90a");
  stats = cache.stats();
  EXPECT_EQ(stats.compile_misses, 2u);
  EXPECT_EQ(stats.compile_hits, 1u);
}

TEST(ModuleCache, ConcurrentCallersOfOneKeyShareOneCompile) {
  ModuleCache& cache = ModuleCache::instance();
  cache.clear();
  const gen::GeneratedKernel generated = small_generated_kernel();
  constexpr int kThreads = 8;
  std::vector<std::shared_ptr<const CompiledKernel>> results(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] { results[i] = cache.compiled(generated, "sm_80"); });
  }
  for (std::thread& thread : threads) thread.join();
  for (const auto& result : results) EXPECT_EQ(result.get(), results.front().get());
  const CacheStats stats = cache.stats();
  EXPECT_EQ(stats.compile_misses, 1u);
  EXPECT_EQ(stats.compile_hits, static_cast<std::uint64_t>(kThreads - 1));
}

TEST(ModuleCache, FailedCompilesAreNotCached) {
  ModuleCache& cache = ModuleCache::instance();
  cache.clear();
  gen::GeneratedKernel broken;
  broken.variant_name = "broken";
  broken.source = "__global__ void broken() { undeclared_identifier_xyz = 1; }\n";
  broken.name_expression = "broken";
  broken.content_hash = "broken-source";
  EXPECT_THROW(cache.compiled(broken, "sm_80"), CompileError);
  EXPECT_THROW(cache.compiled(broken, "sm_80"), CompileError);
  EXPECT_EQ(cache.stats().compile_misses, 2u);
  EXPECT_EQ(cache.stats().compile_hits, 0u);
}

TEST(ModuleCache, LoadWithoutDriverIsNotAvailable) {
  if (cuda::try_driver(nullptr) != nullptr) {
    GTEST_SKIP() << "a CUDA driver is present; this checks the behaviour without one";
  }
  try {
    ModuleCache::instance().load(small_generated_kernel());
    ADD_FAILURE() << "load() without a driver";
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), Status::not_available);
  }
}

}  // namespace
}  // namespace sigattn
