// The tuning loop on a fake device and a fake clock: what each strategy measures, that failures
// and spilling kernels never win, that every candidate is committed at once (a run killed half way
// resumes without measuring again), the finalists' re-timing beside the heuristic default, several
// devices sharing a task list, and the strategy comparison.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "cache/database.hpp"
#include "generator/generator.hpp"
#include "tuner/tuner.hpp"

namespace sigattn::tune {
namespace {

using cache::CandidateStatus;

const cache::DeviceKey kDevice{"Fake GPU", "sm_90a", 132};

// Simulated device: each tile has a true time (ms); some fail or spill. The clock advances by
// what a measurement would cost on a GPU.
class FakeClock : public Clock {
 public:
  double seconds() override { return now; }
  double now = 0.0;
};

// Thrown by the fake to stand for a SIGKILL of the tuning process.
struct Killed {};

class FakeMeasurer : public Measurer {
 public:
  explicit FakeMeasurer(FakeClock& clock) : clock_(clock) {}

  std::map<std::string, double> times;  // true median per tile string
  std::map<std::string, CandidateStatus> failing;
  std::set<std::string> spilling;
  std::map<std::string, int> measured;  // measurements per tile
  int kill_after = -1;                  // measurements before Killed is thrown; -1: never
  int tasks_begun = 0;

  void begin_task(const Task&, const std::vector<gen::TileConfig>&) override { ++tasks_begun; }

  Measurement measure(const gen::TileConfig& tile, const MeasureRequest& request) override {
    if (kill_after == 0) throw Killed{};
    if (kill_after > 0) --kill_after;
    const std::string name = gen::to_string(tile);
    ++measured[name];
    Measurement m;
    if (spilling.contains(name)) {
      m.compile.spill_store_bytes = 64;
      if (request.skip_if_spills) {
        m.skipped_spilling = true;
        return m;
      }
    }
    if (const auto f = failing.find(name); f != failing.end()) {
      m.status = f->second;
      m.message = "fake failure";
      return m;
    }
    const double ms = times.contains(name) ? times.at(name) : 1.0;
    clock_.now += ms * 1e-3 * request.repetitions + 0.5;
    m.timing = Timing{request.repetitions, ms, ms * 0.99, ms * 1.02};
    return m;
  }

 private:
  FakeClock& clock_;
};

class TunerStrategy : public ::testing::Test {
 protected:
  TunerStrategy()
      : db_(cache::Database::in_memory()),
        log_(db_),
        task_(tasks_for(parse_shape("fwd.bf16.d64.L1024")).front()),
        target_(policy::target_for_arch("sm_90a")),
        measurer_(clock_) {
    all_ = policy::candidates(task_.spec, target_);
    heuristic_ = policy::default_tile(task_.spec, target_).tile;
    // Times from 2.0 ms down, in enumeration order, so the last candidate is the fastest.
    for (std::size_t i = 0; i < all_.size(); ++i) {
      measurer_.times[gen::to_string(all_[i])] = 2.0 - 0.05 * double(i);
    }
  }

  ProblemOutcome tune(Strategy strategy, CandidateLog* log) {
    TuneOptions options;
    options.strategy = strategy;
    options.repetitions = 10;
    options.random_budget = 5;
    return tune_problem(task_, kDevice, target_, measurer_, log, options, clock_, nullptr);
  }

  std::string fastest() const { return gen::to_string(all_.back()); }

