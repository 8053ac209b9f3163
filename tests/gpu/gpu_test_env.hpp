// What every GPU test needs before it starts: the device (or the reason to skip: no driver, no
// GPU, an architecture the kernels do not target), the random seed of the run, and the kernel
// variants the selected tests will launch, compiled in parallel before the first test.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "generator/kernel_spec.hpp"
#include "generator/tile_policy.hpp"
#include "runtime/cuda_driver.hpp"

namespace sigattn::test {

struct Gpu {
  cuda::DeviceInfo info;
  std::string arch;  // e.g. "sm_90a"
  policy::Target target;
};

// The device of the current context, found once per process; nullptr with the reason in *why
// when the tests must skip.
const Gpu* find_gpu(std::string* why);

// SIGATTN_TEST_SEED when set, else a fresh std::random_device value; one per process.
std::uint64_t base_seed();
// The seed of one test's inputs: the base seed mixed with the test's name.
std::uint64_t seed_for(std::string_view test_name);

// Whether this run (after --gtest_filter and sharding) includes a test named `suite.name`, or,
// for parameterized tests, one whose printed parameter is `param`.
bool test_selected(std::string_view full_name);
bool param_selected(std::string_view param);

// Lists the kernel variants the selected tests of one file launch. Registered at static
// initialization; the environment calls every lister once, with the device, before the first
// test. Returns true so that it can initialize a namespace-scope constant.
using VariantLister = std::function<std::vector<gen::Variant>(const Gpu&)>;
bool register_variants(VariantLister lister);

// Base of the GPU test fixtures: skips without a GPU and makes the device's context current.
class GpuTest : public testing::Test {
 protected:
  void SetUp() override;
  const Gpu& gpu() const { return *gpu_; }
  std::uint64_t seed() const;  // this test's seed, also recorded as the test property "seed"

 private:
  const Gpu* gpu_ = nullptr;
};

}  // namespace sigattn::test
