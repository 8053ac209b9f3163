// runtime/log: the level names and their parsing from $SIGATTN_LOG, the level set at run time
// through the C++ API and the C ABI, the line format on stderr, messages given once per key even
// across threads, and the info line that shows a new variant's tile and binary origin.
#include <gtest/gtest.h>
#include <sigattn/sigattn.h>

#include <atomic>
#include <sigattn/sigattn.hpp>
#include <string>
#include <thread>
#include <vector>

#include "generator/kernel_spec.hpp"
#include "runtime/log.hpp"
#include "runtime/tile_choice.hpp"

namespace sigattn {
namespace {

// Restores the process's level after a test that changes it.
class LogLevelTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = log_level(); }
  void TearDown() override { set_log_level(saved_); }

 private:
  LogLevel saved_ = LogLevel::warn;
};

// What `write` prints on stderr.
template <class Write>
std::string captured(Write&& write) {
  ::testing::internal::CaptureStderr();
  write();
  return ::testing::internal::GetCapturedStderr();
}

TEST(LogLevelNames, RoundTripInAnyCase) {
  for (const LogLevel level : logging::kLevels) {
    EXPECT_EQ(logging::parse_level(logging::to_string(level)), level);
  }
  EXPECT_EQ(logging::parse_level("INFO"), LogLevel::info);
  EXPECT_EQ(logging::parse_level("Debug"), LogLevel::debug);
  EXPECT_EQ(logging::parse_level("warning"), std::nullopt);
  EXPECT_EQ(logging::parse_level(""), std::nullopt);
  EXPECT_EQ(logging::parse_level("3"), std::nullopt);
}

TEST(LogLevelFromEnvironment, UnsetOrEmptyIsWarn) {
  std::string warning;
  EXPECT_EQ(logging::level_from_environment(nullptr, &warning), LogLevel::warn);
  EXPECT_EQ(logging::level_from_environment("", &warning), LogLevel::warn);
  EXPECT_EQ(warning, "");
}

TEST(LogLevelFromEnvironment, NamesSelectTheirLevel) {
  std::string warning;
  EXPECT_EQ(logging::level_from_environment("off", &warning), LogLevel::off);
  EXPECT_EQ(logging::level_from_environment("error", &warning), LogLevel::error);
  EXPECT_EQ(logging::level_from_environment("info", &warning), LogLevel::info);
  EXPECT_EQ(logging::level_from_environment("debug", &warning), LogLevel::debug);
  EXPECT_EQ(warning, "");
}

TEST(LogLevelFromEnvironment, OtherValuesKeepWarnWithAWarningNamingThem) {
  std::string warning;
  EXPECT_EQ(logging::level_from_environment("loud", &warning), LogLevel::warn);
  EXPECT_EQ(warning,
            "SIGATTN_LOG=loud is not a log level (off, error, warn, info, debug); warn kept");
}

TEST_F(LogLevelTest, EachLevelAddsToTheOneBefore) {
  set_log_level(LogLevel::info);
  EXPECT_EQ(log_level(), LogLevel::info);
  EXPECT_TRUE(logging::enabled(LogLevel::error));
  EXPECT_TRUE(logging::enabled(LogLevel::warn));
  EXPECT_TRUE(logging::enabled(LogLevel::info));
  EXPECT_FALSE(logging::enabled(LogLevel::debug));
  set_log_level(LogLevel::off);
  EXPECT_FALSE(logging::enabled(LogLevel::error));
  EXPECT_FALSE(logging::enabled(LogLevel::off));
}

TEST_F(LogLevelTest, LevelsOutsideTheEnumAreRefused) {
  set_log_level(LogLevel::error);
  try {
    set_log_level(static_cast<LogLevel>(5));
    FAIL() << "level 5 accepted";
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), Status::invalid_argument);
    EXPECT_NE(std::string(error.what()).find("log level 5 is none of 0 (off)"), std::string::npos)
        << error.what();
  }
  EXPECT_EQ(log_level(), LogLevel::error);
}