  cache::Database db_;
  CandidateLog log_;
  Task task_;
  policy::Target target_;
  FakeClock clock_;
  FakeMeasurer measurer_;
  std::vector<gen::TileConfig> all_;
  gen::TileConfig heuristic_;
};

TEST_F(TunerStrategy, ExhaustiveMeasuresEverythingAndRecordsIt) {
  ASSERT_GE(all_.size(), 8u);
  const ProblemOutcome outcome = tune(Strategy::exhaustive, &log_);
  ASSERT_TRUE(outcome.winner) << outcome.error;
  EXPECT_EQ(gen::to_string(*outcome.winner), fastest());
  EXPECT_EQ(measurer_.measured.size(), all_.size());
  // The finalists and the heuristic default are timed a second time, with twice the repetitions.
  EXPECT_EQ(measurer_.measured.at(fastest()), 2);
  EXPECT_EQ(measurer_.measured.at(gen::to_string(heuristic_)), 2);
  EXPECT_EQ(outcome.best->repetitions, 20);
  ASSERT_TRUE(outcome.heuristic);
  EXPECT_EQ(log_.recorded(kDevice, task_.problem).size(), all_.size());
  cache::TuningStore store(db_);
  const auto best = store.best(kDevice, task_.problem);
  ASSERT_TRUE(best);
  EXPECT_EQ(gen::to_string(best->tile), fastest());
  EXPECT_DOUBLE_EQ(best->time_ms, measurer_.times.at(fastest()));
  EXPECT_NE(best->method.find("exhaustive"), std::string::npos);
  EXPECT_GT(best->tflops, 0.0);
}

TEST_F(TunerStrategy, FailuresAreRecordedAndNeverWin) {
  measurer_.failing[fastest()] = CandidateStatus::verify_failed;
  measurer_.failing[gen::to_string(all_[all_.size() - 2])] = CandidateStatus::timeout;
  measurer_.failing[gen::to_string(all_[0])] = CandidateStatus::launch_error;
  const ProblemOutcome outcome = tune(Strategy::exhaustive, &log_);
  ASSERT_TRUE(outcome.winner);
  EXPECT_EQ(gen::to_string(*outcome.winner), gen::to_string(all_[all_.size() - 3]));
  EXPECT_EQ(outcome.failures, 3);
  std::map<std::string, CandidateStatus> stored;
  for (const auto& row : log_.recorded(kDevice, task_.problem)) {
    stored[gen::to_string(row.tile)] = row.status;
  }
  EXPECT_EQ(stored.at(fastest()), CandidateStatus::verify_failed);
  EXPECT_EQ(stored.at(gen::to_string(all_[0])), CandidateStatus::launch_error);
}

TEST_F(TunerStrategy, SpillingKernelsAreRankedLast) {
  measurer_.spilling.insert(fastest());
  const ProblemOutcome exhaustive = tune(Strategy::exhaustive, &log_);
  ASSERT_TRUE(exhaustive.winner);
  EXPECT_NE(gen::to_string(*exhaustive.winner), fastest());
  EXPECT_EQ(exhaustive.spilling, 1);
  EXPECT_GE(measurer_.measured.at(fastest()), 2) << "skipped at first, measured at the end";
}

TEST_F(TunerStrategy, NoPassingCandidateMeansNoWinner) {
  for (const auto& tile : all_) measurer_.failing[gen::to_string(tile)] = CandidateStatus::timeout;
  const ProblemOutcome outcome = tune(Strategy::model, &log_);
  EXPECT_FALSE(outcome.winner);
  EXPECT_FALSE(outcome.error.empty());
  cache::TuningStore store(db_);
  EXPECT_FALSE(store.best(kDevice, task_.problem));
}

TEST_F(TunerStrategy, KilledRunResumesWithoutMeasuringAgain) {
  measurer_.kill_after = 5;
  EXPECT_THROW(tune(Strategy::exhaustive, &log_), Killed);
  EXPECT_EQ(log_.recorded(kDevice, task_.problem).size(), 5u) << "each candidate committed at once";
  const std::map<std::string, int> before = measurer_.measured;

  measurer_.kill_after = -1;
  const ProblemOutcome outcome = tune(Strategy::exhaustive, &log_);
  EXPECT_EQ(outcome.resumed, 5);
  for (const auto& [tile, count] : before) {
    // A resumed candidate is measured again only as a finalist.
    EXPECT_LE(measurer_.measured.at(tile) - count, 1) << tile;
  }
  // The rest, then three finalists and the heuristic default (unless it is a finalist).
  EXPECT_GE(outcome.measured, static_cast<int>(all_.size()) - 5 + 3);
  EXPECT_LE(outcome.measured, static_cast<int>(all_.size()) - 5 + 4);
  ASSERT_TRUE(outcome.winner);
  EXPECT_EQ(gen::to_string(*outcome.winner), fastest());

  // Another device, or a candidate measured on other kernel sources, does not count as recorded.
  EXPECT_TRUE(log_.recorded({"Other GPU", "sm_90a", 132}, task_.problem).empty());
  std::vector<cache::TuningCandidate> recorded = log_.recorded(kDevice, task_.problem);
  ASSERT_FALSE(recorded.empty());
  EXPECT_EQ(recorded.front().template_hash,
            gen::kernel_source_hash(gen::Variant{task_.spec, recorded.front().tile}));
  recorded.front().template_hash = "00000000000000000000000000000000";
  log_.record(recorded.front());
  EXPECT_EQ(log_.recorded(kDevice, task_.problem).size(), recorded.size() - 1);
}

TEST_F(TunerStrategy, RandomStaysWithinItsBudget) {
  const ProblemOutcome outcome = tune(Strategy::random, &log_);
  ASSERT_TRUE(outcome.winner);
  EXPECT_LE(measurer_.measured.size(), 5u);
  EXPECT_TRUE(measurer_.measured.contains(gen::to_string(heuristic_)));
  EXPECT_LE(outcome.measured, 5 + 4);
}

TEST_F(TunerStrategy, ModelFindsTheBestWhenTheModelIsRight) {
  // Make the true times follow the cost model: successive halving must then end at its best.
  const std::vector<gen::TileConfig> ranked = ranked_candidates(task_, kDevice.sm_count, target_);
  for (std::size_t i = 0; i < ranked.size(); ++i) {
    measurer_.times[gen::to_string(ranked[i])] = 1.0 + 0.1 * double(i);
  }
  const ProblemOutcome outcome = tune(Strategy::model, nullptr);
  ASSERT_TRUE(outcome.winner);
  EXPECT_EQ(*outcome.winner, ranked.front());
  EXPECT_LT(measurer_.measured.size(), all_.size());
  EXPECT_TRUE(log_.recorded(kDevice, task_.problem).empty()) << "no log, nothing written";
}

TEST_F(TunerStrategy, SeveralDevicesShareTheTasks) {
  FakeMeasurer second(clock_);
  second.times = measurer_.times;
  std::vector<Task> tasks;
  for (const char* shape :
       {"fwd.bf16.d64.L1024", "fwd.bf16.d64.L2048", "fwd.fp16.d64.L1024", "fwd.bf16.d128.L1024"}) {
    tasks.push_back(tasks_for(parse_shape(shape)).front());
  }
  const cache::DeviceKey other{"Fake GPU", "sm_90a", 132};
  TuneOptions options;
  options.strategy = Strategy::random;
  options.repetitions = 3;
  const std::vector<ProblemOutcome> outcomes =
      run_tasks(tasks, {{kDevice, target_, &measurer_}, {other, target_, &second}}, &log_, options,
                clock_, nullptr);
  ASSERT_EQ(outcomes.size(), tasks.size());
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    EXPECT_EQ(outcomes[i].task.name(), tasks[i].name());
    EXPECT_TRUE(outcomes[i].winner) << outcomes[i].error;
  }
  EXPECT_EQ(measurer_.tasks_begun + second.tasks_begun, static_cast<int>(tasks.size()));
}

TEST_F(TunerStrategy, ComparisonRatesWinnersAgainstTheExhaustiveBest) {
  const std::vector<StrategyComparison> rows =
      compare_strategies(task_, kDevice, target_, measurer_, &log_, TuneOptions{}, clock_, nullptr);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].strategy, Strategy::exhaustive);
  ASSERT_TRUE(rows[0].ratio_to_best);
  EXPECT_DOUBLE_EQ(*rows[0].ratio_to_best, 1.0);
  for (const StrategyComparison& row : rows) {
    ASSERT_TRUE(row.ratio_to_best) << to_string(row.strategy);
    EXPECT_GE(*row.ratio_to_best, 1.0);
    EXPECT_GT(row.seconds, 0.0);
  }
  EXPECT_LT(rows[1].measured, rows[0].measured);
}

