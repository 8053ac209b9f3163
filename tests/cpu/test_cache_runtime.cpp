// The disk cache inside the runtime: a kernel compiled once is served from the user database
// after the in-memory cache is cleared (without NVRTC running), SIGATTN_CACHE=off and an unsafe
// location skip the database, with a warning for the latter.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "generator/generator.hpp"
#include "runtime/module_cache.hpp"
#include "runtime/nvrtc.hpp"
#include "runtime/persistent_cache.hpp"
#include "temp_dir.hpp"

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

}  // namespace
}  // namespace sigattn
