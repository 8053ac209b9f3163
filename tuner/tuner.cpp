// The tuning loop over a Measurer: candidates of a task, the three strategies, finalists re-timed
// beside the heuristic default, every candidate committed through cache::TuningStore as soon as it
// is measured, resumption from what an earlier run committed, several devices pulling tasks from
// one list, shards, and the comparison of strategies against the exhaustive search.
#include "tuner/tuner.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <ctime>
#include <exception>
#include <numeric>
#include <random>
#include <sigattn/sigattn.hpp>
#include <stdexcept>
#include <thread>

#include "generator/generator.hpp"

namespace sigattn::tune {
namespace {

using cache::CandidateStatus;

// Register file per SM and a typical register count per thread of these kernels (they run at
// 128 to 255): what bounds how many CTAs share an SM besides shared memory.
constexpr int kRegistersPerSm = 65536;
constexpr int kTypicalRegistersPerThread = 168;
constexpr int kMaxThreadsPerSm = 2048;
// Warps an SM needs resident to hide the latency of shared-memory loads behind the MMAs.
constexpr int kWarpsToHideLatency = 8;
// A decode split's share of the cost of summing the partial outputs, against the cache read.
constexpr double kSplitSumCost = 0.01;

std::string now_iso8601() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown host";
  return name;
}

std::string candidate_message(const Measurement& m) {
  if (m.status != CandidateStatus::ok || !m.timing) return m.message;
  std::string text = fmt::format(
      "median of {} repetitions, spread {:.1f}% (min {:.4f} ms, max {:.4f} ms); {} registers",
      m.timing->repetitions, 100.0 * m.timing->spread(), m.timing->min_ms, m.timing->max_ms,
      m.compile.registers);
  if (m.compile.spills()) {
    text += fmt::format("; spills: store {} B, load {} B", m.compile.spill_store_bytes,
                        m.compile.spill_load_bytes);
  }
  return text;
}

double tflops(const Task& task, double ms) { return task.flops() / (ms * 1e-3) / 1e12; }

CandidateRecord from_store(const cache::TuningCandidate& row) {
  CandidateRecord record;
  record.tile = row.tile;
  record.resumed = true;
  record.measurement.status = row.status;
  record.measurement.message = row.message;
  if (row.status == CandidateStatus::ok && row.time_ms) {
    record.measurement.timing = Timing{0, *row.time_ms, *row.time_ms, *row.time_ms};
  }
  // A spilling candidate's message says so (candidate_message); the byte counts do not matter.
  if (row.message.find("spills:") != std::string::npos)
    record.measurement.compile.spill_store_bytes = 1;
  return record;
}

bool usable(const CandidateRecord& record) {
  return record.measurement.status == CandidateStatus::ok && record.measurement.timing.has_value();
}

// Lower is better: non-spilling first, then by median time.
bool faster(const CandidateRecord& a, const CandidateRecord& b) {
  const bool a_spills = a.measurement.compile.spills();
  const bool b_spills = b.measurement.compile.spills();
  if (a_spills != b_spills) return b_spills;
  return a.measurement.timing->median_ms < b.measurement.timing->median_ms;
}

// Everything one tune_problem call shares between its steps.
class ProblemRun {
 public:
  ProblemRun(const Task& task, const cache::DeviceKey& device, const policy::Target& target,
             Measurer& measurer, CandidateLog* log, const TuneOptions& options,
             ProgressListener* listener, ProblemOutcome& outcome)
      : task_(task),
        device_(device),
        target_(target),
        measurer_(measurer),
        log_(log),
        options_(options),
        listener_(listener),
        outcome_(outcome) {}

  bool known(const gen::TileConfig& tile) const {
    return outcome_.records.contains(gen::to_string(tile));
  }
  const CandidateRecord& record(const gen::TileConfig& tile) const {
    return outcome_.records.at(gen::to_string(tile));
  }

  void resume() {
    if (log_ == nullptr || !options_.resume) return;
    const std::vector<gen::TileConfig> allowed = policy::candidates(task_.spec, target_);
    for (const cache::TuningCandidate& row : log_->recorded(device_, task_.problem)) {
      if (std::find(allowed.begin(), allowed.end(), row.tile) == allowed.end()) continue;
      outcome_.records[gen::to_string(row.tile)] = from_store(row);
      ++outcome_.resumed;
    }
  }

