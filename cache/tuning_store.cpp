// The tuning_best and tuning_candidates tables, the freshness of their rows, and the lookup chain
// that turns them into a tile for one call.
#include "cache/tuning_store.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <map>
#include <stdexcept>
#include <tuple>

#include "generator/generator.hpp"

namespace sigattn::cache {
namespace {

constexpr std::string_view kBestColumns =
    "device_name, arch, sm_count, template_hash, spec, seqlen_q_bucket, seqlen_k_bucket, tile, "
    "time_ms, tflops, measured_at, method, source";

TuningResult read_best(const Statement& row) {
  TuningResult result;
  result.device = {row.text(0), row.text(1), static_cast<int>(row.integer(2))};
  result.template_hash = row.text(3);
  result.problem = {row.text(4), static_cast<int>(row.integer(5)),
                    static_cast<int>(row.integer(6))};
  result.tile = gen::parse_tile(row.text(7));
  result.time_ms = row.real(8);
  result.tflops = row.real(9);
  result.measured_at = row.text(10);
  result.method = row.text(11);
  result.source = row.text(12);
  return result;
}

// Binds the seven key columns to parameters 1..7.
void bind_key(Statement& statement, const DeviceKey& device, const std::string& template_hash,
              const ProblemKey& problem) {
  statement.bind(1, device.name)
      .bind(2, device.arch)
      .bind(3, device.sm_count)
      .bind(4, template_hash)
      .bind(5, problem.spec)
      .bind(6, problem.seqlen_q_bucket)
      .bind(7, problem.seqlen_k_bucket);
}

std::vector<TuningResult> read_all_best(Statement& select) {
  std::vector<TuningResult> rows;
  while (select.step()) rows.push_back(read_best(select));
  return rows;
}

std::string describe(const TuningResult& row) {
  return fmt::format("{:.4f} ms, {:.1f} TFLOPS on {} ({}, {} SMs), measured {}{}", row.time_ms,
                     row.tflops, row.device.name, row.device.arch, row.device.sm_count,
                     row.measured_at, row.method.empty() ? "" : " by " + row.method);
}

// Whether a row's source hash is that of today's kernel (which a kernel that cannot be built has
// not).
bool same_sources(const std::string& stored, const std::string& today) {
  return !today.empty() && stored == today;
}

// Lower is better: a fresh row before a stale one, then the faster.
std::tuple<bool, double> preference(const TuningResult& row) {
  return {!is_fresh(row), row.time_ms};
}

// Which rows of a device and problem delete_rows removes: those of `template_hash`, or those of
// any other source hash (superseded by the row of `template_hash` just written).
enum class HashMatch { same, other };

// Deletes the rows of the device, source hash and problem (and tile, for candidates); returns how
// many.
std::int64_t delete_rows(Database& db, std::string_view table, const DeviceKey& device,
                         HashMatch match, const std::string& template_hash,
                         const ProblemKey& problem, const gen::TileConfig* tile) {
  Statement remove = db.prepare(fmt::format(
      "DELETE FROM {} WHERE device_name = ?1 AND arch = ?2 AND sm_count = ?3 AND template_hash {} "
      "?4 AND spec = ?5 AND seqlen_q_bucket = ?6 AND seqlen_k_bucket = ?7{}",
      table, match == HashMatch::same ? "=" : "!=", tile != nullptr ? " AND tile = ?8" : ""));
  bind_key(remove, device, template_hash, problem);
  if (tile != nullptr) remove.bind(8, gen::to_string(*tile));
  remove.run();
  Statement changes = db.prepare("SELECT changes()");
  changes.step();
  return changes.integer(0);
}

int bucket_distance(const ProblemKey& a, const ProblemKey& b) {
  const auto log2 = [](int bucket) {
    return static_cast<int>(std::bit_width(static_cast<unsigned>(bucket)));
  };
  return std::abs(log2(a.seqlen_q_bucket) - log2(b.seqlen_q_bucket)) +
         std::abs(log2(a.seqlen_k_bucket) - log2(b.seqlen_k_bucket));
}

}  // namespace

int seqlen_bucket(int max_seqlen) {
  if (max_seqlen < 1) {
    throw std::invalid_argument(fmt::format("sequence length {} must be positive", max_seqlen));
  }
  return static_cast<int>(std::bit_ceil(static_cast<unsigned>(max_seqlen)));
}

ProblemKey problem_key(const gen::KernelSpec& spec, int max_seqlen_q, int max_seqlen_k) {
  return {gen::to_string(spec), seqlen_bucket(max_seqlen_q), seqlen_bucket(max_seqlen_k)};
}

std::string kernel_source_hash(const ProblemKey& problem, const gen::TileConfig& tile) {
  try {
    return gen::kernel_source_hash(gen::Variant{gen::parse_spec(problem.spec), tile});
  } catch (const std::invalid_argument&) {
    return {};
  }
}

bool is_fresh(const TuningResult& row) {
  return same_sources(row.template_hash, kernel_source_hash(row.problem, row.tile));
}

bool is_fresh(const TuningCandidate& row) {
  return same_sources(row.template_hash, kernel_source_hash(row.problem, row.tile));
}

FreshnessCounts count_freshness(const std::vector<TuningResult>& rows) {
  FreshnessCounts counts;
  for (const TuningResult& row : rows) ++(is_fresh(row) ? counts.fresh : counts.stale);
  return counts;
}

std::string_view to_string(CandidateStatus status) {
  switch (status) {
    case CandidateStatus::ok:
      return "ok";
    case CandidateStatus::compile_error:
      return "compile_error";
    case CandidateStatus::launch_error:
      return "launch_error";
    case CandidateStatus::verify_failed:
      return "verify_failed";
    case CandidateStatus::timeout:
      return "timeout";
  }
  return "unknown";
}

CandidateStatus parse_candidate_status(std::string_view text) {
  for (const CandidateStatus status :
       {CandidateStatus::ok, CandidateStatus::compile_error, CandidateStatus::launch_error,
        CandidateStatus::verify_failed, CandidateStatus::timeout}) {
    if (to_string(status) == text) return status;
  }
  throw std::invalid_argument(fmt::format(
      "unknown candidate status '{}' (expected ok, compile_error, launch_error, verify_failed or "
      "timeout)",
      text));
}

std::string_view to_string(ServedBy served_by) {
  switch (served_by) {
    case ServedBy::user_db:
      return "user_db";
    case ServedBy::shipped_db:
      return "shipped_db";
    case ServedBy::nearest_bucket:
      return "nearest_bucket";
    case ServedBy::heuristic:
      return "heuristic";
  }
  return "unknown";
}

void TuningStore::put_best(const TuningResult& result) {
  Statement insert = db_.prepare(fmt::format(
      "INSERT OR REPLACE INTO tuning_best ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, "
      "?11, ?12, ?13)",
      kBestColumns));
  bind_key(insert, result.device, result.template_hash, result.problem);
  insert.bind(8, gen::to_string(result.tile))
      .bind(9, result.time_ms)
      .bind(10, result.tflops)
      .bind(11, result.measured_at)
      .bind(12, result.method)
      .bind(13, result.source)
      .run();
  delete_rows(db_, "tuning_best", result.device, HashMatch::other, result.template_hash,
              result.problem, nullptr);
}

MergeCounts TuningStore::merge(const std::vector<TuningResult>& results,
                               const std::vector<TuningCandidate>& candidates) {
  Database::Transaction transaction(db_);
  MergeCounts counts;
  for (const TuningResult& result : results) {
    const std::optional<TuningResult> stored = best(result.device, result.problem);
    if (!stored || preference(result) < preference(*stored)) {
      put_best(result);
      ++counts.results_kept;
    } else {
      ++counts.results_slower;
    }
  }
  for (const TuningCandidate& candidate : candidates) put_candidate(candidate);
  counts.candidates = static_cast<std::int64_t>(candidates.size());
  transaction.commit();
  return counts;
}

void TuningStore::put_candidate(const TuningCandidate& candidate) {
  Statement insert = db_.prepare(
      "INSERT OR REPLACE INTO tuning_candidates (device_name, arch, sm_count, template_hash, "
      "spec, seqlen_q_bucket, seqlen_k_bucket, tile, status, time_ms, tflops, message, "
      "measured_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)");
  bind_key(insert, candidate.device, candidate.template_hash, candidate.problem);
  insert.bind(8, gen::to_string(candidate.tile)).bind(9, to_string(candidate.status));
  if (candidate.time_ms) {
    insert.bind(10, *candidate.time_ms);
  } else {
    insert.bind_null(10);
  }
  if (candidate.tflops) {
    insert.bind(11, *candidate.tflops);
  } else {
    insert.bind_null(11);
  }
  insert.bind(12, candidate.message).bind(13, candidate.measured_at).run();
  delete_rows(db_, "tuning_candidates", candidate.device, HashMatch::other, candidate.template_hash,
              candidate.problem, &candidate.tile);
}

std::optional<TuningResult> TuningStore::best(const DeviceKey& device, const ProblemKey& problem) {
  Statement select = db_.prepare(fmt::format(
      "SELECT {} FROM tuning_best WHERE device_name = ?1 AND arch = ?2 AND sm_count = ?3 AND "
      "spec = ?4 AND seqlen_q_bucket = ?5 AND seqlen_k_bucket = ?6",
      kBestColumns));
  select.bind(1, device.name)
      .bind(2, device.arch)
      .bind(3, device.sm_count)
      .bind(4, problem.spec)
      .bind(5, problem.seqlen_q_bucket)
      .bind(6, problem.seqlen_k_bucket);
  const std::vector<TuningResult> rows = read_all_best(select);
  const auto preferred =
      std::min_element(rows.begin(), rows.end(),
                       [](const auto& a, const auto& b) { return preference(a) < preference(b); });
  if (preferred == rows.end()) return std::nullopt;
  return *preferred;
}

std::vector<TuningResult> TuningStore::best_for(const std::string& arch, const std::string& spec) {
  Statement select = db_.prepare(
      fmt::format("SELECT {} FROM tuning_best WHERE arch = ?1 AND spec = ?2", kBestColumns));
  select.bind(1, arch).bind(2, spec);
  return read_all_best(select);
}

std::vector<TuningResult> TuningStore::all_best() {
  Statement select = db_.prepare(
      fmt::format("SELECT {} FROM tuning_best ORDER BY device_name, arch, spec, seqlen_q_bucket, "
                  "seqlen_k_bucket",
                  kBestColumns));
  return read_all_best(select);
}

std::vector<TuningCandidate> TuningStore::all_candidates() {
  Statement select = db_.prepare(
      "SELECT device_name, arch, sm_count, template_hash, spec, seqlen_q_bucket, "
      "seqlen_k_bucket, tile, status, time_ms, tflops, message, measured_at FROM "
      "tuning_candidates ORDER BY device_name, arch, spec, seqlen_q_bucket, seqlen_k_bucket, "
      "tile");
  std::vector<TuningCandidate> rows;
  while (select.step()) {
    TuningCandidate candidate;
    candidate.device = {select.text(0), select.text(1), static_cast<int>(select.integer(2))};
    candidate.template_hash = select.text(3);
    candidate.problem = {select.text(4), static_cast<int>(select.integer(5)),
                         static_cast<int>(select.integer(6))};
    candidate.tile = gen::parse_tile(select.text(7));
    candidate.status = parse_candidate_status(select.text(8));
    if (!select.is_null(9)) candidate.time_ms = select.real(9);
    if (!select.is_null(10)) candidate.tflops = select.real(10);
    candidate.message = select.text(11);
    candidate.measured_at = select.text(12);
    rows.push_back(std::move(candidate));
  }
  return rows;
}

std::int64_t TuningStore::prune_stale() {
  const std::vector<TuningResult> results = all_best();
  const std::vector<TuningCandidate> candidates = all_candidates();
  Database::Transaction transaction(db_);
  std::int64_t removed = 0;
  for (const TuningResult& row : results) {
    if (is_fresh(row)) continue;
    removed += delete_rows(db_, "tuning_best", row.device, HashMatch::same, row.template_hash,
                           row.problem, nullptr);
  }
  for (const TuningCandidate& row : candidates) {
    if (is_fresh(row)) continue;
    removed += delete_rows(db_, "tuning_candidates", row.device, HashMatch::same, row.template_hash,
                           row.problem, &row.tile);
  }
  transaction.commit();
  return removed;
}

TileChoice choose_tile(const std::vector<TuningResult>& user_rows,
                       const std::vector<TuningResult>& shipped_rows, const DeviceKey& device,
                       const gen::KernelSpec& spec, int max_seqlen_q, int max_seqlen_k,
                       const policy::Target& target) {
  const ProblemKey problem = problem_key(spec, max_seqlen_q, max_seqlen_k);
  std::map<std::string, std::string> source_hashes;  // by tile, for this spec
  const auto fresh = [&](const TuningResult& row) {
    auto [entry, added] = source_hashes.try_emplace(gen::to_string(row.tile));
    if (added) entry->second = kernel_source_hash(problem, row.tile);
    return same_sources(row.template_hash, entry->second);
  };
  std::vector<std::string> skipped;
  const auto usable = [&](const TuningResult& row, bool stale) {
    if (row.device.arch != target.arch || row.problem.spec != problem.spec || fresh(row) == stale) {
      return false;
    }
    if (const std::string why = policy::rejection(spec, row.tile, target); !why.empty()) {
      std::string note = fmt::format("stored tile {} for {} rejected: {}", gen::to_string(row.tile),
                                     row.device.name, why);
      if (std::find(skipped.begin(), skipped.end(), note) == skipped.end()) {
        skipped.push_back(std::move(note));
      }
      return false;
    }
    return true;
  };
  const auto with_skipped = [&](std::string reason) {
    for (const std::string& note : skipped) reason += fmt::format("; {}", note);
    return reason;
  };

  // The exact rows of each source, then the nearest bucket, over the fresh or the stale rows.
  const auto lookup = [&](bool stale) -> std::optional<TileChoice> {
    const std::string_view staleness =
        stale ? ", stale (measured on kernel sources that have changed since)" : "";
    for (const auto& [rows, served_by, label] :
         {std::tuple{&user_rows, ServedBy::user_db, "user database"},
          std::tuple{&shipped_rows, ServedBy::shipped_db, "shipped database"}}) {
      for (const TuningResult& row : *rows) {
        if (row.device == device && row.problem == problem && usable(row, stale)) {
          return TileChoice{row.tile, served_by,
                            with_skipped(fmt::format("{}{}: tuned for this device and problem ({})",
                                                     label, staleness, describe(row))),
                            stale};
        }
      }
    }
    const TuningResult* nearest = nullptr;
    // Lower is better: bucket distance, then another device, then shipped over user, then time.
    std::tuple<int, bool, bool, double> nearest_rank;
    for (const auto& [rows, shipped] :
         {std::pair{&user_rows, false}, std::pair{&shipped_rows, true}}) {
      for (const TuningResult& row : *rows) {
        if (!usable(row, stale)) continue;
        const auto rank = std::tuple{bucket_distance(row.problem, problem), !(row.device == device),
                                     shipped, row.time_ms};
        if (nearest == nullptr || rank < nearest_rank) {
          nearest = &row;
          nearest_rank = rank;
        }
      }
    }
    if (nearest == nullptr) return std::nullopt;
    return TileChoice{
        nearest->tile, ServedBy::nearest_bucket,
        with_skipped(fmt::format(
            "nearest tuned sequence-length bucket{}: q {} k {} instead of q {} k {} ({})",
            staleness, nearest->problem.seqlen_q_bucket, nearest->problem.seqlen_k_bucket,
            problem.seqlen_q_bucket, problem.seqlen_k_bucket, describe(*nearest))),
        stale};
  };

  for (const bool stale : {false, true}) {
    if (std::optional<TileChoice> choice = lookup(stale)) return *std::move(choice);
  }
  const policy::DefaultChoice fallback = policy::default_tile(spec, target);
  return {fallback.tile, ServedBy::heuristic,
          with_skipped(fmt::format("heuristic default: {}", fallback.reason))};
}

}  // namespace sigattn::cache
