// Candidates run in a worker process, so that a kernel that faults (an illegal address leaves the
// CUDA context unusable), a kernel that hangs, or a compiler that crashes costs one candidate and
// a restart, never the run. The parent and the worker speak one JSON object per line over a
// socket pair (the worker's stdin and stdout):
//   worker:  {"event":"ready","device":{...}} | {"event":"failed","message":...}   (at start)
//   parent:  {"op":"task","task":{...}}     worker: {"event":"task_ready"} |
//   {"event":"task_failed",...} parent:  {"op":"compile","tiles":[...]} worker, as it goes:
//   {"event":"compile_started",
//            "variant":...}, {"event":"compiled","variant":...,"status":...}
//   parent:  {"op":"measure","tile":...,"repetitions":N,"skip_if_spills":bool}
//            worker: {"event":"phase","phase":"compile"|"verify"|"time"}..., then
//            {"event":"measured",...,"context_lost":bool}; after a lost context the worker exits.
//   parent:  {"op":"quit"}
// The parent's watchdog kills a worker that does not answer in time (status timeout); a worker
// that dies is blamed on the phase it was in (compile_error or launch_error), after one retry
// without background compiles when a background compile could have been the cause.
#pragma once

#include <functional>
#include <iosfwd>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "cache/tuning_store.hpp"
#include "tuner/measurer.hpp"

namespace sigattn::tune {

// What runs candidates inside the worker process.
class CandidateRunner {
 public:
  virtual ~CandidateRunner() = default;
  // The device this runner measures on; throws when it cannot be used.
  virtual cache::DeviceKey device() = 0;
  // Prepares inputs and the reference of a task; throws std::exception on failure.
  virtual void set_task(const Task& task) = 0;
  // Compiles one variant (called from several threads at once); throws when it does not compile.
  virtual CompileInfo compile(const gen::Variant& variant) = 0;
  // Measures a tile of the current task, calling `phase` as it enters each phase.
  virtual Measurement measure(const gen::TileConfig& tile, const MeasureRequest& request,
                              const std::function<void(std::string_view)>& phase) = 0;
  // True after a measurement whose failure left the device unusable in this process.
  virtual bool context_lost() const = 0;
};

// The worker's loop: answers requests from `in` on `out` until quit or end of input, compiling in
// the background on `compile_threads` threads. Returns the process exit status.
int serve_worker(std::istream& in, std::ostream& out, CandidateRunner& runner, int compile_threads);

nlohmann::json measurement_json(const Measurement& m);
Measurement measurement_from_json(const nlohmann::json& j);
nlohmann::json device_json(const cache::DeviceKey& device);
cache::DeviceKey device_from_json(const nlohmann::json& j);

// A child process whose stdin and stdout are one end of a socket pair; killed and reaped on
// destruction. Dies with its parent (PR_SET_PDEATHSIG).
class Subprocess {
 public:
  // Throws std::runtime_error when the process cannot be started.
  explicit Subprocess(const std::vector<std::string>& command);
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  // False when the process no longer reads.
  bool write_line(const std::string& line);
  enum class Read { line, timeout, closed };
  Read read_line(std::string& line, double timeout_seconds);
  // SIGKILL and reap.
  void kill();
  // Waits up to timeout_seconds for the process to end (then kills it); how it ended.
  std::string wait(double timeout_seconds);

 private:
  int pid_ = -1;
  int socket_ = -1;
  std::string buffer_;
  std::optional<std::string> ended_;
};

struct WorkerOptions {
  std::vector<std::string> command;  // e.g. {"/proc/self/exe", "tune-worker", "--device", "0"}
  double watchdog_seconds = 300.0;   // longest wait for one answer (a task's setup, a measurement)
};

// The parent's side: a Measurer whose candidates run in a worker process, restarted as needed.
class WorkerMeasurer : public Measurer {
 public:
  explicit WorkerMeasurer(WorkerOptions options);
  ~WorkerMeasurer() override;

  // The worker's device (starting it if needed). Throws TaskError when it cannot start.
  cache::DeviceKey device();
  void begin_task(const Task& task, const std::vector<gen::TileConfig>& tiles) override;
  Measurement measure(const gen::TileConfig& tile, const MeasureRequest& request) override;
  // Workers started after the first.
  int restarts() const { return restarts_; }

 private:
  enum class Answer { ok, timeout, closed };
  void start();
  void send_task();
  void stop_worker(double wait_seconds);
  // Reads until an event in `wanted` arrives, tracking compile and phase events on the way.
  Answer await(const std::set<std::string>& wanted, nlohmann::json& event);

  WorkerOptions options_;
  std::unique_ptr<Subprocess> process_;
  std::optional<cache::DeviceKey> device_;
  int starts_ = 0;
  int restarts_ = 0;
  std::optional<nlohmann::json> task_;
  gen::KernelSpec spec_;
  std::vector<gen::TileConfig> pending_;  // not measured yet in this task
  bool serial_ = false;  // compile only inside measurements, one at a time (after a crash)
  std::set<std::string> compiling_;  // variants whose background compile is in flight
  std::string phase_;
  std::string last_exit_;
};

}  // namespace sigattn::tune