  const CandidateRecord& measure(const gen::TileConfig& tile, int repetitions,
                                 bool skip_if_spills) {
    const Measurement m = measurer_.measure(tile, {repetitions, skip_if_spills});
    ++outcome_.measured;
    CandidateRecord& record = outcome_.records[gen::to_string(tile)];
    record = {tile, m, false};
    if (!m.skipped_spilling) commit(record);
    if (listener_ != nullptr) listener_->candidate_done(task_, device_, record);
    return record;
  }

  // Measures each tile not known yet; spilling ones are left for later and returned.
  std::vector<gen::TileConfig> measure_new(const std::vector<gen::TileConfig>& tiles,
                                           int repetitions) {
    std::vector<gen::TileConfig> spilling;
    for (const gen::TileConfig& tile : tiles) {
      if (known(tile)) continue;
      if (measure(tile, repetitions, true).measurement.skipped_spilling) spilling.push_back(tile);
    }
    return spilling;
  }

  std::vector<CandidateRecord> usable_sorted(const std::vector<gen::TileConfig>& tiles) const {
    std::vector<CandidateRecord> out;
    for (const gen::TileConfig& tile : tiles) {
      if (known(tile) && usable(record(tile))) out.push_back(record(tile));
    }
    std::stable_sort(out.begin(), out.end(), faster);
    return out;
  }

  void successive_halving(std::vector<gen::TileConfig> survivors) {
    int repetitions = std::max(3, options_.repetitions / 4);
    const std::vector<gen::TileConfig> spilling = measure_new(survivors, repetitions);
    std::vector<CandidateRecord> alive = usable_sorted(survivors);
    if (alive.empty()) {
      for (const gen::TileConfig& tile : spilling) measure(tile, repetitions, false);
      return;
    }
    while (static_cast<int>(alive.size()) > options_.finalists) {
      alive.resize(std::max<std::size_t>(options_.finalists, (alive.size() + 1) / 2));
      repetitions = std::min(options_.repetitions, repetitions * 2);
      std::vector<gen::TileConfig> next;
      for (const CandidateRecord& r : alive)
        next.push_back(measure(r.tile, repetitions, false).tile);
      alive = usable_sorted(next);
    }
  }

  void finals(const gen::TileConfig& heuristic, const std::vector<gen::TileConfig>& all) {
    std::vector<CandidateRecord> ranked = usable_sorted(all);
    if (ranked.size() > static_cast<std::size_t>(options_.finalists)) {
      ranked.resize(options_.finalists);
    }
    std::vector<gen::TileConfig> finalists;
    for (const CandidateRecord& r : ranked) finalists.push_back(r.tile);
    if (known(heuristic) && usable(record(heuristic)) &&
        std::find(finalists.begin(), finalists.end(), heuristic) == finalists.end()) {
      finalists.push_back(heuristic);
    }
    for (const gen::TileConfig& tile : finalists) measure(tile, 2 * options_.repetitions, false);
    const std::vector<CandidateRecord> retimed = usable_sorted(finalists);
    if (known(heuristic) && usable(record(heuristic))) {
      outcome_.heuristic = record(heuristic).measurement.timing;
    }
    if (retimed.empty()) {
      outcome_.error = "no candidate passed verification and timing";
      return;
    }
    outcome_.winner = retimed.front().tile;
    outcome_.best = retimed.front().measurement.timing;
    if (log_ != nullptr) {
      cache::TuningResult result;
      result.device = device_;
      result.template_hash = cache::kernel_source_hash(task_.problem, *outcome_.winner);
      result.problem = task_.problem;
      result.tile = *outcome_.winner;
      result.time_ms = outcome_.best->median_ms;
      result.tflops = tflops(task_, result.time_ms);
      result.measured_at = now_iso8601();
      result.method = fmt::format(
          "sigattn tune {}: strategy {}, median of {} repetitions after warm-up (spread {:.1f}%), "
          "L2 flushed, inputs rotated, verified against a reference",
          version(), to_string(options_.strategy), outcome_.best->repetitions,
          100.0 * outcome_.best->spread());
      result.source = host_name();
      log_->record_best(result);
    }
  }

 private:
  void commit(const CandidateRecord& record) {
    if (log_ == nullptr) return;
    cache::TuningCandidate row;
    row.device = device_;
    row.template_hash = cache::kernel_source_hash(task_.problem, record.tile);
    row.problem = task_.problem;
    row.tile = record.tile;
    row.status = record.measurement.status;
    if (usable(record)) {
      row.time_ms = record.measurement.timing->median_ms;
      row.tflops = tflops(task_, *row.time_ms);
    }
    row.message = candidate_message(record.measurement);
    row.measured_at = now_iso8601();
    log_->record(row);
  }

