// The process's view of the on-disk cache: the user database (compiled kernels and tuning
// results) and the shipped tuning data. Opened on first use; any failure to open, read or write
// it is a warning (runtime/log, once per message) and the call goes on without it, so the disk
// cache can only make a call faster, never make it fail. A database this process cannot write is
// read only: it serves binaries and tuning results, and new kernels are kept in memory.
// SIGATTN_CACHE=off turns it off.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "cache/binary_store.hpp"
#include "cache/database.hpp"
#include "cache/tuning_store.hpp"
#include "generator/generator.hpp"
#include "runtime/compiler.hpp"

namespace sigattn {

class PersistentCache {
 public:
  static PersistentCache& instance();

  // Replaces $SIGATTN_DB and the default location; an empty path restores them. Takes effect
  // on the next use.
  void set_database_path(const std::filesystem::path& path);
  // The user database this process uses: the override, else $SIGATTN_DB or the default location.
  // Throws Error(not_available) when none gives a location.
  std::filesystem::path database_path();

  // The key of a generated kernel's binary. nvrtc_version is the version of the NVRTC that
  // would compile it here, or empty when NVRTC cannot be loaded: a stored CUBIN of any NVRTC
  // version then matches, since running a CUBIN does not need NVRTC.
  static cache::BinaryKey binary_key(const gen::GeneratedKernel& kernel, const std::string& arch,
                                     const std::string& nvrtc_version);

  // The stored binary of this kernel, if the user database has an intact one.
  std::optional<CompiledKernel> find_binary(const gen::GeneratedKernel& kernel,
                                            const std::string& arch);
  // Nothing is stored when the database is read-only.
  void store_binary(const gen::GeneratedKernel& kernel, const CompiledKernel& compiled);

  // The tile for one call through the lookup chain (user database, shipped data, nearest
  // bucket, over fresh rows and then over stale ones; heuristic default). The answer for a device,
  // spec and pair of length buckets is kept for the life of the process, so repeated calls never
  // query the database again.
  cache::TileChoice choose_tile(const gen::KernelSpec& spec, const cache::DeviceKey& device,
                                int max_seqlen_q, int max_seqlen_k, const policy::Target& target);
  // Drops the kept answers of choose_tile (after new tuning results were written).
  void forget_tile_choices();

  // Counters of the binary store since the database was opened (zero when it is not in use).
  cache::BinaryStoreStats binary_stats();
  // Closes the database and forgets the shipped data and the warnings already given, so that
  // the next use reads the environment and the files again.
  void reset();

 private:
  PersistentCache() = default;
  // The open database, or null when the cache is off or unusable; mutex_ must be held.
  cache::Database* database();
  const std::vector<cache::TuningResult>& shipped_results();
  void warn(const std::string& message);

  std::mutex mutex_;
  std::optional<std::filesystem::path> path_override_;
  bool opened_ = false;  // an attempt was made; database_ says whether it worked
  std::unique_ptr<cache::Database> database_;
  std::unique_ptr<cache::BinaryStore> binaries_;
  std::optional<std::vector<cache::TuningResult>> shipped_;
  // Tile choices by device, spec and the buckets of the lengths (only these take part in the
  // lookup, so they key the memo exactly), compared as values: no string is built per call.
  struct ChoiceKey {
    cache::DeviceKey device;
    gen::KernelSpec spec;
    int bucket_q = 0;
    int bucket_k = 0;

    auto operator<=>(const ChoiceKey&) const = default;
  };
  std::map<ChoiceKey, cache::TileChoice> tile_choices_;
  std::set<std::string> warned_;
};

}  // namespace sigattn
