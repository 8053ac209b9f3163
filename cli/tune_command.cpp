// `sigattn tune` over tuner/: shapes from a preset, flags or a JSON file, and the problems of stale
// tuning results (--stale); one worker process per GPU (`sigattn tune-worker`, this same binary); a
// live progress line on stderr; a summary table or JSON on stdout. Without a GPU it compiles the
// candidates for --arch into the binary cache.
#include "cli/tune_command.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <thread>

#include "cache/database.hpp"
#include "cache/json_io.hpp"
#include "generator/generator.hpp"
#include "runtime/compiler.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/install_paths.hpp"
#include "runtime/module_cache.hpp"
#include "tuner/gpu_runner.hpp"
#include "tuner/shapes.hpp"
#include "tuner/tuner.hpp"
#include "tuner/worker.hpp"

namespace sigattn::cli {
namespace {

using nlohmann::json;

int parse_index(std::string_view text, std::string_view what) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value < 0) {
    throw std::invalid_argument(fmt::format("{}: '{}' is not a non-negative integer", what, text));
  }
  return value;
}

std::pair<int, int> parse_shard(const std::string& text) {
  const std::size_t slash = text.find('/');
  if (slash == std::string::npos) {
    throw std::invalid_argument(fmt::format("--shard '{}' must read INDEX/COUNT, e.g. 0/4", text));
  }
  const int index = parse_index(std::string_view(text).substr(0, slash), "--shard index");
  const int count = parse_index(std::string_view(text).substr(slash + 1), "--shard count");
  if (count < 1 || index >= count) {
    throw std::invalid_argument(
        fmt::format("--shard {}: the index must be in [0, COUNT) and COUNT at least 1", text));
  }
  return {index, count};
}

// The explicit device list, or nullopt for "all".
std::optional<std::vector<int>> parse_devices(const std::string& text) {
  if (text == "all") return std::nullopt;
  std::vector<int> devices;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    const int device =
        parse_index(std::string_view(text).substr(start, comma - start), "--devices");
    if (std::find(devices.begin(), devices.end(), device) != devices.end()) {
      throw std::invalid_argument(
          fmt::format("--devices {}: device {} is listed twice", text, device));
    }
    devices.push_back(device);
    start = comma + 1;
  }
  return devices;
}

std::string problem_text(const cache::ProblemKey& problem) {
  return fmt::format("{} q {} k {}", problem.spec, problem.seqlen_q_bucket,
                     problem.seqlen_k_bucket);
}

// The problems of the stale tuning results in the user database (when it exists) and the shipped
// data, as tasks; a problem that no tuner shape gives is named on stderr and left out.
std::vector<tune::Task> stale_tasks(const std::string& database_path) {
  std::vector<cache::TuningResult> rows = cache::read_shipped_directory(shipped_data_dir()).results;
  if (std::filesystem::exists(database_path)) {
    cache::Database db(database_path, cache::OpenMode::read_only);
    for (cache::TuningResult& row : cache::TuningStore(db).all_best()) {
      rows.push_back(std::move(row));
    }
  }
  std::vector<tune::Task> tasks;
  for (const cache::TuningResult& row : rows) {
    if (cache::is_fresh(row)) continue;
    if (std::optional<tune::Task> task = tune::task_for_problem(row.problem)) {
      tasks.push_back(*std::move(task));
    } else {
      fmt::print(stderr, "stale result {} is not re-tuned: no tuning shape gives this problem\n",
                 problem_text(row.problem));
    }
  }
  return tasks;
}

// The tasks in order, each problem once.
std::vector<tune::Task> unique_tasks(std::vector<tune::Task> all) {
  std::vector<tune::Task> tasks;
  std::set<std::string> seen;
  for (tune::Task& task : all) {
    if (seen.insert(problem_text(task.problem)).second) tasks.push_back(std::move(task));
  }
  return tasks;
}

std::string duration(double seconds) {
  const long total = std::lround(std::max(0.0, seconds));
  if (total >= 3600) return fmt::format("{}h{:02}m", total / 3600, total % 3600 / 60);
  if (total >= 60) return fmt::format("{}m{:02}s", total / 60, total % 60);
  return fmt::format("{}s", total);
}

