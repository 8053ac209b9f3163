// Tuning results in the database and the tile lookup chain of the runtime. A result is keyed by
// the device (name, arch, SM count) and the problem (canonical spec string and sequence-length
// buckets), and records the source hash of the kernel it was measured on; every candidate tried is
// kept with its status so that tuning runs can resume and be audited. A row whose kernel sources
// changed since is stale: kept, served as a hint after every fresh row, and re-measured by
// `sigattn tune --stale`.
#pragma once

#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cache/database.hpp"
#include "generator/kernel_spec.hpp"
#include "generator/tile_policy.hpp"

namespace sigattn::cache {

struct DeviceKey {
  std::string name;  // as the driver reports it, e.g. "NVIDIA H200"
  std::string arch;  // "sm_90a"
  int sm_count = 0;

  auto operator<=>(const DeviceKey&) const = default;
};

// Sequence lengths are bucketed to the next power of two: tile choice changes with the order of
// magnitude of the length (how many row blocks fill the GPU, how long the K/V loop runs), not
// with each value.
int seqlen_bucket(int max_seqlen);

struct ProblemKey {
  std::string spec;  // canonical spec string, e.g. "fwd.bf16.d128.dense.causal.nosmod.fast.x128"
  // Decode problems: the bucket of policy::decode_lookup_units (batch x heads_kv x seqlen_q) in
  // place of the query length, and of the cache capacity as the key length.
  int seqlen_q_bucket = 0;
  int seqlen_k_bucket = 0;

  bool operator==(const ProblemKey&) const = default;
};

ProblemKey problem_key(const gen::KernelSpec& spec, int max_seqlen_q, int max_seqlen_k);

struct TuningResult {
  DeviceKey device;
  // gen::kernel_source_hash of the problem's spec with this tile when it was measured. The name
  // stays from the time it hashed all templates: database columns and JSON fields keep it.
  std::string template_hash;
  ProblemKey problem;
  gen::TileConfig tile;
  double time_ms = 0.0;
  double tflops = 0.0;
  std::string measured_at;  // ISO 8601, UTC
  std::string method;       // how it was measured (tool, repetitions, strategy)
  std::string source;       // where the row came from (host, imported file, merged database)
};

enum class CandidateStatus { ok, compile_error, launch_error, verify_failed, timeout };
std::string_view to_string(CandidateStatus status);
// Throws std::invalid_argument for an unknown status.
CandidateStatus parse_candidate_status(std::string_view text);

struct TuningCandidate {
  DeviceKey device;
  std::string template_hash;  // as in TuningResult
  ProblemKey problem;
  gen::TileConfig tile;
  CandidateStatus status = CandidateStatus::ok;
  std::optional<double> time_ms;
  std::optional<double> tflops;
  std::string message;  // the error for a failed candidate
  std::string measured_at;
};

// The source hash of the kernel that `tile` names for the problem's spec today, or empty when the
// spec does not parse or the generator refuses the tile.
std::string kernel_source_hash(const ProblemKey& problem, const gen::TileConfig& tile);

// Whether a row was measured on the sources its kernel is built from today.
bool is_fresh(const TuningResult& row);
bool is_fresh(const TuningCandidate& row);

struct FreshnessCounts {
  std::int64_t fresh = 0;
  std::int64_t stale = 0;
};
FreshnessCounts count_freshness(const std::vector<TuningResult>& rows);

struct MergeCounts {
  std::int64_t results_kept = 0;    // new, fresher than or as fresh and faster than the stored one
  std::int64_t results_slower = 0;  // not kept: the stored one is fresher, or as fresh and as fast
  std::int64_t candidates = 0;
};

class TuningStore {
 public:
  explicit TuningStore(Database& db) : db_(db) {}

  // Stores the result as the best for its device and problem, replacing what was there (of any
  // source hash).
  void put_best(const TuningResult& result);
  // In one transaction: for each result, keeps the better of it and the stored one (fresh before
  // stale, then the faster), with the kept row's provenance; inserts or replaces each candidate.
  MergeCounts merge(const std::vector<TuningResult>& results,
                    const std::vector<TuningCandidate>& candidates);
  // Inserts the candidate, replacing the row of the same device, problem and tile (of any source
  // hash).
  void put_candidate(const TuningCandidate& candidate);

  // The result for a device and problem; where a database written by an older sigattn holds
  // several of other source hashes, the fresh one before the stale, then the faster.
  std::optional<TuningResult> best(const DeviceKey& device, const ProblemKey& problem);
  // Best results of one arch and spec, for any device, bucket and source hash.
  std::vector<TuningResult> best_for(const std::string& arch, const std::string& spec);
  std::vector<TuningResult> all_best();
  std::vector<TuningCandidate> all_candidates();
  // Deletes the stale tuning rows (results and candidates); returns how many.
  std::int64_t prune_stale();

 private:
  Database& db_;
};

// Which level of the lookup chain chose a tile.
enum class ServedBy { user_db, shipped_db, nearest_bucket, heuristic };
std::string_view to_string(ServedBy served_by);

struct TileChoice {
  gen::TileConfig tile;
  ServedBy served_by = ServedBy::heuristic;
  std::string reason;
  // Served from a stale row: measured on kernel sources that have changed since, so a hint.
  bool stale = false;
};

// The lookup chain: the user's result for exactly this device and problem, then the shipped one,
// then the nearest sequence-length bucket of the same spec on the same arch (preferring the same
// device, then the user's rows), all over fresh rows; then the same three over stale rows; then
// the heuristic default. A stored tile that the constraints reject for the target is skipped,
// with the reason appended. Pure: the caller passes the rows (best_for() of each source).
TileChoice choose_tile(const std::vector<TuningResult>& user_rows,
                       const std::vector<TuningResult>& shipped_rows, const DeviceKey& device,
                       const gen::KernelSpec& spec, int max_seqlen_q, int max_seqlen_k,
                       const policy::Target& target);

}  // namespace sigattn::cache
