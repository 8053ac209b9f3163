// The device probe, the run's seed, the test-selection queries and the global environment that
// compiles every kernel variant the selected tests launch on all cores before the first test
// (NVRTC takes a second or two per variant; one at a time the suite would take minutes).
#include "gpu_test_env.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <thread>

#include "generator/architecture.hpp"
#include "generator/generator.hpp"
#include "reference.hpp"
#include "runtime/compiler.hpp"
#include "runtime/module_cache.hpp"

namespace sigattn::test {
namespace {

struct Probe {
  std::optional<Gpu> gpu;
  std::string skip_reason;
  std::exception_ptr failure;  // the driver is there but the device could not be set up
};

Probe probe_gpu() {
  Probe probe;
  std::string why;
  const cuda::DriverApi* api = cuda::try_driver(&why);
  if (api == nullptr) {
    probe.skip_reason = "no CUDA driver: " + why;
    return probe;
  }
  try {
    int count = 0;
    SIGATTN_CU(api->cuDeviceGetCount(&count));
    if (count == 0) {
      probe.skip_reason = "no GPU: the CUDA driver reports no device";
      return probe;
    }
    cuda::current_context();
    Gpu gpu;
    gpu.info = cuda::current_device_info();
    gpu.arch = cuda::arch_for(gpu.info.cc_major, gpu.info.cc_minor);
    if (!arch_supported(gpu.arch)) {
      probe.skip_reason = fmt::format(
          "no GPU the kernels target: {} is {} (compute capability {}.{}); sigattn compiles "
          "for {}",
          gpu.info.name, gpu.arch, gpu.info.cc_major, gpu.info.cc_minor,
          policy::architecture_names());
      return probe;
    }
    gpu.target = policy::target_for_arch(gpu.arch);
    probe.gpu = gpu;
  } catch (...) {
    probe.failure = std::current_exception();
  }
  return probe;
}

const Probe& probe() {
  static const Probe result = probe_gpu();
  return result;
}

std::uint64_t parse_seed(const char* text) {
  std::uint64_t seed = 0;
  const std::string_view digits(text);
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), seed);
  if (digits.empty() || error != std::errc() || end != digits.data() + digits.size()) {
    throw std::invalid_argument(
        fmt::format("SIGATTN_TEST_SEED = '{}' is not an unsigned decimal number", digits));
  }
  return seed;
}

std::uint64_t fresh_seed() {
  std::random_device device;
  return (std::uint64_t{device()} << 32) ^ device();
}

// splitmix64: spreads the combined seed over all bits.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

std::uint64_t fnv1a(std::string_view text) {
  std::uint64_t hash = 0xCBF29CE484222325ull;
  for (unsigned char c : text) hash = (hash ^ c) * 0x100000001B3ull;
  return hash;
}

std::vector<VariantLister>& listers() {
  static std::vector<VariantLister> registered;
  return registered;
}

template <class Predicate>
bool any_selected_test(Predicate&& matches) {
  const testing::UnitTest& unit = *testing::UnitTest::GetInstance();
  for (int s = 0; s < unit.total_test_suite_count(); ++s) {
    const testing::TestSuite& suite = *unit.GetTestSuite(s);
    for (int t = 0; t < suite.total_test_count(); ++t) {
      const testing::TestInfo& info = *suite.GetTestInfo(t);
      if (info.should_run() && matches(info)) return true;
    }
  }
  return false;
}

// Compiles `jobs` on up to hardware_concurrency threads; returns the failures' messages.
std::vector<std::string> run_in_parallel(const std::vector<std::function<void()>>& jobs) {
  std::atomic<std::size_t> next{0};
  std::mutex failures_mutex;
  std::vector<std::string> failures;
  const auto work = [&] {
    for (std::size_t i = next++; i < jobs.size(); i = next++) {
      try {
        jobs[i]();
      } catch (const std::exception& e) {
        std::lock_guard lock(failures_mutex);
        failures.push_back(e.what());
      }
    }
  };
  const std::size_t count =
      std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, jobs.size());
  std::vector<std::jthread> threads;
  for (std::size_t t = 0; t < count; ++t) threads.emplace_back(work);
  threads.clear();  // joins
  return failures;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

