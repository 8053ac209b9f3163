// The user database location: SIGATTN_DB first, then an absolute XDG_CACHE_HOME, then HOME.
#include <gtest/gtest.h>

#include <sigattn/sigattn.hpp>

#include "cache/paths.hpp"

namespace sigattn::cache {
namespace {

TEST(UserDatabasePath, FollowsTheEnvironmentInOrder) {
  struct Case {
    PathEnvironment environment;
    const char* expected;
  };
  const Case cases[] = {
      {{"/data/tuned.db", "/xdg", "/home/u"}, "/data/tuned.db"},
      {{"", "/xdg", "/home/u"}, "/xdg/sigattn/sigattn.db"},
      {{"", "", "/home/u"}, "/home/u/.cache/sigattn/sigattn.db"},
      // The XDG spec says a relative XDG_CACHE_HOME is to be ignored.
      {{"", "relative/cache", "/home/u"}, "/home/u/.cache/sigattn/sigattn.db"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(user_database_path(c.environment).string(), c.expected);
  }
}

TEST(UserDatabasePath, NoLocationIsNotAvailable) {
  try {
    user_database_path(PathEnvironment{});
    ADD_FAILURE() << "a path without any variable";
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), Status::not_available);
    EXPECT_NE(std::string(error.what()).find("SIGATTN_DB"), std::string::npos);
  }
}

}  // namespace
}  // namespace sigattn::cache
