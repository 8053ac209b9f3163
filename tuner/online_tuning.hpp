// Opt-in online tuning ($SIGATTN_ONLINE_TUNING=1 or sigattn::set_online_tuning): a forward call
// whose tile came from the heuristic default asks for its shape to be tuned. A background thread
// runs `sigattn tune` for that shape in a child process (a faulting candidate cannot take the
// application down) with a small candidate budget and a time limit, writing to the user database,
// then makes the runtime read the tuning results again, so later calls use the winner.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>
#include <sigattn/sigattn.hpp>
#include <string>
#include <thread>
#include <vector>

#include "generator/kernel_spec.hpp"
#include "tuner/shapes.hpp"

namespace sigattn::tune {

// The shape a tuning run measures for a forward call, or nothing when the shape strings cannot
// describe the call (varlen, sliding window, score_mod, different query and key lengths). A
// padded call is tuned with 25 % padding: its real lengths are on the device.
std::optional<Shape> online_shape(const ForwardArgs& args, const gen::KernelSpec& spec);

// The `sigattn` program that runs the tuning: $SIGATTN_EXECUTABLE, else `sigattn` beside the
// loaded library (the build tree) or in ../bin (an installed prefix).
std::filesystem::path tune_executable();

class OnlineTuner {
 public:
  // Candidates measured per shape (the random strategy, which always includes the heuristic
  // default) and the wall-clock limit of one tuning run.
  static constexpr int kBudget = 8;
  static constexpr int kTimeLimitSeconds = 300;

  static OnlineTuner& instance();
  ~OnlineTuner();

  // Starts enabled when $SIGATTN_ONLINE_TUNING is 1.
  void set_enabled(bool enabled);
  bool enabled() const;

  // Queues a tuning run of the shape into `database`, once per shape per process. Returns
  // whether it was queued (false: disabled, or asked before).
  bool request(const Shape& shape, const std::filesystem::path& database);

  // Blocks until every queued run has finished.
  void wait_idle();

  // The command line of one run (program first).
  static std::vector<std::string> command(const std::filesystem::path& executable,
                                          const Shape& shape,
                                          const std::filesystem::path& database);

 private:
  OnlineTuner();
  void run_queue();

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  bool enabled_ = false;
  std::atomic<bool> stopping_ = false;
  bool busy_ = false;
  std::set<std::string> requested_;
  std::deque<std::vector<std::string>> queue_;
  std::thread thread_;
};

}  // namespace sigattn::tune
