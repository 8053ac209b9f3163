// The seam between the tuner's orchestration and the GPU: a Measurer prepares a task and measures
// one candidate tile at a time, returning a Measurement in which every failure is data (a
// CandidateStatus and a message). The real one talks to a worker process (tuner/worker.hpp);
// tests use fakes. A Clock lets tests run the strategies on simulated time.
#pragma once

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cache/tuning_store.hpp"
#include "generator/kernel_spec.hpp"
#include "tuner/shapes.hpp"

namespace sigattn::tune {

// The per-repetition times of one candidate, summarized.
struct Timing {
  int repetitions = 0;
  double median_ms = 0.0;
  double min_ms = 0.0;
  double max_ms = 0.0;
  // (max - min) / median: how much the repetitions disagree.
  double spread() const { return median_ms > 0.0 ? (max_ms - min_ms) / median_ms : 0.0; }
};

// Summarizes raw per-repetition times (at least one).
Timing summarize(std::vector<double> times_ms);

// The winner's speedup over the heuristic default (heuristic median / best median) when the gap
// between the medians exceeds the spread of both timings; nullopt when it does not, since the same
// kernel then times as differently from one run to the next as the two differ.
std::optional<double> significant_speedup(const Timing& heuristic, const Timing& best);

// Whether a candidate is warm after the warm-up runs so far (their times in order). Compiling a
// candidate leaves the GPU idle, and an idle GPU lowers its clocks: warm-up goes on until the runs
// stop getting faster, that is when the median of the last kSteadyWindow runs is within
// kSteadyChange of the median of the kSteadyWindow before (and at least kMinWarmupMs have run), or
// until kMaxWarmupMs have run whatever the runs say.
inline constexpr int kSteadyWindow = 5;
inline constexpr double kSteadyChange = 0.02;
inline constexpr double kMinWarmupMs = 25.0;
inline constexpr double kMaxWarmupMs = 1000.0;
bool warmed_up(const std::vector<double>& run_ms);

// What ptxas reported for the candidate's kernel.
struct CompileInfo {
  int registers = 0;
  int spill_store_bytes = 0;
  int spill_load_bytes = 0;
  bool spills() const { return spill_store_bytes > 0 || spill_load_bytes > 0; }
};

struct MeasureRequest {
  int repetitions = 30;
  // Stop after compiling when the kernel spills: the measurement comes back with
  // skipped_spilling set and nothing timed, so the strategy can rank it last.
  bool skip_if_spills = false;
};

struct Measurement {
  cache::CandidateStatus status = cache::CandidateStatus::ok;
  bool skipped_spilling = false;
  std::optional<Timing> timing;  // set for status ok unless skipped_spilling
  CompileInfo compile;
  std::string message;  // what failed, and how
};

// A task the measurer cannot set up at all (inputs do not fit, the worker cannot start): the
// whole problem fails, the run goes on with the next.
class TaskError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Measurer {
 public:
  virtual ~Measurer() = default;
  // Prepares the task (inputs, reference) and may start compiling `tiles` in the background.
  // Throws TaskError.
  virtual void begin_task(const Task& task, const std::vector<gen::TileConfig>& tiles) = 0;
  // Compiles (unless done), verifies against the reference (once per tile and task) and times
  // the candidate. Never throws for a candidate's failure.
  virtual Measurement measure(const gen::TileConfig& tile, const MeasureRequest& request) = 0;
};

class Clock {
 public:
  virtual ~Clock() = default;
  virtual double seconds() = 0;
};

class SteadyClock : public Clock {
 public:
  double seconds() override {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace sigattn::tune