// The live line on stderr: candidates done of planned, failures, the best of the current problem
// and an estimate of the time left. Redrawn in place on a terminal, a line per problem otherwise.
class ProgressLine : public tune::ProgressListener {
 public:
  explicit ProgressLine(int problems) : problems_(problems), terminal_(isatty(STDERR_FILENO)) {}

  void planned(const tune::Task&, int candidates) override {
    std::lock_guard lock(mutex_);
    planned_ += candidates;
    ++started_;
  }
  void candidate_done(const tune::Task& task, const cache::DeviceKey&,
                      const tune::CandidateRecord& record) override {
    std::lock_guard lock(mutex_);
    ++done_;
    if (record.measurement.status != cache::CandidateStatus::ok) ++failures_;
    if (record.measurement.timing &&
        (!best_ms_ || record.measurement.timing->median_ms < *best_ms_ ||
         best_task_ != task.name())) {
      best_ms_ = record.measurement.timing->median_ms;
      best_tile_ = gen::to_string(record.tile);
      best_task_ = task.name();
    }
    if (terminal_) draw();
  }
  void problem_done(const tune::ProblemOutcome& outcome) override {
    std::lock_guard lock(mutex_);
    ++finished_;
    if (terminal_) {
      draw();
      return;
    }
    fmt::print(stderr, "[{}/{}] {}: {}\n", finished_, problems_, outcome.task.name(),
               outcome.winner ? fmt::format("{} {:.4f} ms", gen::to_string(*outcome.winner),
                                            outcome.best->median_ms)
                              : "no winner: " + outcome.error);
  }
  void finish() {
    std::lock_guard lock(mutex_);
    if (terminal_) fmt::print(stderr, "\n");
  }

 private:
  void draw() {
    const double elapsed = clock_.seconds() - started_at_;
    // Candidates still expected: those planned and not done, plus, for problems not started yet,
    // the average planned so far.
    const double per_problem = started_ > 0 ? double(planned_) / started_ : 0.0;
    const double left = std::max(0.0, planned_ - done_ + per_problem * (problems_ - started_));
    const std::string eta = done_ > 0 ? duration(elapsed / done_ * left) : "?";
    fmt::print(stderr, "\r\033[K[tune] problem {}/{}  candidates {}/{}  failed {}  best {}  ETA {}",
               std::min(finished_ + 1, problems_), problems_, done_,
               planned_ + static_cast<int>(per_problem * (problems_ - started_)), failures_,
               best_ms_ ? fmt::format("{:.4f} ms ({})", *best_ms_, best_tile_) : "-", eta);
    std::fflush(stderr);
  }

  std::mutex mutex_;
  tune::SteadyClock clock_;
  double started_at_ = clock_.seconds();
  int problems_;
  bool terminal_;
  int planned_ = 0, started_ = 0, done_ = 0, failures_ = 0, finished_ = 0;
  std::optional<double> best_ms_;
  std::string best_tile_, best_task_;
};

json outcome_json(const tune::ProblemOutcome& o) {
  json j = {{"problem", o.task.name()},
            {"spec", o.task.problem.spec},
            {"seqlen_q_bucket", o.task.problem.seqlen_q_bucket},
            {"seqlen_k_bucket", o.task.problem.seqlen_k_bucket},
            {"device", tune::device_json(o.device)},
            {"heuristic_tile", gen::to_string(o.heuristic_tile)},
            {"candidates", o.candidates},
            {"measured", o.measured},
            {"resumed", o.resumed},
            {"failures", o.failures},
            {"spilling", o.spilling},
            {"seconds", o.seconds}};
  if (o.heuristic) {
    j["heuristic_ms"] = o.heuristic->median_ms;
    j["heuristic_spread"] = o.heuristic->spread();
  }
  if (o.winner) {
    j["winner"] = gen::to_string(*o.winner);
    j["best_ms"] = o.best->median_ms;
    j["best_spread"] = o.best->spread();
    j["tflops"] = o.task.flops() / (o.best->median_ms * 1e-3) / 1e12;
    // Left out when the gap is within the timings' spread.
    if (o.heuristic) {
      if (const std::optional<double> speedup = tune::significant_speedup(*o.heuristic, *o.best)) {
        j["speedup"] = *speedup;
      }
    }
  }
  if (!o.error.empty()) j["error"] = o.error;
  return j;
}

