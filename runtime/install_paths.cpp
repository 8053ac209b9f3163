// The shipped data directory. The loaded binary comes from dladdr on a function of this file:
// libsigattn.so when the library is shared, otherwise the program (whose link-map name is
// empty, so /proc/self/exe names it). Install-relative paths come from the build system.
#include "runtime/install_paths.hpp"

#include <dlfcn.h>
#include <link.h>

#include <cstdlib>
#include <system_error>

namespace sigattn {
namespace {

namespace fs = std::filesystem;

fs::path running_executable() {
  std::error_code error;
  return fs::read_symlink("/proc/self/exe", error);
}

// The file holding this function's code, and whether it is the main program.
fs::path loaded_binary(bool* is_executable) {
  Dl_info info{};
  link_map* map = nullptr;
  const int found = dladdr1(reinterpret_cast<void*>(&loaded_binary), &info,
                            reinterpret_cast<void**>(&map), RTLD_DL_LINKMAP);
  *is_executable = found == 0 || map == nullptr || map->l_name == nullptr || map->l_name[0] == '\0';
  if (*is_executable) return running_executable();
  std::error_code error;
  const fs::path path = fs::weakly_canonical(map->l_name, error);
  return error ? fs::path(map->l_name) : path;
}

bool is_inside(const fs::path& path, const fs::path& directory) {
  std::error_code error;
  const fs::path canonical_path = fs::weakly_canonical(path, error);
  if (error) return false;
  const fs::path canonical_directory = fs::weakly_canonical(directory, error);
  if (error || canonical_directory.empty()) return false;
  const fs::path relative = canonical_path.lexically_relative(canonical_directory);
  return !relative.empty() && *relative.begin() != "..";
}

}  // namespace

DataDirSearch DataDirSearch::for_this_process() {
  DataDirSearch search;
  const char* variable = std::getenv("SIGATTN_DATA_DIR");
  search.data_dir_variable = variable != nullptr ? variable : "";
  bool is_executable = false;
  search.binary = loaded_binary(&is_executable);
  search.relative_data_dir = is_executable ? SIGATTN_BIN_TO_DATA_DIR : SIGATTN_LIB_TO_DATA_DIR;
  search.build_dir = SIGATTN_BUILD_DIR;
  search.source_data_dir = SIGATTN_SOURCE_DATA_DIR;
  return search;
}

fs::path shipped_data_dir(const DataDirSearch& search) {
  if (!search.data_dir_variable.empty()) return search.data_dir_variable;
  const fs::path installed =
      (search.binary.parent_path() / search.relative_data_dir).lexically_normal();
  std::error_code error;
  if (fs::is_directory(installed, error)) return installed;
  if (is_inside(search.binary, search.build_dir)) return search.source_data_dir;
  return installed;
}

fs::path shipped_data_dir() { return shipped_data_dir(DataDirSearch::for_this_process()); }

}  // namespace sigattn