  const Task& task_;
  const cache::DeviceKey& device_;
  const policy::Target& target_;
  Measurer& measurer_;
  CandidateLog* log_;
  const TuneOptions& options_;
  ProgressListener* listener_;
  ProblemOutcome& outcome_;
};

std::vector<gen::TileConfig> random_pick(const std::vector<gen::TileConfig>& all,
                                         const gen::TileConfig& heuristic, const Task& task,
                                         const TuneOptions& options) {
  std::vector<gen::TileConfig> pool = all;
  std::mt19937_64 engine(options.seed ^ std::hash<std::string>{}(task.name()));
  std::shuffle(pool.begin(), pool.end(), engine);
  const std::size_t budget = std::max(1, options.random_budget);
  if (pool.size() > budget) pool.resize(budget);
  if (std::find(pool.begin(), pool.end(), heuristic) == pool.end()) pool.back() = heuristic;
  return pool;
}

}  // namespace

Timing summarize(std::vector<double> times_ms) {
  if (times_ms.empty()) throw std::invalid_argument("summarize needs at least one time");
  std::sort(times_ms.begin(), times_ms.end());
  const std::size_t n = times_ms.size();
  const double median =
      n % 2 == 1 ? times_ms[n / 2] : 0.5 * (times_ms[n / 2 - 1] + times_ms[n / 2]);
  return {static_cast<int>(n), median, times_ms.front(), times_ms.back()};
}

std::optional<double> significant_speedup(const Timing& heuristic, const Timing& best) {
  const double noise = std::max(heuristic.max_ms - heuristic.min_ms, best.max_ms - best.min_ms);
  if (best.median_ms <= 0.0 || std::abs(heuristic.median_ms - best.median_ms) <= noise) {
    return std::nullopt;
  }
  return heuristic.median_ms / best.median_ms;
}

bool warmed_up(const std::vector<double>& run_ms) {
  const double total = std::accumulate(run_ms.begin(), run_ms.end(), 0.0);
  if (total >= kMaxWarmupMs) return true;
  if (total < kMinWarmupMs || run_ms.size() < 2 * kSteadyWindow) return false;
  const auto window_median = [&](std::size_t end) {
    const auto stop = run_ms.end() - static_cast<std::ptrdiff_t>(end);
    return summarize(std::vector<double>(stop - kSteadyWindow, stop)).median_ms;
  };
  const double last = window_median(0);
  const double before = window_median(kSteadyWindow);
  return std::abs(last - before) <= kSteadyChange * before;
}

std::string_view to_string(Strategy strategy) {
  switch (strategy) {
    case Strategy::exhaustive:
      return "exhaustive";
    case Strategy::random:
      return "random";
    case Strategy::model:
      return "model";
  }
  return "unknown";
}

Strategy parse_strategy(std::string_view text) {
  for (const Strategy s : {Strategy::exhaustive, Strategy::random, Strategy::model}) {
    if (to_string(s) == text) return s;
  }
  throw std::invalid_argument(
      fmt::format("unknown strategy '{}' (known: exhaustive, random, model)", text));
}

double predicted_cost(const Task& task, const gen::TileConfig& tile, int sm_count,
                      const policy::Target& target) {
  const Shape& shape = task.shape;
  const bool keys_split = task.direction == gen::Direction::dkdv;
  const bool decode = task.direction == gen::Direction::decode;
  const int owned = keys_split ? tile.block_n : tile.block_m;  // rows or keys a CTA owns
  const int step = keys_split ? tile.block_m : tile.block_n;   // the other side, per step
  const int heads = keys_split ? shape.heads_kv : shape.heads_q;
  double ctas = double((shape.seqlen + owned - 1) / owned) * heads * shape.batch;
  int splits = 1;
  if (decode) {
    // A CTA owns block_m of a kv head's (query, group head) rows and one split of the cache.
    const long long rows =
        static_cast<long long>(shape.heads_q / shape.heads_kv) * shape.decode_rows;
    const long long units = static_cast<long long>(shape.batch) * shape.heads_kv *
                            ((rows + tile.block_m - 1) / tile.block_m);
    const long long key_tiles = (shape.seqlen + tile.block_n - 1) / tile.block_n;
    splits = tile.splits != 0 ? tile.splits : policy::decode_splits(units, key_tiles, sm_count);
    ctas = double(units) * splits;
  }
  const int threads = 32 * tile.warps;
  const int smem = gen::smem_bytes(task.spec, tile);
  const int by_smem = smem > 0 ? std::max(1, target.max_smem_optin / smem) : kMaxThreadsPerSm;
  const int by_threads = std::max(1, kMaxThreadsPerSm / threads);
  const int by_registers = std::max(1, kRegistersPerSm / (threads * kTypicalRegistersPerThread));
  const int per_sm = std::min({by_smem, by_threads, by_registers});
  const double slots = double(std::max(1, sm_count)) * per_sm;
  const double waves = std::ceil(ctas / slots);
  const double wave_efficiency = ctas / (waves * slots);
  // Shared-memory bytes loaded per MMA flop scale with 1/owned + 1/step. Decode reads the cache
  // once whatever the tile, so only the fill of the GPU and the sum of the splits count there.
  const double reuse = decode ? 1.0 : 1.0 / (1.0 / owned + 1.0 / step);
  const double latency_hiding = std::min(1.0, double(per_sm * tile.warps) / kWarpsToHideLatency);
  const double pipelining = tile.stages >= 3 ? 1.05 : 1.0;
  const double split_sum = splits > 1 ? 1.0 + kSplitSumCost * splits : 1.0;
  return split_sum / (wave_efficiency * reuse * latency_hiding * pipelining);
}

