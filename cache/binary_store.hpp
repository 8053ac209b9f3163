// Compiled CUBINs in the database. A row's key is a hash over the canonical serialization of
// everything that determines the binary (template hash, generator version, variant, tile, arch,
// NVRTC version, NVRTC options, program text hash); the same fields are stored as readable columns.
// Every read checks an integrity hash over the key and the CUBIN, so a row's bytes cannot pass as
// another row's, and the store stays under a byte bound by evicting the least recently used rows.
// On a read-only database reads record no usage and drop nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "cache/database.hpp"

namespace sigattn::cache {

// Called with a one-line description of a problem the store recovered from (a corrupt row).
using WarningSink = std::function<void(const std::string&)>;

// Default bound on the bytes of CUBIN kept: a few thousand kernels.
inline constexpr std::int64_t kDefaultBinaryBytes = std::int64_t{1} << 30;

struct BinaryKey {
  std::string template_hash;
  int generator_version = 0;
  std::string variant;  // canonical variant string, tile included
  std::string tile;     // the tile part of the variant, e.g. "sm80.m128n64w4s2"
  std::string arch;
  std::string nvrtc_version;  // "13.0"
  std::string options;        // NVRTC options joined by spaces, without the architecture
  // Hash of the generated program text: catches a generator change made without a version bump.
  std::string source_hash;

  // A JSON array of the fields in the order above: the input of hash().
  std::string canonical() const;
  std::string hash() const;
};

struct StoredBinary {
  BinaryKey key;
  std::string lowered_name;
  std::vector<char> cubin;
  int registers = 0;
  int spill_store_bytes = 0;
  int spill_load_bytes = 0;
  int stack_frame_bytes = 0;
  double compile_ms = 0.0;
};

struct BinaryStoreStats {
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  // Rows whose CUBIN failed the integrity check (dropped, unless the database is read-only).
  std::uint64_t corrupt = 0;
  std::uint64_t stores = 0;
  std::uint64_t evictions = 0;
};

struct BinarySummary {
  std::int64_t count = 0;
  std::int64_t bytes = 0;
  std::int64_t served = 0;  // reads that returned a binary, over the database's lifetime
};

// A row that verify() or prune() reports.
struct BinaryRow {
  std::string key;
  std::string variant;
  std::string arch;
  std::string nvrtc_version;
  std::string problem;
};

class BinaryStore {
 public:
  explicit BinaryStore(Database& db, std::int64_t max_bytes = kDefaultBinaryBytes,
                       WarningSink warn = {});

  // The binary for key. With an empty key.nvrtc_version a binary built by any NVRTC version
  // matches (a CUBIN does not need NVRTC to run); otherwise only an exact match. A row that
  // fails its integrity check is deleted (when the database is writable), reported to the warning
  // sink and counted as corrupt. Recording the use of the binary found is best effort: a
  // read-only or busy database serves it all the same.
  std::optional<StoredBinary> find(const BinaryKey& key);

  // Inserts or replaces, then evicts least recently used rows beyond the byte bound.
  void put(const StoredBinary& binary);

  // Removes least recently used rows until at most max_bytes remain; returns how many went.
  std::int64_t evict_to(std::int64_t max_bytes);

  BinarySummary summary();
  // Rows whose CUBIN does not match its size or its integrity hash (over key and CUBIN), or whose
  // key does not match its columns.
  std::vector<BinaryRow> verify();
  // Deletes rows built from another template hash or generator version (stale: never served
  // again) and, when given, rows not used for max_age_seconds. Returns the deleted rows.
  std::vector<BinaryRow> prune(const std::string& template_hash, int generator_version,
                               std::optional<std::int64_t> max_age_seconds);

  const BinaryStoreStats& stats() const noexcept { return stats_; }

 private:
  void record_use(const std::string& row_key);

  Database& db_;
  std::int64_t max_bytes_;
  WarningSink warn_;
  BinaryStoreStats stats_;
};

// The integrity hash of a row: over the key's canonical form and the CUBIN.
std::string integrity_hash(const BinaryKey& key, std::span<const char> cubin);

// Schema migration 4: rows whose integrity hash covers the CUBIN alone (schema 3) and matches it
// get the hash of key and CUBIN; rows that fail the old check keep their hash and still fail.
void bind_integrity_to_keys(Database& db);

}  // namespace sigattn::cache
