// Where the data shipped with sigattn (the tuning databases under share/sigattn) is found:
// $SIGATTN_DATA_DIR, else share/sigattn next to the installed library or program, else the
// source tree's data/ when running from the build tree.
#pragma once

#include <filesystem>
#include <string>

namespace sigattn {

// Everything the lookup depends on, so that it can be decided for any layout.
struct DataDirSearch {
  std::string data_dir_variable;  // $SIGATTN_DATA_DIR; empty means unset
  std::filesystem::path binary;   // the file the running sigattn code was loaded from
  // From the binary's directory to the installed data, e.g. "../share/sigattn".
  std::filesystem::path relative_data_dir;
  std::filesystem::path build_dir;        // the build tree this library was compiled in
  std::filesystem::path source_data_dir;  // data/ of the source tree it was compiled from

  // The values of this process: libsigattn.so (or the executable it is linked into), found
  // with dladdr, and the paths compiled into the library.
  static DataDirSearch for_this_process();
};

// The variable when set; else the installed directory when it exists; else the source tree's
// data/ when the binary lies inside the build tree; else the installed directory, which then
// does not exist (so that messages name where the data was expected).
std::filesystem::path shipped_data_dir(const DataDirSearch& search);
std::filesystem::path shipped_data_dir();

}  // namespace sigattn