// The winner's speedup over the heuristic, or "noise" when the gap is within the timings' spread.
std::string speedup_text(const tune::ProblemOutcome& o) {
  if (!o.heuristic) return "-";
  const std::optional<double> speedup = tune::significant_speedup(*o.heuristic, *o.best);
  return speedup ? fmt::format("{:.3f}x", *speedup) : "noise";
}

void print_summary(const std::vector<tune::ProblemOutcome>& outcomes) {
  fmt::print("{:<44} {:<5} {:>10} {:>10} {:>8} {:<22} {:>8} {:>6}\n", "problem", "kernel",
             "heur. ms", "best ms", "speedup", "winner", "TFLOPS", "failed");
  for (const tune::ProblemOutcome& o : outcomes) {
    const std::string heuristic = o.heuristic ? fmt::format("{:.4f}", o.heuristic->median_ms) : "-";
    if (!o.winner) {
      fmt::print("{:<44} {:<5} {:>10} {:>10} {:>8} {}\n", tune::to_string(o.task.shape),
                 gen::to_string(o.task.direction), heuristic, "-", "-", "no winner: " + o.error);
      continue;
    }
    const double best = o.best->median_ms;
    fmt::print("{:<44} {:<5} {:>10} {:>10.4f} {:>8} {:<22} {:>8.1f} {:>6}\n",
               tune::to_string(o.task.shape), gen::to_string(o.task.direction), heuristic, best,
               speedup_text(o), gen::to_string(*o.winner), o.task.flops() / (best * 1e-3) / 1e12,
               o.failures);
  }
}

// Without a GPU: compile every candidate of every task for `arch` into the binary cache.
int compile_only(const std::vector<tune::Task>& tasks, const std::string& arch, unsigned jobs,
                 const std::string& why, const std::string& database_path, bool as_json) {
  if (!arch_supported(arch)) {
    throw std::invalid_argument(fmt::format("--arch {} is not a supported architecture", arch));
  }
  const policy::Target target = policy::target_for_arch(arch);
  std::vector<gen::Variant> variants;
  std::set<std::string> seen;
  for (const tune::Task& task : tasks) {
    for (gen::TileConfig tile : policy::candidates(task.spec, target)) {
      tile.splits = 0;  // a decode tile's split counts share one program
      const gen::Variant variant{task.spec, tile};
      if (seen.insert(gen::to_string(variant)).second) variants.push_back(variant);
    }
  }
  const std::uint64_t cached_before = ModuleCache::instance().stats().disk_hits;
  std::atomic<std::size_t> next{0};
  std::atomic<int> failed{0};
  std::mutex fatal_mutex;
  std::exception_ptr fatal;
  const auto work = [&] {
    try {
      for (std::size_t i = next++; i < variants.size(); i = next++) {
        try {
          ModuleCache::instance().compiled(gen::generate(variants[i]), arch);
        } catch (const Error& error) {
          if (error.status() == Status::not_available) throw;
          ++failed;
          fmt::print(stderr, "failed  {}: {}\n", gen::to_string(variants[i]),
                     std::string(error.what()).substr(0, 400));
        }
      }
    } catch (...) {
      std::lock_guard lock(fatal_mutex);
      if (!fatal) fatal = std::current_exception();
      next = variants.size();
    }
  };
  std::vector<std::thread> threads;
  const unsigned count = std::max(1u, std::min<unsigned>(jobs, variants.size()));
  for (unsigned t = 0; t < count; ++t) threads.emplace_back(work);
  for (std::thread& thread : threads) thread.join();
  if (fatal) std::rethrow_exception(fatal);
  const std::size_t from_cache = ModuleCache::instance().stats().disk_hits - cached_before;
  const std::size_t compiled = variants.size() - failed - from_cache;
  const std::string message = fmt::format(
      "no GPU to tune on ({}). Of the {} candidate kernels of {} problems for {}, compiled {} "
      "into the binary cache of {}, found {} there already, {} failed; nothing was timed.",
      why, variants.size(), tasks.size(), arch, compiled, database_path, from_cache, failed.load());
  if (as_json) {
    fmt::print("{}\n", json{{"gpu", false},
                            {"message", message},
                            {"arch", arch},
                            {"compiled", compiled},
                            {"from_cache", from_cache},
                            {"failed", failed.load()}}
                           .dump(2));
  }
  fmt::print(as_json ? stderr : stdout, "{}\n", message);
  return failed > 0 ? 1 : 0;
}

