// The shipped data directory for every layout: the environment variable first, then an installed
// share/sigattn next to the library or program, then the source tree's data/ from the build tree.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "runtime/install_paths.hpp"

namespace sigattn {
namespace {

namespace fs = std::filesystem;

class ShippedDataDir : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("sigattn_install_paths_" +
             std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "prefix" / "lib");
    fs::create_directories(root_ / "build");
    fs::create_directories(root_ / "source" / "data");
  }
  void TearDown() override { fs::remove_all(root_); }

  // A library installed under root/prefix/lib, compiled in root/build from root/source.
  DataDirSearch installed_library() const {
    DataDirSearch search;
    search.binary = root_ / "prefix" / "lib" / "libsigattn.so.0";
    search.relative_data_dir = "../share/sigattn";
    search.build_dir = root_ / "build";
    search.source_data_dir = root_ / "source" / "data";
    return search;
  }

  fs::path root_;
};

TEST_F(ShippedDataDir, VariableWins) {
  DataDirSearch search = installed_library();
  fs::create_directories(root_ / "prefix" / "share" / "sigattn");
  search.data_dir_variable = "/elsewhere/sigattn";
  EXPECT_EQ(shipped_data_dir(search), fs::path("/elsewhere/sigattn"));
}

TEST_F(ShippedDataDir, InstalledDirectoryNextToTheLibrary) {
  fs::create_directories(root_ / "prefix" / "share" / "sigattn");
  EXPECT_EQ(shipped_data_dir(installed_library()), root_ / "prefix" / "share" / "sigattn");
}

TEST_F(ShippedDataDir, InstalledDirectoryWinsInsideTheBuildTree) {
  DataDirSearch search = installed_library();
  search.build_dir = root_;
  fs::create_directories(root_ / "prefix" / "share" / "sigattn");
  EXPECT_EQ(shipped_data_dir(search), root_ / "prefix" / "share" / "sigattn");
}

TEST_F(ShippedDataDir, SourceTreeFromTheBuildTree) {
  DataDirSearch search = installed_library();
  search.binary = root_ / "build" / "libsigattn.so.0";
  EXPECT_EQ(shipped_data_dir(search), root_ / "source" / "data");
}

TEST_F(ShippedDataDir, MissingInstalledDirectoryIsNamedOutsideTheBuildTree) {
  EXPECT_EQ(shipped_data_dir(installed_library()), root_ / "prefix" / "share" / "sigattn");
}

TEST(ShippedDataDirOfThisProcess, FindsTheTestProgram) {
  const DataDirSearch search = DataDirSearch::for_this_process();
  EXPECT_EQ(search.binary.filename(), "sigattn_cpu_tests");
  EXPECT_EQ(search.relative_data_dir, fs::path("../share/sigattn"));
  const char* variable = std::getenv("SIGATTN_DATA_DIR");
  EXPECT_EQ(search.data_dir_variable, variable != nullptr ? variable : "");
  if (variable == nullptr) {
    EXPECT_EQ(shipped_data_dir(), search.source_data_dir);
  }
}

}  // namespace
}  // namespace sigattn
