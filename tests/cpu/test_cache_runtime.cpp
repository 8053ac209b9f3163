// The disk cache inside the runtime: a kernel compiled once is served from the user database
// after the in-memory cache is cleared (without NVRTC running), also from a database this process
// may not write, SIGATTN_CACHE=off and an unsafe location skip the database, with a warning for
// the latter, and tile lookups are kept per process.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "cache/database.hpp"
#include "cache/tuning_store.hpp"
#include "generator/generator.hpp"
#include "generator/template_store.hpp"
#include "generator/tile_policy.hpp"
#include "runtime/module_cache.hpp"
#include "runtime/nvrtc.hpp"
#include "runtime/persistent_cache.hpp"
#include "temp_dir.hpp"
#include "unprivileged.hpp"

namespace sigattn {
namespace {

using sigattn::testing::TempDir;

gen::GeneratedKernel small_kernel() {
  return gen::generate({gen::parse_spec("fwd.fp16.d32.dense.nomask.nosmod.fast.anylen"),
                        gen::TileConfig{64, 32, 4, 2}});
}

class DiskCache : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (nvrtc::try_api(&why) == nullptr) GTEST_SKIP() << "NVRTC is not available: " << why;
    ::unsetenv("SIGATTN_CACHE");
    PersistentCache::instance().reset();
    ModuleCache::instance().clear();
  }
  void TearDown() override {
    ::unsetenv("SIGATTN_CACHE");
    set_database_path("");
    PersistentCache::instance().reset();
    ModuleCache::instance().clear();
  }
};

TEST_F(DiskCache, SecondProcessStartGetsTheBinaryFromDisk) {
  TempDir dir;
  set_database_path((dir / "sigattn.db").string());
  const gen::GeneratedKernel kernel = small_kernel();
  const auto compiled = ModuleCache::instance().compiled(kernel, "sm_80");
  EXPECT_EQ(ModuleCache::instance().stats().disk_misses, 1u);
  EXPECT_EQ(PersistentCache::instance().binary_stats().stores, 1u);

  // A fresh process: empty memory caches, the same database.
  ModuleCache::instance().clear();
  PersistentCache::instance().reset();
  const auto from_disk = ModuleCache::instance().compiled(kernel, "sm_80");
  EXPECT_EQ(ModuleCache::instance().stats().disk_hits, 1u);
  EXPECT_EQ(ModuleCache::instance().stats().disk_misses, 0u);
  EXPECT_EQ(from_disk->cubin, compiled->cubin);
  EXPECT_EQ(from_disk->lowered_name, compiled->lowered_name);
  EXPECT_EQ(from_disk->registers, compiled->registers);
}

// A prebuilt cache that this process may only read (0444 in a 0555 directory, owned by another
// user or root): its kernels are served, nothing is recorded, and a new kernel is compiled and
// kept in memory only, without a warning.
TEST_F(DiskCache, ReadOnlyDatabaseIsServedAndNeverWritten) {
  TempDir dir;
  const std::filesystem::path path = dir / "sigattn.db";
  set_database_path(path.string());
  const gen::GeneratedKernel kernel = small_kernel();
  const auto compiled = ModuleCache::instance().compiled(kernel, "sm_80");
  PersistentCache::instance().reset();
  ModuleCache::instance().clear();
  ::chmod(path.c_str(), 0444);
  ::chmod(dir.path().c_str(), 0555);
  const std::string problem = sigattn::testing::run_unprivileged([&]() -> std::string {
    ::testing::internal::CaptureStderr();
    const auto served = ModuleCache::instance().compiled(kernel, "sm_80");
    const gen::GeneratedKernel other = gen::generate(
        {gen::parse_spec("fwd.fp16.d32.dense.causal.nosmod.fast.anylen"), {64, 32, 4, 2}});
    ModuleCache::instance().compiled(other, "sm_80");
    const std::string warnings = ::testing::internal::GetCapturedStderr();
    if (ModuleCache::instance().stats().disk_hits != 1) return "not served from the database";
    if (served->cubin != compiled->cubin) return "a different CUBIN was served";
    if (PersistentCache::instance().binary_stats().stores != 0) return "a binary was stored";
    if (!warnings.empty()) return "warnings: " + warnings;
    return {};
  });
  EXPECT_EQ(problem, "");
  cache::Database db(path, cache::OpenMode::read_only);
  EXPECT_EQ(cache::BinaryStore(db).summary().served, 0);
  EXPECT_EQ(cache::BinaryStore(db).summary().count, 1);
}