std::optional<tune::FaultInjection> fault_injection() {
#ifdef SIGATTN_TUNE_FAULT_INJECTION
  const char* value = std::getenv("SIGATTN_TUNE_INJECT");
  if (value == nullptr || *value == '\0') return std::nullopt;
  const std::string_view text(value);
  const std::size_t colon = text.find(':');
  const std::string_view kind = text.substr(0, colon);
  if (colon == std::string_view::npos || (kind != "fault" && kind != "hang")) {
    throw std::invalid_argument(
        fmt::format("SIGATTN_TUNE_INJECT='{}' must read fault:TILE or hang:TILE", text));
  }
  return tune::FaultInjection{
      kind == "fault" ? tune::FaultInjection::Kind::fault : tune::FaultInjection::Kind::hang,
      gen::parse_tile(text.substr(colon + 1))};
#else
  return std::nullopt;
#endif
}

// CLI::Range lets NaN through (every comparison with it is false).
const CLI::Validator kFiniteNumber(
    [](std::string& text) -> std::string {
      double value = 0.0;
      const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
      if (error != std::errc() || end != text.data() + text.size() || !std::isfinite(value)) {
        return fmt::format("'{}' is not a finite number", text);
      }
      return {};
    },
    "FINITE");

}  // namespace

TuneCommand::TuneCommand(CLI::App& app) {
  tune_ = app.add_subcommand(
      "tune",
      "Time the candidate tiles of a set of shapes on the GPUs here and store the winners in the "
      "user database (resumable: candidates already recorded are not measured again)");
  tune_->add_option(
      "--preset", preset_,
      "quick (a few minutes), paper (the benchmark grid) or decode (the decode benchmark's steps)");
  tune_->add_option(
      "--shape", shapes_,
      "A shape, e.g. fwd.bf16.d128.L4096.pad25[.b4][.h16[x4]][.causal][.accurate], or a "
      "decode step dec.bf16.d128.L4096.b16.h32x8[.q1][.paged16].causal (repeatable; "
      "batch and heads default to 16384 tokens (decode: 65536 cached) and hidden "
      "size 2048)");
  tune_->add_option("--shapes", shapes_file_, "A JSON file {\"shapes\": [...]} (see README)");
  tune_
      ->add_option("--strategy", strategy_,
                   "exhaustive, random, model (cost model + successive halving) or all-compare "
                   "(each strategy on each problem, against the exhaustive best)")
      ->capture_default_str();
  tune_->add_option("--budget", budget_, "Candidates the random strategy measures")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  tune_->add_option("--repetitions", repetitions_, "Timed repetitions per measurement")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  tune_->add_option("--finalists", finalists_, "Best candidates re-timed at the end")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  tune_->add_option("--devices", devices_, "all, or GPU indices such as 0,1 (one worker each)")
      ->capture_default_str();
  tune_->add_option("--shard", shard_,
                    "INDEX/COUNT: tune only this machine's part of the problems");
  tune_
      ->add_option("--timeout", timeout_seconds_,
                   "Seconds without an answer before a worker is killed (a hang)")
      ->check(CLI::Range(1.0, 86400.0))
      ->check(kFiniteNumber)
      ->capture_default_str();
  tune_->add_option("--jobs,-j", jobs_, "Compile threads per worker (default: hardware threads)")
      ->check(CLI::Range(1u, 4096u));
  tune_->add_option("--arch", arch_, "Target architecture when there is no GPU (compile only)")
      ->capture_default_str();
  tune_->add_option("--seed", seed_, "Seed of the random strategy")->capture_default_str();
  tune_->add_flag("--stale", stale_,
                  "Also re-tune the problems of stale results (measured on kernel sources that "
                  "have changed since) in the user database and the shipped data");
  tune_->add_flag("--json", json_, "Print the results as JSON on stdout");

  worker_ = app.add_subcommand("tune-worker", "");
  worker_->group("");  // hidden: started by `tune`
  worker_->add_option("--device", worker_device_, "GPU index")->required();
  worker_->add_option("--jobs", jobs_, "Compile threads");
}