TEST(TunerCostModel, PrefersFullWavesAndReuse) {
  const Task task = tasks_for(parse_shape("fwd.bf16.d64.L4096")).front();
  const policy::Target target = policy::target_for_arch("sm_90a");
  // Same occupancy class, larger key steps reuse each query tile more.
  EXPECT_LT(predicted_cost(task, {128, 64, 8, 2}, 132, target),
            predicted_cost(task, {128, 32, 8, 2}, 132, target));
  EXPECT_EQ(ranked_candidates(task, 132, target).size(),
            policy::candidates(task.spec, target).size());
  EXPECT_EQ(parse_strategy("model"), Strategy::model);
  EXPECT_THROW(parse_strategy("fast"), std::invalid_argument);
}

TEST(TunerTiming, SummarizeTakesTheMedianAndSpread) {
  const Timing t = summarize({3.0, 1.0, 2.0, 10.0});
  EXPECT_EQ(t.repetitions, 4);
  EXPECT_DOUBLE_EQ(t.median_ms, 2.5);
  EXPECT_DOUBLE_EQ(t.min_ms, 1.0);
  EXPECT_DOUBLE_EQ(t.max_ms, 10.0);
  EXPECT_DOUBLE_EQ(t.spread(), 9.0 / 2.5);
  EXPECT_THROW(summarize({}), std::invalid_argument);
}