std::vector<gen::TileConfig> ranked_candidates(const Task& task, int sm_count,
                                               const policy::Target& target) {
  std::vector<gen::TileConfig> tiles = policy::candidates(task.spec, target);
  std::stable_sort(tiles.begin(), tiles.end(), [&](const auto& a, const auto& b) {
    return predicted_cost(task, a, sm_count, target) < predicted_cost(task, b, sm_count, target);
  });
  return tiles;
}

std::vector<cache::TuningCandidate> CandidateLog::recorded(const cache::DeviceKey& device,
                                                           const cache::ProblemKey& problem) {
  std::lock_guard lock(mutex_);
  std::vector<cache::TuningCandidate> rows;
  for (cache::TuningCandidate& row : store_.all_candidates()) {
    if (row.device == device && row.problem == problem && cache::is_fresh(row)) {
      rows.push_back(std::move(row));
    }
  }
  return rows;
}

void CandidateLog::record(const cache::TuningCandidate& candidate) {
  std::lock_guard lock(mutex_);
  store_.put_candidate(candidate);
}

void CandidateLog::record_best(const cache::TuningResult& result) {
  std::lock_guard lock(mutex_);
  store_.put_best(result);
}

ProblemOutcome tune_problem(const Task& task, const cache::DeviceKey& device,
                            const policy::Target& target, Measurer& measurer, CandidateLog* log,
                            const TuneOptions& options, Clock& clock, ProgressListener* listener) {
  const double started = clock.seconds();
  ProblemOutcome outcome;
  outcome.task = task;
  outcome.device = device;
  const auto finish = [&]() -> ProblemOutcome {
    for (const auto& [name, record] : outcome.records) {
      if (record.measurement.status != CandidateStatus::ok) ++outcome.failures;
      if (record.measurement.compile.spills()) ++outcome.spilling;
    }
    outcome.seconds = clock.seconds() - started;
    if (listener != nullptr) listener->problem_done(outcome);
    return outcome;
  };

  std::vector<gen::TileConfig> all = ranked_candidates(task, device.sm_count, target);
  try {
    outcome.heuristic_tile = policy::default_tile(task.spec, target).tile;
  } catch (const std::invalid_argument& error) {
    outcome.error = error.what();
    return finish();
  }
  if (std::find(all.begin(), all.end(), outcome.heuristic_tile) == all.end()) {
    all.push_back(outcome.heuristic_tile);
  }
  outcome.candidates = static_cast<int>(all.size());

  ProblemRun run(task, device, target, measurer, log, options, listener, outcome);
  run.resume();
  std::vector<gen::TileConfig> plan;
  switch (options.strategy) {
    case Strategy::exhaustive:
      plan = all;
      break;
    case Strategy::random:
      plan = random_pick(all, outcome.heuristic_tile, task, options);
      break;
    case Strategy::model: {
      const std::size_t keep = std::max<std::size_t>(
          options.finalists + 1,
          static_cast<std::size_t>(std::ceil(all.size() * options.model_keep)));
      plan.assign(all.begin(), all.begin() + std::min(keep, all.size()));
      if (std::find(plan.begin(), plan.end(), outcome.heuristic_tile) == plan.end()) {
        plan.push_back(outcome.heuristic_tile);
      }
      break;
    }
  }
  if (listener != nullptr) listener->planned(task, static_cast<int>(plan.size()));
  std::vector<gen::TileConfig> to_compile;
  for (const gen::TileConfig& tile : plan) {
    if (!run.known(tile)) to_compile.push_back(tile);
  }
  try {
    measurer.begin_task(task, to_compile);
  } catch (const TaskError& error) {
    outcome.error = error.what();
    return finish();
  }

  if (options.strategy == Strategy::model) {
    run.successive_halving(plan);
  } else {
    const std::vector<gen::TileConfig> spilling = run.measure_new(plan, options.repetitions);
    // Spilling kernels are ranked last: measured at the end by the exhaustive search, and by the
    // random one only when nothing else passed.
    if (options.strategy == Strategy::exhaustive || run.usable_sorted(plan).empty()) {
      for (const gen::TileConfig& tile : spilling) run.measure(tile, options.repetitions, false);
    }
  }
  run.finals(outcome.heuristic_tile, plan);
  return finish();
}