int TuneCommand::run(const std::string& database_path) {
  if (jobs_ == 0) jobs_ = std::max(1u, std::thread::hardware_concurrency());
  return worker_->parsed() ? run_worker(database_path) : run_tune(database_path);
}

int TuneCommand::run_worker(const std::string& database_path) {
  set_database_path(database_path);
  std::unique_ptr<tune::GpuRunner> runner;
  try {
    runner = std::make_unique<tune::GpuRunner>(worker_device_, fault_injection());
  } catch (const std::exception& error) {
    std::cout << json{{"event", "failed"}, {"message", error.what()}}.dump() << std::endl;
    return 1;
  }
  return tune::serve_worker(std::cin, std::cout, *runner, static_cast<int>(jobs_));
}

int TuneCommand::run_tune(const std::string& database_path) {
  // Everything the user gave is checked before the database is opened.
  // An empty value would read as "not given" below.
  for (const auto& [option, value] :
       {std::pair<const char*, const std::string&>{"--preset", preset_},
        {"--shapes", shapes_file_},
        {"--shard", shard_},
        {"--devices", devices_},
        {"--strategy", strategy_}}) {
    if (tune_->count(option) > 0 && value.empty()) {
      throw std::invalid_argument(fmt::format("{} must not be empty", option));
    }
  }
  std::vector<tune::Shape> shapes;
  if (!preset_.empty()) shapes = tune::preset_shapes(preset_);
  for (const std::string& text : shapes_) shapes.push_back(tune::parse_shape(text));
  if (!shapes_file_.empty()) {
    try {
      for (const tune::Shape& shape : tune::read_shapes_file(shapes_file_)) {
        shapes.push_back(shape);
      }
    } catch (const std::invalid_argument& error) {
      throw std::invalid_argument(fmt::format("--shapes: {}", error.what()));
    }
  }
  if (shapes.empty() && !stale_) {
    throw std::invalid_argument("nothing to tune: give --preset, --shape, --shapes or --stale");
  }
  const bool compare = strategy_ == "all-compare";
  tune::TuneOptions options;
  if (!compare) options.strategy = tune::parse_strategy(strategy_);
  options.repetitions = repetitions_;
  options.finalists = finalists_;
  options.random_budget = budget_;
  options.seed = seed_;
  std::vector<tune::Task> all_tasks;
  for (const tune::Shape& shape : shapes) {
    for (tune::Task& task : tune::tasks_for(shape)) all_tasks.push_back(std::move(task));
  }
  if (stale_) {
    for (tune::Task& task : stale_tasks(database_path)) all_tasks.push_back(std::move(task));
  }
  std::vector<tune::Task> tasks = unique_tasks(std::move(all_tasks));
  if (tasks.empty()) {
    fmt::print(stderr, "no stale tuning results to re-tune\n");
    return 0;
  }
  if (!shard_.empty()) {
    const auto [index, count] = parse_shard(shard_);
    tasks = tune::shard(tasks, index, count);
  }
  const std::optional<std::vector<int>> requested = parse_devices(devices_);

  std::string why;
  const cuda::DriverApi* api = cuda::try_driver(&why);
  int device_count = 0;
  if (api != nullptr) {
    SIGATTN_CU(api->cuDeviceGetCount(&device_count));
    if (device_count == 0) why = "the CUDA driver reports no device";
  }
  if (device_count == 0) {
    if (requested) {
      throw std::invalid_argument(
          fmt::format("--devices {}: there is no CUDA device here ({})", devices_, why));
    }
    return compile_only(tasks, arch_, jobs_, why, database_path, json_);
  }
  std::vector<int> devices;
  if (requested) {
    for (const int device : *requested) {
      if (device >= device_count) {
        throw std::invalid_argument(
            fmt::format("--devices {}: device {} does not exist (devices 0 to {} are here)",
                        devices_, device, device_count - 1));
      }
    }
    devices = *requested;
  } else {
    for (int i = 0; i < device_count; ++i) devices.push_back(i);
  }
  if (tasks.empty()) {
    fmt::print(stderr, "shard {} has no problems to tune\n", shard_);
    return 0;
  }

  cache::Database db(database_path, cache::OpenMode::read_write);
  tune::CandidateLog log(db);
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<std::unique_ptr<tune::WorkerMeasurer>> workers;
  std::vector<tune::DeviceSlot> slots;
  for (const int device : devices) {
    workers.push_back(std::make_unique<tune::WorkerMeasurer>(
        tune::WorkerOptions{{self, "tune-worker", "--device", std::to_string(device), "--jobs",
                             std::to_string(jobs_), "--db", database_path},
                            timeout_seconds_}));
    const cache::DeviceKey key = workers.back()->device();
    slots.push_back({key, policy::target_for_arch(key.arch), workers.back().get()});
    fmt::print(stderr, "device {}: {} ({}, {} SMs)\n", device, key.name, key.arch, key.sm_count);
  }

  tune::SteadyClock clock;
  ProgressLine progress(static_cast<int>(compare ? 3 * tasks.size() : tasks.size()));
  if (compare) {
    // Strategies are compared on one device, one problem at a time, so their times compare.
    json rows = json::array();
    if (!json_) {
      fmt::print("{:<44} {:<5} {:<11} {:>8} {:>9} {:>10} {:<22} {:>9}\n", "problem", "kernel",
                 "strategy", "measured", "seconds", "best ms", "winner", "vs best");
    }
    for (const tune::Task& task : tasks) {
      for (const tune::StrategyComparison& row :
           tune::compare_strategies(task, slots.front().device, slots.front().target,
                                    *slots.front().measurer, &log, options, clock, &progress)) {
        json entry = {{"problem", task.name()},
                      {"strategy", tune::to_string(row.strategy)},
                      {"measured", row.measured},
                      {"seconds", row.seconds}};
        if (row.winner) entry["winner"] = gen::to_string(*row.winner);
        if (row.winner_ms) entry["winner_ms"] = *row.winner_ms;
        if (row.ratio_to_best) entry["ratio_to_best"] = *row.ratio_to_best;
        rows.push_back(entry);
        if (!json_) {
          fmt::print("{:<44} {:<5} {:<11} {:>8} {:>9.1f} {:>10} {:<22} {:>9}\n",
                     tune::to_string(task.shape), gen::to_string(task.direction),
                     tune::to_string(row.strategy), row.measured, row.seconds,
                     row.winner_ms ? fmt::format("{:.4f}", *row.winner_ms) : "-",
                     row.winner ? gen::to_string(*row.winner) : "-",
                     row.ratio_to_best ? fmt::format("{:.3f}x", *row.ratio_to_best) : "-");
        }
      }
    }
    progress.finish();
    if (json_) fmt::print("{}\n", json{{"comparison", rows}}.dump(2));
    return 0;
  }

  const std::vector<tune::ProblemOutcome> outcomes =
      tune::run_tasks(tasks, slots, &log, options, clock, &progress);
  progress.finish();
  int restarts = 0;
  for (const auto& worker : workers) restarts += worker->restarts();
  const bool all_won =
      std::all_of(outcomes.begin(), outcomes.end(),
                  [](const tune::ProblemOutcome& o) { return o.winner.has_value(); });
  if (json_) {
    json problems = json::array();
    for (const tune::ProblemOutcome& o : outcomes) problems.push_back(outcome_json(o));
    fmt::print("{}\n", json{{"strategy", strategy_},
                            {"database", database_path},
                            {"worker_restarts", restarts},
                            {"problems", problems}}
                           .dump(2));
  } else {
    print_summary(outcomes);
    fmt::print("{} problems, {} with a winner, {} worker restarts; results in {}\n",
               outcomes.size(),
               std::count_if(outcomes.begin(), outcomes.end(),
                             [](const tune::ProblemOutcome& o) { return o.winner.has_value(); }),
               restarts, database_path);
  }
  return all_won ? 0 : 1;
}

}  // namespace sigattn::cli
