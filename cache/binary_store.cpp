// The binaries table: lookup by readable columns, integrity check (key and CUBIN) on every read,
// least recently used eviction by a logical use sequence (a counter, so the order does not depend
// on clock resolution), the verify/prune passes behind `sigattn db verify|prune`, and the
// migration that binds old rows' integrity hashes to their keys.
#include "cache/binary_store.hpp"

#include <fmt/format.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <utility>

#include "generator/template_store.hpp"

namespace sigattn::cache {
namespace {

std::int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

constexpr std::string_view kNextUseSequence =
    "(SELECT coalesce(max(use_sequence), 0) + 1 FROM binaries)";

// The key columns, in BinaryKey's order, then the row's key, CUBIN, size and integrity hash.
constexpr std::string_view kRowColumns =
    "template_hash, generator_version, variant, tile, arch, nvrtc_version, options, source_hash, "
    "key, cubin, size, integrity";

struct CheckedRow {
  BinaryKey key;
  std::string stored_key;
  std::vector<char> cubin;
  std::int64_t size = 0;
  std::string integrity;
};

// Reads a row selected with kRowColumns, starting at column `first`.
CheckedRow read_checked_row(const Statement& row, int first) {
  CheckedRow checked;
  checked.key.template_hash = row.text(first);
  checked.key.generator_version = static_cast<int>(row.integer(first + 1));
  checked.key.variant = row.text(first + 2);
  checked.key.tile = row.text(first + 3);
  checked.key.arch = row.text(first + 4);
  checked.key.nvrtc_version = row.text(first + 5);
  checked.key.options = row.text(first + 6);
  checked.key.source_hash = row.text(first + 7);
  checked.stored_key = row.text(first + 8);
  checked.cubin = row.blob(first + 9);
  checked.size = row.integer(first + 10);
  checked.integrity = row.text(first + 11);
  return checked;
}

// Empty when the row is intact, else what is wrong with it.
std::string row_problem(const CheckedRow& row) {
  if (static_cast<std::int64_t>(row.cubin.size()) != row.size) {
    return fmt::format("CUBIN is {} bytes, the row says {}", row.cubin.size(), row.size);
  }
  if (row.stored_key != row.key.hash()) return "the row's key does not match its columns";
  if (integrity_hash(row.key, row.cubin) != row.integrity) {
    return "CUBIN does not match its integrity hash (over key and CUBIN)";
  }
  return {};
}

}  // namespace

std::string integrity_hash(const BinaryKey& key, std::span<const char> cubin) {
  std::string input = key.canonical();
  input.append(cubin.data(), cubin.size());
  return gen::hash_hex(input);
}

void bind_integrity_to_keys(Database& db) {
  std::vector<std::pair<std::string, std::string>> rehashed;
  Statement rows = db.prepare(fmt::format("SELECT {} FROM binaries", kRowColumns));
  while (rows.step()) {
    const CheckedRow row = read_checked_row(rows, 0);
    const bool intact_before =
        static_cast<std::int64_t>(row.cubin.size()) == row.size &&
        gen::hash_hex(std::string_view(row.cubin.data(), row.cubin.size())) == row.integrity;
    if (intact_before) rehashed.emplace_back(row.stored_key, integrity_hash(row.key, row.cubin));
  }
  rows.reset();
  Statement update = db.prepare("UPDATE binaries SET integrity = ?1 WHERE key = ?2");
  for (const auto& [key, integrity] : rehashed) {
    update.bind(1, integrity).bind(2, key).run();
    update.reset();
  }
}

std::string BinaryKey::canonical() const {
  // Bump the leading tag if the serialization changes, so old keys can never collide.
  return nlohmann::json::array({"sigattn-binary-key-1", template_hash, generator_version, variant,
                                tile, arch, nvrtc_version, options, source_hash})
      .dump();
}

std::string BinaryKey::hash() const { return gen::hash_hex(canonical()); }

BinaryStore::BinaryStore(Database& db, std::int64_t max_bytes, WarningSink warn)
    : db_(db), max_bytes_(max_bytes), warn_(std::move(warn)) {}

std::optional<StoredBinary> BinaryStore::find(const BinaryKey& key) {
  Statement select = db_.prepare(fmt::format(
      "SELECT lowered_name, registers, spill_store_bytes, spill_load_bytes, stack_frame_bytes, "
      "compile_ms, {} FROM binaries WHERE template_hash = ?1 AND generator_version = ?2 AND "
      "variant = ?3 AND tile = ?4 AND arch = ?5 AND options = ?6 AND (?7 = '' OR nvrtc_version = "
      "?7) AND source_hash = ?8 ORDER BY use_sequence DESC",
      kRowColumns));
  select.bind(1, key.template_hash)
      .bind(2, key.generator_version)
      .bind(3, key.variant)
      .bind(4, key.tile)
      .bind(5, key.arch)
      .bind(6, key.options)
      .bind(7, key.nvrtc_version)
      .bind(8, key.source_hash);
  std::optional<StoredBinary> found;
  std::vector<std::string> corrupt_keys;
  while (!found && select.step()) {
    CheckedRow row = read_checked_row(select, 6);
    if (!row_problem(row).empty()) {
      corrupt_keys.push_back(row.stored_key);
      continue;
    }
    StoredBinary binary;
    binary.key = std::move(row.key);
    binary.lowered_name = select.text(0);
    binary.registers = static_cast<int>(select.integer(1));
    binary.spill_store_bytes = static_cast<int>(select.integer(2));
    binary.spill_load_bytes = static_cast<int>(select.integer(3));
    binary.stack_frame_bytes = static_cast<int>(select.integer(4));
    binary.compile_ms = select.real(5);
    binary.cubin = std::move(row.cubin);
    found = std::move(binary);
  }
  select.reset();
  for (const std::string& corrupt : corrupt_keys) {
    ++stats_.corrupt;
    if (warn_) {
      warn_(
          fmt::format("database {}: the stored binary of {} for {} failed its integrity check "
                      "and {}; it will be compiled again",
                      db_.path(), key.variant, key.arch,
                      db_.read_only() ? "is not used (the database is read-only)" : "was dropped"));
    }
    if (!db_.read_only()) db_.prepare("DELETE FROM binaries WHERE key = ?1").bind(1, corrupt).run();
  }
  if (!found) {
    ++stats_.misses;
    return std::nullopt;
  }
  ++stats_.hits;
  if (!db_.read_only()) record_use(found->key.hash());
  return found;
}

void BinaryStore::record_use(const std::string& row_key) {
  try {
    db_.prepare(fmt::format("UPDATE binaries SET used_at = ?1, use_sequence = {}, served = served "
                            "+ 1 WHERE key = ?2",
                            kNextUseSequence))
        .bind(1, now_seconds())
        .bind(2, row_key)
        .run();
  } catch (const DatabaseError&) {
    // Usage only orders eviction and feeds statistics; the binary is served without it.
  }
}

void BinaryStore::put(const StoredBinary& binary) {
  Database::Transaction transaction(db_);
  const std::int64_t now = now_seconds();
  db_
      .prepare(fmt::format(
          "INSERT OR REPLACE INTO binaries (key, template_hash, generator_version, "
          "variant, tile, arch, nvrtc_version, options, lowered_name, registers, "
          "spill_store_bytes, spill_load_bytes, stack_frame_bytes, compile_ms, cubin, "
          "size, integrity, created_at, used_at, use_sequence, source_hash) VALUES (?1, ?2, "
          "?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?18, "
          "{}, ?19)",
          kNextUseSequence))
      .bind(1, binary.key.hash())
      .bind(2, binary.key.template_hash)
      .bind(3, binary.key.generator_version)
      .bind(4, binary.key.variant)
      .bind(5, binary.key.tile)
      .bind(6, binary.key.arch)
      .bind(7, binary.key.nvrtc_version)
      .bind(8, binary.key.options)
      .bind(9, binary.lowered_name)
      .bind(10, binary.registers)
      .bind(11, binary.spill_store_bytes)
      .bind(12, binary.spill_load_bytes)
      .bind(13, binary.stack_frame_bytes)
      .bind(14, binary.compile_ms)
      .bind_blob(15, binary.cubin)
      .bind(16, static_cast<std::int64_t>(binary.cubin.size()))
      .bind(17, integrity_hash(binary.key, binary.cubin))
      .bind(18, now)
      .bind(19, binary.key.source_hash)
      .run();
  ++stats_.stores;
  stats_.evictions += static_cast<std::uint64_t>(evict_to(max_bytes_));
  transaction.commit();
}

std::int64_t BinaryStore::evict_to(std::int64_t max_bytes) {
  std::int64_t total = summary().bytes;
  if (total <= max_bytes) return 0;
  std::vector<std::string> victims;
  Statement oldest = db_.prepare("SELECT key, size FROM binaries ORDER BY use_sequence ASC");
  while (total > max_bytes && oldest.step()) {
    victims.push_back(oldest.text(0));
    total -= oldest.integer(1);
  }
  oldest.reset();
  Statement remove = db_.prepare("DELETE FROM binaries WHERE key = ?1");
  for (const std::string& victim : victims) {
    remove.bind(1, victim).run();
    remove.reset();
  }
  return static_cast<std::int64_t>(victims.size());
}

BinarySummary BinaryStore::summary() {
  Statement totals = db_.prepare(
      "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(served), 0) FROM binaries");
  totals.step();
  return {totals.integer(0), totals.integer(1), totals.integer(2)};
}

std::vector<BinaryRow> BinaryStore::verify() {
  std::vector<BinaryRow> bad;
  Statement rows = db_.prepare(fmt::format("SELECT {} FROM binaries", kRowColumns));
  while (rows.step()) {
    CheckedRow row = read_checked_row(rows, 0);
    if (std::string problem = row_problem(row); !problem.empty()) {
      bad.push_back({row.stored_key, row.key.variant, row.key.arch, row.key.nvrtc_version,
                     std::move(problem)});
    }
  }
  return bad;
}

std::vector<BinaryRow> BinaryStore::prune(const std::string& template_hash, int generator_version,
                                          std::optional<std::int64_t> max_age_seconds) {
  Database::Transaction transaction(db_);
  const std::int64_t now = now_seconds();
  std::vector<BinaryRow> pruned;
  Statement rows = db_.prepare(
      "SELECT key, variant, arch, nvrtc_version, template_hash, generator_version, used_at "
      "FROM binaries ORDER BY use_sequence");
  while (rows.step()) {
    std::string problem;
    if (rows.text(4) != template_hash) {
      problem = "stale: built from another template source";
    } else if (rows.integer(5) != generator_version) {
      problem = fmt::format("stale: built by generator version {}", rows.integer(5));
    } else if (max_age_seconds && now - rows.integer(6) > *max_age_seconds) {
      problem = fmt::format("not used for {} days", (now - rows.integer(6)) / 86400);
    }
    if (!problem.empty()) {
      pruned.push_back(
          {rows.text(0), rows.text(1), rows.text(2), rows.text(3), std::move(problem)});
    }
  }
  rows.reset();
  Statement remove = db_.prepare("DELETE FROM binaries WHERE key = ?1");
  for (const BinaryRow& row : pruned) {
    remove.bind(1, row.key).run();
    remove.reset();
  }
  transaction.commit();
  return pruned;
}

}  // namespace sigattn::cache
