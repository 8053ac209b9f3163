// The tuning loop: for each task, the candidate tiles of its spec, a strategy that decides which to
// measure (exhaustive, random with a budget, or a cost model followed by successive halving), the
// finalists re-timed together with the heuristic default so that noise does not pick the winner,
// and every finished candidate committed at once through cache::TuningStore, so that a killed run
// resumes where it stopped. Measurement is behind tune::Measurer, so all of this runs on the CPU
// in tests.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cache/database.hpp"
#include "cache/tuning_store.hpp"
#include "generator/tile_policy.hpp"
#include "tuner/measurer.hpp"
#include "tuner/shapes.hpp"

namespace sigattn::tune {

enum class Strategy { exhaustive, random, model };
std::string_view to_string(Strategy strategy);
// Throws std::invalid_argument naming the known strategies.
Strategy parse_strategy(std::string_view text);

struct TuneOptions {
  Strategy strategy = Strategy::model;
  int repetitions = 30;    // timed repetitions of a full measurement
  int finalists = 3;       // the best this many are re-timed with twice the repetitions
  int random_budget = 12;  // candidates measured by the random strategy (the default included)
  // The model strategy keeps this share of the candidates, best predicted first, for successive
  // halving (at least finalists + 1 of them).
  double model_keep = 0.5;
  std::uint64_t seed = 1;  // the random strategy's draws
  // Fresh recorded candidates of the same device and problem are taken as measured.
  bool resume = true;
};

// The cost model: a relative predicted time of one tile (lower is better), from the waves of CTAs
// over the SMs at the occupancy shared memory and threads allow, and the shared-memory traffic per
// tensor-core operation that the tile's aspect implies. Only the order matters.
double predicted_cost(const Task& task, const gen::TileConfig& tile, int sm_count,
                      const policy::Target& target);

// The candidates of a task in the order a strategy considers them: the cost model's ranking.
std::vector<gen::TileConfig> ranked_candidates(const Task& task, int sm_count,
                                               const policy::Target& target);

// Persistence of candidates and results through cache::TuningStore; thread-safe.
class CandidateLog {
 public:
  explicit CandidateLog(cache::Database& db) : store_(db) {}
  // The candidates recorded for the device and problem that are fresh (cache::is_fresh).
  std::vector<cache::TuningCandidate> recorded(const cache::DeviceKey& device,
                                               const cache::ProblemKey& problem);
  void record(const cache::TuningCandidate& candidate);
  void record_best(const cache::TuningResult& result);

 private:
  std::mutex mutex_;
  cache::TuningStore store_;
};

// One candidate as the run knows it: measured now or taken from the database.
struct CandidateRecord {
  gen::TileConfig tile;
  Measurement measurement;
  bool resumed = false;  // recorded by an earlier run, not measured now
};

struct ProblemOutcome {
  Task task;
  cache::DeviceKey device;
  std::optional<gen::TileConfig> winner;
  std::optional<Timing> best;       // the winner's re-timed measurement
  std::optional<Timing> heuristic;  // the heuristic default's, re-timed beside the finalists
  gen::TileConfig heuristic_tile;
  int candidates = 0;  // allowed by the constraints
  int measured = 0;    // measurements made in this run (finalist re-timing included)
  int resumed = 0;     // taken from the database
  int failures = 0;    // candidates with a status other than ok
  int spilling = 0;    // compiled with register spills (ranked last)
  double seconds = 0.0;
  std::string error;  // the task itself failed (TaskError), or no candidate passed
  std::map<std::string, CandidateRecord> records;  // by tile string
};

// Hears about progress; called from the threads that run tasks.
class ProgressListener {
 public:
  virtual ~ProgressListener() = default;
  // The candidates the strategy plans to consider for a task.
  virtual void planned(const Task&, int /*candidates*/) {}
  virtual void candidate_done(const Task&, const cache::DeviceKey&, const CandidateRecord&) {}
  virtual void problem_done(const ProblemOutcome&) {}
};

// Tunes one task on one device. Without a log nothing is read or written (strategy comparisons).
ProblemOutcome tune_problem(const Task& task, const cache::DeviceKey& device,
                            const policy::Target& target, Measurer& measurer, CandidateLog* log,
                            const TuneOptions& options, Clock& clock, ProgressListener* listener);

// One device of a run: its key, target and measurer.
struct DeviceSlot {
  cache::DeviceKey device;
  policy::Target target;
  Measurer* measurer = nullptr;
};

// Runs every task, each device taking the next untaken task on its own thread. Outcomes come back
// in task order.
std::vector<ProblemOutcome> run_tasks(const std::vector<Task>& tasks,
                                      const std::vector<DeviceSlot>& devices, CandidateLog* log,
                                      const TuneOptions& options, Clock& clock,
                                      ProgressListener* listener);

// The tasks of shard `index` of `count`: every count-th task from index on, in a fixed order, so
// that N machines given 0/N .. N-1/N cover every task once.
std::vector<Task> shard(const std::vector<Task>& tasks, int index, int count);

// One strategy's result on one task in a comparison run.
struct StrategyComparison {
  Strategy strategy = Strategy::exhaustive;
  std::optional<gen::TileConfig> winner;
  std::optional<double> winner_ms;  // as this strategy measured it
  // The winner's time in the exhaustive run over the exhaustive best: 1.0 means it found the best.
  std::optional<double> ratio_to_best;
  int measured = 0;
  double seconds = 0.0;
};

// Runs exhaustive (recorded through `log`, resumable), then random and model (not recorded), on
// the same measurer, and rates each winner by its time in the exhaustive run.
std::vector<StrategyComparison> compare_strategies(const Task& task, const cache::DeviceKey& device,
                                                   const policy::Target& target, Measurer& measurer,
                                                   CandidateLog* log, const TuneOptions& options,
                                                   Clock& clock, ProgressListener* listener);

}  // namespace sigattn::tune