TEST_F(DiskCache, OffLeavesNoFile) {
  TempDir dir;
  ::setenv("SIGATTN_CACHE", "off", 1);
  set_database_path((dir / "sigattn.db").string());
  ModuleCache::instance().compiled(small_kernel(), "sm_80");
  EXPECT_EQ(ModuleCache::instance().stats().disk_misses, 1u);
  EXPECT_FALSE(std::filesystem::exists(dir / "sigattn.db"));
}

TEST_F(DiskCache, DirectoryOthersCanWriteIsSkippedWithAWarning) {
  TempDir dir;
  ::chmod(dir.path().c_str(), 0777);
  set_database_path((dir / "sigattn.db").string());
  ::testing::internal::CaptureStderr();
  const auto compiled = ModuleCache::instance().compiled(small_kernel(), "sm_80");
  const std::string warnings = ::testing::internal::GetCapturedStderr();
  EXPECT_FALSE(compiled->cubin.empty());
  EXPECT_NE(warnings.find("sigattn: warning: the disk cache is not used"), std::string::npos)
      << warnings;
  EXPECT_NE(warnings.find("writable by other users"), std::string::npos) << warnings;
  EXPECT_FALSE(std::filesystem::exists(dir / "sigattn.db"));
}

TEST_F(DiskCache, TileChoiceIsKeptUntilForgotten) {
  TempDir dir;
  const std::filesystem::path path = dir / "sigattn.db";
  set_database_path(path.string());
  // A spec the shipped data does not cover, so that nothing but this test's row can serve it.
  const gen::KernelSpec spec = gen::parse_spec("fwd.fp16.d64.dense.causal.nosmod.fast.x128");
  const cache::DeviceKey device{"NVIDIA H200", "sm_90a", 132};
  const policy::Target target = policy::target_for_arch("sm_90a");
  auto& persistent = PersistentCache::instance();
  EXPECT_EQ(persistent.choose_tile(spec, device, 4096, 4096, target).served_by,
            cache::ServedBy::heuristic);

  // Another process (a tuning run) stores a result for this problem.
  {
    cache::Database db(path, cache::OpenMode::read_write);
    cache::TuningResult tuned;
    tuned.device = device;
    tuned.problem = cache::problem_key(spec, 4096, 4096);
    tuned.tile = gen::TileConfig{64, 64, 4, 3};
    tuned.template_hash = cache::kernel_source_hash(tuned.problem, tuned.tile);
    tuned.time_ms = 1.0;
    tuned.tflops = 100.0;
    tuned.measured_at = "2026-11-28T12:00:00Z";
    tuned.method = "test";
    tuned.source = "test";
    cache::TuningStore(db).put_best(tuned);
  }
  // Lengths of the same buckets reuse the kept answer; the database is not read again.
  EXPECT_EQ(persistent.choose_tile(spec, device, 3000, 4096, target).served_by,
            cache::ServedBy::heuristic);
  persistent.forget_tile_choices();
  const cache::TileChoice fresh = persistent.choose_tile(spec, device, 3000, 4096, target);
  EXPECT_EQ(fresh.served_by, cache::ServedBy::user_db);
  EXPECT_FALSE(fresh.stale);
  EXPECT_EQ(fresh.tile, (gen::TileConfig{64, 64, 4, 3}));
}

}  // namespace
}  // namespace sigattn
