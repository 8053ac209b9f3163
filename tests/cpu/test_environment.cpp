// On/off environment switches: every accepted spelling, unset and empty, and a value that means
// neither, which is ignored with a warning naming the variable.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <string>

#include "runtime/environment.hpp"

namespace sigattn {
namespace {

TEST(EnvironmentSwitch, AcceptedSpellings) {
  std::string warning;
  for (const char* on : {"1", "on", "true"}) {
    EXPECT_EQ(parse_switch("SIGATTN_X", on, &warning), true) << on;
  }
  for (const char* off : {"0", "off", "false"}) {
    EXPECT_EQ(parse_switch("SIGATTN_X", off, &warning), false) << off;
  }
  EXPECT_EQ(parse_switch("SIGATTN_X", nullptr, &warning), std::nullopt);
  EXPECT_EQ(parse_switch("SIGATTN_X", "", &warning), std::nullopt);
  EXPECT_TRUE(warning.empty()) << warning;
}

TEST(EnvironmentSwitch, OtherValuesAreIgnoredWithAWarning) {
  std::string warning;
  EXPECT_EQ(parse_switch("SIGATTN_ONLINE_TUNING", "yes please", &warning), std::nullopt);
  EXPECT_EQ(warning,
            "SIGATTN_ONLINE_TUNING=yes please is neither on (1, on, true) nor off (0, off, "
            "false); ignored");

  ::setenv("SIGATTN_TEST_SWITCH", "2", 1);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(environment_switch("SIGATTN_TEST_SWITCH"), std::nullopt);
  const std::string printed = ::testing::internal::GetCapturedStderr();
  ::unsetenv("SIGATTN_TEST_SWITCH");
  EXPECT_NE(printed.find("sigattn: warning: SIGATTN_TEST_SWITCH=2 is neither on"),
            std::string::npos)
      << printed;
}

}  // namespace
}  // namespace sigattn