TEST_F(LogLevelTest, CAbiSetsAndGetsTheLevel) {
  for (const int level : {SIGATTN_LOG_OFF, SIGATTN_LOG_ERROR, SIGATTN_LOG_WARN, SIGATTN_LOG_INFO,
                          SIGATTN_LOG_DEBUG}) {
    EXPECT_EQ(sigattn_set_log_level(level), SIGATTN_OK);
    EXPECT_EQ(sigattn_get_log_level(), level);
    EXPECT_EQ(static_cast<int>(log_level()), level);
  }
  EXPECT_EQ(sigattn_set_log_level(-1), SIGATTN_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sigattn_last_error()).find("log level -1"), std::string::npos)
      << sigattn_last_error();
  EXPECT_EQ(sigattn_set_log_level(5), SIGATTN_INVALID_ARGUMENT);
  EXPECT_EQ(sigattn_get_log_level(), SIGATTN_LOG_DEBUG);
}

TEST_F(LogLevelTest, LinesNameTheLibraryAndTheLevel) {
  set_log_level(LogLevel::debug);
  EXPECT_EQ(captured([] { logging::log(LogLevel::error, "e {}", 1); }), "sigattn: error: e 1\n");
  EXPECT_EQ(captured([] { logging::warn("w {}", 2); }), "sigattn: warning: w 2\n");
  EXPECT_EQ(captured([] { logging::info("i {}", 3); }), "sigattn: info: i 3\n");
  EXPECT_EQ(captured([] { logging::debug("d {}", 4); }), "sigattn: debug: d 4\n");
}

TEST_F(LogLevelTest, MessagesAboveTheLevelAreNotWritten) {
  set_log_level(LogLevel::warn);
  EXPECT_EQ(captured([] {
              logging::info("hidden");
              logging::debug("hidden");
              logging::warn("shown");
            }),
            "sigattn: warning: shown\n");
  set_log_level(LogLevel::off);
  EXPECT_EQ(captured([] { logging::log(LogLevel::error, "hidden"); }), "");
}

TEST_F(LogLevelTest, LinesOfManyThreadsNeverInterleave) {
  set_log_level(LogLevel::info);
  const std::string line(200, 'x');
  const std::string printed = captured([&] {
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < 50; ++i) logging::info("{}", line);
      });
    }
    for (std::thread& thread : threads) thread.join();
  });
  std::string expected;
  for (int i = 0; i < 8 * 50; ++i) expected += "sigattn: info: " + line + "\n";
  EXPECT_EQ(printed, expected);
}

TEST(FirstTime, TrueOnceEvenWhenThreadsRace) {
  std::atomic<int> firsts = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      if (logging::first_time("test key raced")) ++firsts;
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(firsts, 1);
  EXPECT_FALSE(logging::first_time("test key raced"));
  EXPECT_TRUE(logging::first_time("test key other"));
}

gen::Variant test_variant(int block_m) {
  gen::KernelSpec spec;
  spec.head_dim = 64;
  return {spec, gen::TileConfig{block_m, 64, 4, 2}};
}

TEST_F(LogLevelTest, InfoShowsEachNewVariantOnce) {
  set_log_level(LogLevel::info);
  LoadedKernel compiled;
  compiled.source = BinarySource::nvrtc;
  compiled.load_ms = 812.25;
  const gen::Variant variant = test_variant(64);
  const TileOrigin origin{"shipped_db", "tuned on NVIDIA H200"};
  EXPECT_EQ(captured([&] { log_launch(variant, origin, compiled); }),
            "sigattn: info: fwd.bf16.d64.dense.nomask.nosmod.fast.anylen/sm80.m64n64w4s2: tile "
            "sm80.m64n64w4s2 from shipped_db (tuned on NVIDIA H200); binary compiled by NVRTC in "
            "812.2 ms\n");
  EXPECT_EQ(captured([&] { log_launch(variant, origin, compiled); }), "");

  LoadedKernel from_database;
  from_database.source = BinarySource::database;
  EXPECT_NE(captured([&] {
              log_launch(test_variant(32), forced_origin(), from_database);
            }).find("from forced (the tile the caller passed); binary from the user database"),
            std::string::npos);
}

TEST_F(LogLevelTest, BelowInfoAVariantIsLeftForLater) {
  set_log_level(LogLevel::warn);
  const gen::Variant variant = test_variant(128);
  const LoadedKernel kernel;
  EXPECT_EQ(captured([&] { log_launch(variant, forced_origin(), kernel); }), "");
  set_log_level(LogLevel::info);
  EXPECT_NE(captured([&] {
              log_launch(variant, forced_origin(), kernel);
            }).find("binary already in memory in 0.0 ms"),
            std::string::npos);
}

}  // namespace
}  // namespace sigattn
