// The user database location from the environment, following the XDG base directory rules for
// the cache directory (an unset, empty or relative XDG_CACHE_HOME falls back to ~/.cache).
#include "cache/paths.hpp"

#include <cstdlib>
#include <sigattn/sigattn.hpp>

namespace sigattn::cache {
namespace {

std::string variable(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

}  // namespace

PathEnvironment PathEnvironment::from_process() {
  return {variable("SIGATTN_DB"), variable("XDG_CACHE_HOME"), variable("HOME")};
}

std::filesystem::path user_database_path(const PathEnvironment& environment) {
  if (!environment.sigattn_db.empty()) return environment.sigattn_db;
  const std::filesystem::path xdg_cache(environment.xdg_cache_home);
  if (xdg_cache.is_absolute()) return xdg_cache / "sigattn" / "sigattn.db";
  if (!environment.home.empty()) {
    return std::filesystem::path(environment.home) / ".cache" / "sigattn" / "sigattn.db";
  }
  throw Error(Status::not_available,
              "cannot place the user database: SIGATTN_DB, XDG_CACHE_HOME and HOME are all unset "
              "(set SIGATTN_DB to the database file to use)");
}

std::filesystem::path user_database_path() {
  return user_database_path(PathEnvironment::from_process());
}

}  // namespace sigattn::cache
