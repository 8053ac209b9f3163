// The `db` subcommands over cache/: a table of tuning results (fresh or stale), JSON export
// and strictly validated import, merging another database (the fresher, then the faster result
// wins and keeps its provenance), an integrity check of every row, and pruning of stale or unused
// binaries and of stale tuning rows.
#include "cli/db_commands.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sigattn/sigattn.hpp>

#include "cache/binary_store.hpp"
#include "cache/database.hpp"
#include "cache/json_io.hpp"
#include "cache/tuning_store.hpp"
#include "generator/generator.hpp"
#include "generator/template_store.hpp"

namespace sigattn::cli {
namespace {

constexpr std::int64_t kSecondsPerDay = 86400;

// The database at path, which must exist. Inspecting commands open it read_only: they write
// nothing, work where this user may only read, and read an older schema from a migrated copy.
cache::Database open_existing(const std::string& path, cache::OpenMode mode) {
  if (!std::filesystem::exists(path)) {
    throw Error(Status::invalid_argument,
                fmt::format("no database at {} (nothing has been compiled or tuned there yet; "
                            "choose another with --db or SIGATTN_DB)",
                            path));
  }
  return cache::Database(path, mode);
}

int show(const std::string& path) {
  if (!std::filesystem::exists(path)) {
    fmt::print("database: {} (does not exist yet)\n", path);
    return 0;
  }
  cache::Database db = open_existing(path, cache::OpenMode::read_only);
  cache::BinaryStore binaries(db);
  cache::TuningStore tuning(db);
  const cache::BinarySummary summary = binaries.summary();
  fmt::print("database: {} (schema {})\n", path, db.schema_version());
  fmt::print("template hash: {}, generator version {}\n", gen::template_hash(),
             gen::kGeneratorVersion);
  fmt::print("compiled kernels: {} ({:.1f} MiB), served in place of NVRTC {} times\n",
             summary.count, static_cast<double>(summary.bytes) / (1024.0 * 1024.0), summary.served);
  const std::vector<cache::TuningResult> results = tuning.all_best();
  const cache::FreshnessCounts freshness = cache::count_freshness(results);
  fmt::print("tuning results: {} ({} fresh, {} stale)\n", results.size(), freshness.fresh,
             freshness.stale);
  if (!results.empty()) {
    fmt::print("{:<20} {:<7} {:>4} {:<48} {:>7} {:>7} {:<18} {:>9} {:>7} {:<20} {}\n", "device",
               "arch", "SMs", "spec", "q", "k", "tile", "ms", "TFLOPS", "measured", "state");
    for (const cache::TuningResult& r : results) {
      fmt::print("{:<20} {:<7} {:>4} {:<48} {:>7} {:>7} {:<18} {:>9.4f} {:>7.1f} {:<20} {}\n",
                 r.device.name, r.device.arch, r.device.sm_count, r.problem.spec,
                 r.problem.seqlen_q_bucket, r.problem.seqlen_k_bucket, gen::to_string(r.tile),
                 r.time_ms, r.tflops, r.measured_at,
                 cache::is_fresh(r) ? "fresh" : "stale (kernel sources changed since)");
    }
  }
  std::map<std::string, int> by_status;
  for (const cache::TuningCandidate& c : tuning.all_candidates()) {
    ++by_status[std::string(cache::to_string(c.status))];
  }
  if (!by_status.empty()) {
    std::string counts;
    for (const auto& [status, count] : by_status) {
      counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", count, status);
    }
    fmt::print("candidates tried: {}\n", counts);
  }
  return 0;
}

int export_json(const std::string& path, const std::string& file) {
  cache::Database db = open_existing(path, cache::OpenMode::read_only);
  cache::TuningStore tuning(db);
  const std::string text = cache::to_json(cache::export_document(tuning)).dump(2) + "\n";
  if (file.empty() || file == "-") {
    fmt::print("{}", text);
    return 0;
  }
  std::ofstream out(file);
  out << text;
  out.close();
  if (!out) {
    throw Error(Status::internal_error, fmt::format("cannot write {}", file));
  }
  fmt::print(stderr, "exported to {}\n", file);
  return 0;
}

void print_merge(const cache::MergeCounts& counts) {
  fmt::print(
      "results kept: {} (new, fresher or faster), not kept: {} (stored one fresher or as fast), "
      "candidates: {}\n",
      counts.results_kept, counts.results_slower, counts.candidates);
}

int import_json(const std::string& path, const std::string& file) {
  // Everything is validated before the database is opened, so a bad file changes nothing.
  cache::TuningDocument document;
  try {
    document = cache::read_tuning_file(file);
  } catch (const Error& error) {
    throw Error(error.status(), fmt::format("db import: {}", error.what()));
  }
  for (cache::TuningResult& result : document.results) {
    if (result.source.empty()) result.source = fmt::format("imported from {}", file);
  }
  cache::Database db(path, cache::OpenMode::read_write);
  cache::TuningStore tuning(db);
  print_merge(tuning.merge(document.results, document.candidates));
  return 0;
}

int merge(const std::string& path, const std::string& source_path) {
  if (!std::filesystem::exists(source_path)) {
    throw Error(Status::invalid_argument,
                fmt::format("db merge: no database at {} to merge", source_path));
  }
  // Read-only: a shard of an older sigattn is read through a migrated copy and left as it is.
  cache::Database source(source_path, cache::OpenMode::read_only);
  cache::TuningStore source_tuning(source);
  std::vector<cache::TuningResult> results = source_tuning.all_best();
  for (cache::TuningResult& result : results) {
    if (result.source.empty()) result.source = fmt::format("merged from {}", source_path);
  }
  const std::vector<cache::TuningCandidate> candidates = source_tuning.all_candidates();
  cache::Database db(path, cache::OpenMode::read_write);
  cache::TuningStore tuning(db);
  print_merge(tuning.merge(results, candidates));
  return 0;
}

int verify(const std::string& path) {
  std::vector<std::string> problems;
  try {
    cache::Database db = open_existing(path, cache::OpenMode::read_only);
    for (const std::string& problem : db.integrity_problems()) {
      problems.push_back(fmt::format("sqlite: {}", problem));
    }
    cache::BinaryStore binaries(db);
    for (const cache::BinaryRow& row : binaries.verify()) {
      problems.push_back(fmt::format("binary {} ({}, nvrtc {}): {}", row.variant, row.arch,
                                     row.nvrtc_version, row.problem));
    }
    cache::TuningStore tuning(db);
    for (const cache::TuningResult& r : tuning.all_best()) {
      const std::string why = policy::rejection(gen::parse_spec(r.problem.spec), r.tile,
                                                policy::target_for_arch(r.device.arch));
      if (!why.empty()) {
        problems.push_back(fmt::format("tuning result {} {} on {}: tile rejected: {}",
                                       r.problem.spec, gen::to_string(r.tile), r.device.name, why));
      }
    }
    const cache::BinarySummary summary = binaries.summary();
    fmt::print("checked {} compiled kernels and {} tuning results in {}\n", summary.count,
               tuning.all_best().size(), path);
  } catch (const cache::DatabaseError& error) {
    problems.push_back(error.what());
  }
  for (const std::string& problem : problems) fmt::print("problem: {}\n", problem);
  fmt::print("{}\n", problems.empty() ? "ok"
                                      : fmt::format("{} problem{}", problems.size(),
                                                    problems.size() == 1 ? "" : "s"));
  return problems.empty() ? 0 : 1;
}

int prune(const std::string& path, std::optional<int> older_than_days, bool tuning_rows) {
  cache::Database db = open_existing(path, cache::OpenMode::read_write);
  cache::BinaryStore binaries(db);
  std::optional<std::int64_t> max_age;
  if (older_than_days) max_age = std::int64_t{*older_than_days} * kSecondsPerDay;
  const std::vector<cache::BinaryRow> pruned =
      binaries.prune(gen::template_hash(), gen::kGeneratorVersion, max_age);
  for (const cache::BinaryRow& row : pruned) {
    fmt::print("removed binary {} ({}, nvrtc {}): {}\n", row.variant, row.arch, row.nvrtc_version,
               row.problem);
  }
  fmt::print("removed {} compiled kernels\n", pruned.size());
  if (tuning_rows) {
    const std::int64_t removed = cache::TuningStore(db).prune_stale();
    fmt::print("removed {} stale tuning rows\n", removed);
  }
  return 0;
}

}  // namespace

DbCommands::DbCommands(CLI::App& app) {
  db_ = app.add_subcommand("db", "The user database: compiled kernels and tuning results");
  db_->require_subcommand(1);
  show_ = db_->add_subcommand("show", "Print the tuning results as a table, each fresh or stale");
  export_ = db_->add_subcommand("export", "Write the tuning results as JSON");
  export_->add_option("--output,-o", export_file_, "File to write (default: stdout)");
  import_ = db_->add_subcommand(
      "import",
      "Add tuning results from a JSON file (validated first; the fresher, then the faster result "
      "wins)");
  import_->add_option("FILE", import_file_, "JSON file in the format of db export")->required();
  merge_ = db_->add_subcommand(
      "merge",
      "Add the tuning results of another database (the fresher, then the faster result wins)");
  merge_->add_option("DATABASE", merge_source_, "The database to read (not modified)")->required();
  verify_ = db_->add_subcommand(
      "verify", "Check the file, every compiled kernel's integrity hash and every stored tile");
  prune_ = db_->add_subcommand(
      "prune",
      "Remove compiled kernels that can never be used again (other template source or "
      "generator version)");
  prune_
      ->add_option("--older-than", prune_older_than_days_,
                   "Also remove compiled kernels not used for this many days")
      ->check(CLI::Range(0, 36500));
  prune_->add_flag("--tuning", prune_tuning_,
                   "Also remove stale tuning results and candidates (measured on kernel sources "
                   "that have changed since)");
}

int DbCommands::run(const std::string& path) {
  if (show_->parsed()) return show(path);
  if (export_->parsed()) return export_json(path, export_file_);
  if (import_->parsed()) return import_json(path, import_file_);
  if (merge_->parsed()) return merge(path, merge_source_);
  if (verify_->parsed()) return verify(path);
  return prune(path, prune_older_than_days_, prune_tuning_);
}

}  // namespace sigattn::cli