std::vector<ProblemOutcome> run_tasks(const std::vector<Task>& tasks,
                                      const std::vector<DeviceSlot>& devices, CandidateLog* log,
                                      const TuneOptions& options, Clock& clock,
                                      ProgressListener* listener) {
  if (devices.empty()) throw std::invalid_argument("run_tasks needs at least one device");
  std::vector<ProblemOutcome> outcomes(tasks.size());
  std::atomic<std::size_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex failure_mutex;
  std::exception_ptr failure;
  const auto work = [&](const DeviceSlot& slot) {
    try {
      for (std::size_t i = next++; i < tasks.size() && !stop; i = next++) {
        outcomes[i] = tune_problem(tasks[i], slot.device, slot.target, *slot.measurer, log, options,
                                   clock, listener);
      }
    } catch (...) {
      std::lock_guard lock(failure_mutex);
      if (!failure) failure = std::current_exception();
      stop = true;
    }
  };
  if (devices.size() == 1) {
    work(devices.front());
  } else {
    std::vector<std::thread> threads;
    for (const DeviceSlot& slot : devices) threads.emplace_back(work, std::cref(slot));
    for (std::thread& thread : threads) thread.join();
  }
  if (failure) std::rethrow_exception(failure);
  return outcomes;
}

std::vector<Task> shard(const std::vector<Task>& tasks, int index, int count) {
  if (count < 1 || index < 0 || index >= count) {
    throw std::invalid_argument(
        fmt::format("shard {}/{}: the index must be in [0, {})", index, count, count));
  }
  std::vector<Task> part;
  for (std::size_t i = static_cast<std::size_t>(index); i < tasks.size(); i += count) {
    part.push_back(tasks[i]);
  }
  return part;
}

std::vector<StrategyComparison> compare_strategies(const Task& task, const cache::DeviceKey& device,
                                                   const policy::Target& target, Measurer& measurer,
                                                   CandidateLog* log, const TuneOptions& options,
                                                   Clock& clock, ProgressListener* listener) {
  std::vector<StrategyComparison> rows;
  std::map<std::string, double> truth;
  std::optional<double> truth_best;
  for (const Strategy strategy : {Strategy::exhaustive, Strategy::random, Strategy::model}) {
    TuneOptions run_options = options;
    run_options.strategy = strategy;
    run_options.resume = false;  // each strategy starts from nothing, so its time is its own
    const ProblemOutcome outcome = tune_problem(task, device, target, measurer,
                                                strategy == Strategy::exhaustive ? log : nullptr,
                                                run_options, clock, listener);
    StrategyComparison row;
    row.strategy = strategy;
    row.winner = outcome.winner;
    if (outcome.best) row.winner_ms = outcome.best->median_ms;
    row.measured = outcome.measured;
    row.seconds = outcome.seconds;
    if (strategy == Strategy::exhaustive) {
      for (const auto& [name, record] : outcome.records) {
        if (!usable(record) || record.measurement.compile.spills()) continue;
        truth[name] = record.measurement.timing->median_ms;
        if (!truth_best || truth[name] < *truth_best) truth_best = truth[name];
      }
    }
    if (row.winner && truth_best) {
      const auto found = truth.find(gen::to_string(*row.winner));
      if (found != truth.end()) row.ratio_to_best = found->second / *truth_best;
    }
    rows.push_back(row);
  }
  return rows;
}

}  // namespace sigattn::tune
