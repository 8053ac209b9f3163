// Where the user's tuning database lives: $SIGATTN_DB, else $XDG_CACHE_HOME/sigattn/sigattn.db,
// else $HOME/.cache/sigattn/sigattn.db. Path computation only; opening the file is the
// database's job.
#pragma once

#include <filesystem>
#include <string>

namespace sigattn::cache {

// The environment variables the path depends on; empty means unset.
struct PathEnvironment {
  std::string sigattn_db;
  std::string xdg_cache_home;
  std::string home;

  static PathEnvironment from_process();
};

// Throws Error(not_available) when none of the variables gives a location.
std::filesystem::path user_database_path(const PathEnvironment& environment);
std::filesystem::path user_database_path();

}  // namespace sigattn::cache
