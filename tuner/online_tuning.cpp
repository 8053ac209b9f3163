// The online tuner's queue and child processes, and the hook through which forward() reaches
// them. Each run is `sigattn tune --shape S --db D --strategy random --budget N`, killed when it
// outlasts the time limit (every candidate it finished is already in the database); its output is
// discarded, since the application owns stdout and stderr.
#include "tuner/online_tuning.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "runtime/environment.hpp"
#include "runtime/install_paths.hpp"
#include "runtime/log.hpp"
#include "runtime/online_tuning_hook.hpp"
#include "runtime/persistent_cache.hpp"

extern char** environ;

namespace sigattn::tune {
namespace {

constexpr int kPaddingOfPaddedCalls = 25;

// Runs the command with stdin, stdout and stderr on /dev/null; kills it after the limit or when
// `stop` is set (the process is exiting).
void run_child(const std::vector<std::string>& command, std::chrono::seconds limit,
               const std::atomic<bool>& stop) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  for (int fd : {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO}) {
    posix_spawn_file_actions_addopen(&actions, fd, "/dev/null",
                                     fd == STDIN_FILENO ? O_RDONLY : O_WRONLY, 0);
  }
  std::vector<char*> argv;
  for (const std::string& word : command) argv.push_back(const_cast<char*>(word.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) {
    logging::warn("online tuning cannot start {}: {}", command[0], std::strerror(spawned));
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (stop || std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// The runtime's hook: queues the call's shape when online tuning is on and the shape can be
// described.
void request_for_call(const ForwardArgs& args, const gen::KernelSpec& spec) {
  OnlineTuner& tuner = OnlineTuner::instance();
  if (!tuner.enabled()) return;
  if (const std::optional<Shape> shape = online_shape(args, spec)) {
    tuner.request(*shape, PersistentCache::instance().database_path());
  }
}

// Installs the hook when the program starts.
const struct HookRegistrar {
  HookRegistrar() { install_online_tuning_hook(request_for_call); }
} registrar;

}  // namespace

std::optional<Shape> online_shape(const ForwardArgs& args, const gen::KernelSpec& spec) {
  if (spec.layout == gen::Layout::varlen || spec.window || spec.score_mod ||
      args.max_seqlen_q != args.max_seqlen_k) {
    return std::nullopt;
  }
  Shape shape;
  shape.pass = Pass::forward;
  shape.dtype = spec.dtype;
  shape.head_dim = spec.head_dim;
  shape.seqlen = args.max_seqlen_q;
  shape.padding_percent = spec.layout == gen::Layout::padded ? kPaddingOfPaddedCalls : 0;
  shape.batch = args.batch;
  shape.heads_q = args.heads_q;
  shape.heads_kv = args.heads_kv;
  shape.causal = spec.causal;
  shape.sigmoid = spec.sigmoid;
  return shape;
}

std::filesystem::path tune_executable() {
  if (const char* explicit_path = std::getenv("SIGATTN_EXECUTABLE"); explicit_path != nullptr) {
    return explicit_path;
  }
  const std::filesystem::path binary = DataDirSearch::for_this_process().binary;
  if (binary.filename() == "sigattn") return binary;
  const std::filesystem::path beside = binary.parent_path() / "sigattn";
  std::error_code error;
  if (std::filesystem::exists(beside, error)) return beside;
  return binary.parent_path() / ".." / "bin" / "sigattn";
}

OnlineTuner& OnlineTuner::instance() {
  static OnlineTuner tuner;
  return tuner;
}

OnlineTuner::OnlineTuner() {
  enabled_ = environment_switch("SIGATTN_ONLINE_TUNING").value_or(false);
}

OnlineTuner::~OnlineTuner() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    queue_.clear();
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void OnlineTuner::set_enabled(bool enabled) {
  std::lock_guard lock(mutex_);
  enabled_ = enabled;
}

bool OnlineTuner::enabled() const {
  std::lock_guard lock(mutex_);
  return enabled_;
}

std::vector<std::string> OnlineTuner::command(const std::filesystem::path& executable,
                                              const Shape& shape,
                                              const std::filesystem::path& database) {
  return {executable.string(), "tune",       "--shape", to_string(shape), "--db",
          database.string(),   "--strategy", "random",  "--budget",       std::to_string(kBudget)};
}

bool OnlineTuner::request(const Shape& shape, const std::filesystem::path& database) {
  {
    std::lock_guard lock(mutex_);
    if (!enabled_ || stopping_) return false;
    if (!requested_.insert(to_string(shape)).second) return false;
    queue_.push_back(command(tune_executable(), shape, database));
    if (!thread_.joinable()) thread_ = std::thread([this] { run_queue(); });
  }
  changed_.notify_all();
  return true;
}

void OnlineTuner::wait_idle() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [this] { return queue_.empty() && !busy_; });
}

void OnlineTuner::run_queue() {
  std::unique_lock lock(mutex_);
  while (true) {
    changed_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    const std::vector<std::string> next = queue_.front();
    queue_.pop_front();
    busy_ = true;
    lock.unlock();
    run_child(next, std::chrono::seconds(kTimeLimitSeconds), stopping_);
    PersistentCache::instance().forget_tile_choices();
    lock.lock();
    busy_ = false;
    changed_.notify_all();
  }
}

}  // namespace sigattn::tune

namespace sigattn {

void set_online_tuning(bool enabled) { tune::OnlineTuner::instance().set_enabled(enabled); }

}  // namespace sigattn

// Nothing calls this: programs linked with the static library name it (-Wl,--undefined, see
// CMakeLists.txt) so that the linker keeps this file, and with it the registrar above.
extern "C" void sigattn_online_tuner_anchor() {}
