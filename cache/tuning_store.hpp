// Tuning results in the database and the tile lookup chain of the runtime. A result is keyed by
// the device (name, arch, SM count), the template hash and the problem (canonical spec string and
// sequence-length buckets); every candidate tried is kept with its status so that tuning runs
// can resume and be audited.
#pragma once

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

  bool operator==(const DeviceKey&) const = default;
};

// Sequence lengths are bucketed to the next power of two: tile choice changes with the order of
// magnitude of the length (how many row blocks fill the GPU, how long the K/V loop runs), not
// with each value.
int seqlen_bucket(int max_seqlen);

struct ProblemKey {
  std::string spec;  // canonical spec string, e.g. "fwd.bf16.d128.dense.causal.nosmod.fast.x128"
  int seqlen_q_bucket = 0;
  int seqlen_k_bucket = 0;

  bool operator==(const ProblemKey&) const = default;
};

ProblemKey problem_key(const gen::KernelSpec& spec, int max_seqlen_q, int max_seqlen_k);

struct TuningResult {
  DeviceKey device;
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
  std::string template_hash;
  ProblemKey problem;
  gen::TileConfig tile;
  CandidateStatus status = CandidateStatus::ok;
  std::optional<double> time_ms;
  std::optional<double> tflops;
  std::string message;  // the error for a failed candidate
  std::string measured_at;
};

struct MergeCounts {
  std::int64_t results_kept = 0;    // new or faster than the stored result
  std::int64_t results_slower = 0;  // not kept: the stored result is at least as fast
  std::int64_t candidates = 0;
};

class TuningStore {
 public:
  explicit TuningStore(Database& db) : db_(db) {}

  // Stores the result as the best for its key, replacing what was there.
  void put_best(const TuningResult& result);
  // In one transaction: for each result, keeps the faster of it and the stored one (with the
  // kept row's provenance); inserts or replaces each candidate.
  MergeCounts merge(const std::vector<TuningResult>& results,
                    const std::vector<TuningCandidate>& candidates);
  // Inserts or replaces the candidate (same key and tile).
  void put_candidate(const TuningCandidate& candidate);

  std::optional<TuningResult> best(const DeviceKey& device, const std::string& template_hash,
                                   const ProblemKey& problem);
  // Best results of one arch, template hash and spec, for any device and bucket.
  std::vector<TuningResult> best_for(const std::string& arch, const std::string& template_hash,
                                     const std::string& spec);
  std::vector<TuningResult> all_best();
  std::vector<TuningCandidate> all_candidates();
  // Deletes tuning rows (best and candidates) of other template hashes; returns how many.
  std::int64_t prune_other_templates(const std::string& template_hash);

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
};

// The lookup chain: the user's result for exactly this device and problem, then the shipped one,
// then the nearest sequence-length bucket of the same spec on the same arch (preferring the same
// device, then the user's rows), then the heuristic default. Rows of another template hash are
// never used, and a stored tile that the constraints reject for the target is skipped, with the
// reason appended. Pure: the caller passes the rows (best_for() of each source).
TileChoice choose_tile(const std::vector<TuningResult>& user_rows,
                       const std::vector<TuningResult>& shipped_rows, const DeviceKey& device,
                       const std::string& template_hash, const gen::KernelSpec& spec,
                       int max_seqlen_q, int max_seqlen_k, const policy::Target& target);

}  // namespace sigattn::cache