class PrecompileEnvironment : public testing::Environment {
 public:
  void SetUp() override {
    std::string why;
    const Gpu* gpu = nullptr;
    try {
      gpu = find_gpu(&why);
    } catch (const std::exception& e) {
      fmt::print("[sigattn] GPU setup failed (every GPU test will fail): {}\n", e.what());
      return;
    }
    if (gpu == nullptr) {
      fmt::print("[sigattn] GPU tests skip: {}\n", why);
      return;
    }
    fmt::print("[sigattn] {} ({}, {} SMs), seed {} (SIGATTN_TEST_SEED={} repeats this run)\n",
               gpu->info.name, gpu->arch, gpu->info.sm_count, base_seed(), base_seed());

    std::map<std::string, gen::Variant> variants;  // keyed by the canonical string: no repeats
    for (const VariantLister& list : listers()) {
      for (const gen::Variant& variant : list(*gpu))
        variants.emplace(gen::to_string(variant), variant);
    }
    std::vector<std::function<void()>> jobs;
    jobs.push_back([gpu] { reference_kernel(gpu->arch); });
    for (const auto& [name, variant] : variants) {
      jobs.push_back([gpu, variant = variant] {
        ModuleCache::instance().compiled(gen::generate(variant), gpu->arch);
      });
    }
    const auto started = std::chrono::steady_clock::now();
    const std::vector<std::string> failures = run_in_parallel(jobs);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    fmt::print(
        "[sigattn] compiled {} kernel variants and the reference for {} in {:.1f} s on {} "
        "threads; {} failed (their tests report why)\n",
        variants.size(), gpu->arch, seconds, std::thread::hardware_concurrency(), failures.size());
    for (const std::string& failure : failures) fmt::print("[sigattn]   {}\n", first_line(failure));
  }
};

[[maybe_unused]] const testing::Environment* const kPrecompile =
    testing::AddGlobalTestEnvironment(new PrecompileEnvironment);

}  // namespace

const Gpu* find_gpu(std::string* why) {
  const Probe& p = probe();
  if (p.failure) std::rethrow_exception(p.failure);
  if (!p.gpu) {
    *why = p.skip_reason;
    return nullptr;
  }
  cuda::current_context();  // current on this thread too
  return &*p.gpu;
}

std::uint64_t base_seed() {
  static const std::uint64_t seed = [] {
    const char* text = std::getenv("SIGATTN_TEST_SEED");
    return text != nullptr ? parse_seed(text) : fresh_seed();
  }();
  return seed;
}

std::uint64_t seed_for(std::string_view test_name) { return mix(base_seed() ^ fnv1a(test_name)); }

bool test_selected(std::string_view full_name) {
  return any_selected_test([&](const testing::TestInfo& info) {
    return fmt::format("{}.{}", info.test_suite_name(), info.name()) == full_name;
  });
}

bool param_selected(std::string_view param) {
  return any_selected_test([&](const testing::TestInfo& info) {
    return info.value_param() != nullptr && info.value_param() == param;
  });
}

bool register_variants(VariantLister lister) {
  listers().push_back(std::move(lister));
  return true;
}

void GpuTest::SetUp() {
  std::string why;
  try {
    gpu_ = find_gpu(&why);
  } catch (const std::exception& e) {
    FAIL() << "GPU setup failed: " << e.what();
  }
  if (gpu_ == nullptr) GTEST_SKIP() << why;
  RecordProperty("seed", std::to_string(seed()));
  RecordProperty("base_seed", std::to_string(base_seed()));
}

std::uint64_t GpuTest::seed() const {
  const testing::TestInfo& info = *testing::UnitTest::GetInstance()->current_test_info();
  return seed_for(fmt::format("{}.{}", info.test_suite_name(), info.name()));
}

}  // namespace sigattn::test