// The H200 case: the heuristic tile timed 3.37 ms in one run and 2.99 ms in another; a
// 2.98 ms winner is no speedup over a heuristic whose own timings spread that far.
TEST(TunerTiming, SpeedupIsReportedOnlyBeyondTheSpread) {
  const Timing heuristic = summarize({2.99, 3.37, 3.10});
  const Timing best = summarize({2.97, 2.98, 2.99});
  EXPECT_EQ(significant_speedup(heuristic, best), std::nullopt);
  const Timing tight_heuristic = summarize({3.36, 3.37, 3.38});
  const std::optional<double> speedup = significant_speedup(tight_heuristic, best);
  ASSERT_TRUE(speedup);
  EXPECT_DOUBLE_EQ(*speedup, 3.37 / 2.98);
  // A slower winner (it can win the re-timing by noise) is reported as what it is.
  EXPECT_EQ(significant_speedup(best, best), std::nullopt);
}

// Warm-up after idle: the runs get faster while the clocks ramp up, and timing starts once two
// consecutive windows of runs agree.
TEST(TunerTiming, WarmUpLastsUntilTheRunsStopGettingFaster) {
  std::vector<double> runs;
  // Ramping: each run 5 % faster than the one before.
  for (double ms = 4.0; runs.size() < 12; ms *= 0.95) {
    runs.push_back(ms);
    EXPECT_FALSE(warmed_up(runs)) << runs.size() << " runs";
  }
  // Steady from here on: warm once a whole window of steady runs follows another.
  const double steady = runs.back();
  int steady_runs = 0;
  while (!warmed_up(runs)) {
    runs.push_back(steady * (steady_runs % 2 == 0 ? 1.005 : 0.995));
    ++steady_runs;
    ASSERT_LT(steady_runs, 100);
  }
  EXPECT_GE(steady_runs, kSteadyWindow);
  EXPECT_LE(steady_runs, 2 * kSteadyWindow);
}

TEST(TunerTiming, WarmUpNeedsAMinimumTimeAndStopsAtAMaximum) {
  // Steady from the start but too short to have warmed anything.
  EXPECT_FALSE(warmed_up(std::vector<double>(2 * kSteadyWindow, 0.001)));
  // Never steady (alternating), yet warm-up ends once kMaxWarmupMs have run.
  std::vector<double> jitter;
  double total = 0.0;
  while (!warmed_up(jitter)) {
    jitter.push_back(jitter.size() % 2 == 0 ? 1.0 : 3.0);
    total += jitter.back();
    ASSERT_LE(total, kMaxWarmupMs + 3.0);
  }
  EXPECT_GE(total, kMaxWarmupMs);
}

}  // namespace
}  // namespace sigattn::tune
