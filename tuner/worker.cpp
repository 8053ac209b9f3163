// Both sides of the worker protocol: the worker's request loop with its background compile
// threads, the child process over a socket pair, and the parent's Measurer with the watchdog,
// restarts and blame for a worker that died.
#include "tuner/worker.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <istream>
#include <mutex>
#include <ostream>
#include <stdexcept>
#include <thread>

#include "generator/generator.hpp"

namespace sigattn::tune {
namespace {

using cache::CandidateStatus;
using nlohmann::json;

// Writes whole lines from several threads.
class LineWriter {
 public:
  explicit LineWriter(std::ostream& out) : out_(out) {}
  void write(const json& message) {
    std::lock_guard lock(mutex_);
    out_ << message.dump() << '\n';
    out_.flush();
  }

 private:
  std::mutex mutex_;
  std::ostream& out_;
};

// Background compiles of the current task's tiles; a new task drops what has not started.
class CompilePool {
 public:
  CompilePool(CandidateRunner& runner, LineWriter& writer, int threads)
      : runner_(runner), writer_(writer) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
  }
  ~CompilePool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      queue_.clear();
    }
    ready_.notify_all();
    for (std::thread& thread : threads_) thread.join();
  }
  void replace(std::vector<gen::Variant> variants) {
    {
      std::lock_guard lock(mutex_);
      queue_.assign(variants.begin(), variants.end());
    }
    ready_.notify_all();
  }

 private:
  void work() {
    while (true) {
      gen::Variant variant;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (stopping_) return;
        variant = queue_.front();
        queue_.pop_front();
      }
      const std::string name = gen::to_string(variant);
      writer_.write({{"event", "compile_started"}, {"variant", name}});
      json done = {{"event", "compiled"}, {"variant", name}};
      try {
        const CompileInfo info = runner_.compile(variant);
        done["status"] = "ok";
        done["registers"] = info.registers;
        done["spill_store_bytes"] = info.spill_store_bytes;
        done["spill_load_bytes"] = info.spill_load_bytes;
      } catch (const std::exception& error) {
        done["status"] = "compile_error";
        done["message"] = error.what();
      }
      writer_.write(done);
    }
  }

  CandidateRunner& runner_;
  LineWriter& writer_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<gen::Variant> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

std::string signal_name(int signal) {
  const char* name = sigabbrev_np(signal);
  return name != nullptr ? fmt::format("SIG{}", name) : std::to_string(signal);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by {}", signal_name(WTERMSIG(status)));
  return "ended";
}

}  // namespace

json measurement_json(const Measurement& m) {
  json j = {{"status", cache::to_string(m.status)},
            {"skipped_spilling", m.skipped_spilling},
            {"registers", m.compile.registers},
            {"spill_store_bytes", m.compile.spill_store_bytes},
            {"spill_load_bytes", m.compile.spill_load_bytes},
            {"message", m.message}};
  if (m.timing) {
    j["timing"] = {{"repetitions", m.timing->repetitions},
                   {"median_ms", m.timing->median_ms},
                   {"min_ms", m.timing->min_ms},
                   {"max_ms", m.timing->max_ms}};
  }
  return j;
}

Measurement measurement_from_json(const json& j) {
  Measurement m;
  m.status = cache::parse_candidate_status(j.at("status").get<std::string>());
  m.skipped_spilling = j.at("skipped_spilling").get<bool>();
  m.compile.registers = j.at("registers").get<int>();
  m.compile.spill_store_bytes = j.at("spill_store_bytes").get<int>();
  m.compile.spill_load_bytes = j.at("spill_load_bytes").get<int>();
  m.message = j.at("message").get<std::string>();
  if (j.contains("timing")) {
    const json& t = j["timing"];
    m.timing = Timing{t.at("repetitions").get<int>(), t.at("median_ms").get<double>(),
                      t.at("min_ms").get<double>(), t.at("max_ms").get<double>()};
  }
  return m;
}

json device_json(const cache::DeviceKey& device) {
  return {{"name", device.name}, {"arch", device.arch}, {"sm_count", device.sm_count}};
}

cache::DeviceKey device_from_json(const json& j) {
  return {j.at("name").get<std::string>(), j.at("arch").get<std::string>(),
          j.at("sm_count").get<int>()};
}

int serve_worker(std::istream& in, std::ostream& out, CandidateRunner& runner,
                 int compile_threads) {
  LineWriter writer(out);
  try {
    writer.write({{"event", "ready"}, {"device", device_json(runner.device())}});
  } catch (const std::exception& error) {
    writer.write({{"event", "failed"}, {"message", error.what()}});
    return 1;
  }
  CompilePool pool(runner, writer, compile_threads);
  std::optional<Task> task;
  std::string line;
  while (std::getline(in, line)) {
    json request;
    try {
      request = json::parse(line);
      const std::string op = request.at("op").get<std::string>();
      if (op == "quit") return 0;
      if (op == "task") {
        try {
          task = task_from_json(request.at("task"));
          pool.replace({});
          runner.set_task(*task);
          writer.write({{"event", "task_ready"}});
        } catch (const std::exception& error) {
          task.reset();
          writer.write({{"event", "task_failed"}, {"message", error.what()}});
        }
      } else if (op == "compile") {
        if (!task) throw std::invalid_argument("compile before any task");
        std::vector<gen::Variant> variants;
        for (const json& tile : request.at("tiles")) {
          variants.push_back({task->spec, gen::parse_tile(tile.get<std::string>())});
        }
        pool.replace(std::move(variants));
      } else if (op == "measure") {
        if (!task) throw std::invalid_argument("measure before any task");
        const gen::TileConfig tile = gen::parse_tile(request.at("tile").get<std::string>());
        const MeasureRequest measure_request{request.at("repetitions").get<int>(),
                                             request.at("skip_if_spills").get<bool>()};
        Measurement m = runner.measure(tile, measure_request, [&](std::string_view phase) {
          writer.write({{"event", "phase"}, {"phase", phase}});
        });
        json answer = measurement_json(m);
        answer["event"] = "measured";
        answer["tile"] = gen::to_string(tile);
        answer["context_lost"] = runner.context_lost();
        writer.write(answer);
        if (runner.context_lost()) return 3;
      } else {
        throw std::invalid_argument(fmt::format("unknown op '{}'", op));
      }
    } catch (const std::exception& error) {
      writer.write({{"event", "protocol_error"}, {"message", error.what()}, {"request", line}});
    }
  }
  return 0;
}

Subprocess::Subprocess(const std::vector<std::string>& command) {
  if (command.empty()) throw std::runtime_error("no worker command");
  int sockets[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets) != 0) {
    throw std::runtime_error(fmt::format("socketpair failed: {}", std::strerror(errno)));
  }
  // Everything the child needs is prepared before fork: after it only async-signal-safe calls.
  std::vector<char*> argv;
  for (const std::string& arg : command) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(sockets[0]);
    close(sockets[1]);
    throw std::runtime_error(fmt::format("fork failed: {}", std::strerror(errno)));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    // dup2 clears FD_CLOEXEC on the copies.
    if (dup2(sockets[1], STDIN_FILENO) < 0 || dup2(sockets[1], STDOUT_FILENO) < 0) _exit(126);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(sockets[1]);
  pid_ = pid;
  socket_ = sockets[0];
}

Subprocess::~Subprocess() {
  kill();
  if (socket_ >= 0) close(socket_);
}

bool Subprocess::write_line(const std::string& line) {
  const std::string data = line + "\n";
  std::size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = send(socket_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<std::size_t>(n);
  }
  return true;
}

Subprocess::Read Subprocess::read_line(std::string& line, double timeout_seconds) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_seconds));
  while (true) {
    if (const std::size_t end = buffer_.find('\n'); end != std::string::npos) {
      line = buffer_.substr(0, end);
      buffer_.erase(0, end + 1);
      return Read::line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Read::timeout;
    pollfd descriptor{socket_, POLLIN, 0};
    const int ready =
        poll(&descriptor, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) return Read::closed;
    if (ready <= 0) continue;
    char chunk[4096];
    const ssize_t n = recv(socket_, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Read::closed;
    buffer_.append(chunk, static_cast<std::size_t>(n));
  }
}

void Subprocess::kill() {
  if (pid_ <= 0 || ended_) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  ended_ = describe_status(status);
}

std::string Subprocess::wait(double timeout_seconds) {
  if (ended_) return *ended_;
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_seconds));
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    const pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      ended_ = describe_status(status);
      return *ended_;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill();
  return *ended_ + " (after waiting for it to end)";
}

WorkerMeasurer::WorkerMeasurer(WorkerOptions options) : options_(std::move(options)) {}

WorkerMeasurer::~WorkerMeasurer() {
  if (process_) {
    process_->write_line(json{{"op", "quit"}}.dump());
    process_->wait(10.0);
  }
}

void WorkerMeasurer::stop_worker(double wait_seconds) {
  if (!process_) return;
  last_exit_ = wait_seconds > 0 ? process_->wait(wait_seconds) : (process_->kill(), "killed");
  process_.reset();
  compiling_.clear();
}

WorkerMeasurer::Answer WorkerMeasurer::await(const std::set<std::string>& wanted, json& event) {
  std::string line;
  while (true) {
    switch (process_->read_line(line, options_.watchdog_seconds)) {
      case Subprocess::Read::timeout:
        return Answer::timeout;
      case Subprocess::Read::closed:
        return Answer::closed;
      case Subprocess::Read::line:
        break;
    }
    try {
      event = json::parse(line);
    } catch (const json::parse_error&) {
      // Not protocol: something in the worker printed to stdout. Pass it on.
      fmt::print(stderr, "{}\n", line);
      continue;
    }
    const std::string kind = event.value("event", "");
    if (kind == "compile_started") compiling_.insert(event.value("variant", ""));
    if (kind == "compiled") compiling_.erase(event.value("variant", ""));
    if (kind == "phase") phase_ = event.value("phase", "");
    if (kind == "protocol_error") {
      throw std::logic_error(
          fmt::format("the tuning worker rejected a request: {}", event.value("message", "")));
    }
    if (wanted.contains(kind)) return Answer::ok;
  }
}

void WorkerMeasurer::start() {
  ++starts_;
  if (starts_ > 1) ++restarts_;
  try {
    process_ = std::make_unique<Subprocess>(options_.command);
  } catch (const std::runtime_error& error) {
    throw TaskError(fmt::format("cannot start the tuning worker: {}", error.what()));
  }
  json event;
  const Answer answer = await({"ready", "failed"}, event);
  if (answer != Answer::ok || event["event"] == "failed") {
    const std::string why = answer == Answer::ok        ? event.value("message", "")
                            : answer == Answer::timeout ? "it did not report ready in time"
                                                        : "it ended before reporting ready";
    stop_worker(answer == Answer::closed ? 5.0 : 0.0);
    throw TaskError(fmt::format("the tuning worker ({}) cannot run: {} ({})",
                                fmt::join(options_.command, " "), why, last_exit_));
  }
  const cache::DeviceKey device = device_from_json(event.at("device"));
  if (device_ && !(*device_ == device)) {
    throw TaskError(fmt::format("the restarted worker reports another device ({} instead of {})",
                                device.name, device_->name));
  }
  device_ = device;
}

cache::DeviceKey WorkerMeasurer::device() {
  if (!process_) start();
  return *device_;
}

void WorkerMeasurer::send_task() {
  for (int attempt = 0;; ++attempt) {
    if (!process_) start();
    json event;
    Answer answer = Answer::closed;
    if (process_->write_line(json{{"op", "task"}, {"task", *task_}}.dump())) {
      answer = await({"task_ready", "task_failed"}, event);
    }
    if (answer == Answer::ok && event["event"] == "task_ready") break;
    if (answer == Answer::ok) {
      throw TaskError(
          fmt::format("the worker cannot set up the task: {}", event.value("message", "")));
    }
    stop_worker(answer == Answer::closed ? 5.0 : 0.0);
    if (attempt == 1) {
      throw TaskError(fmt::format("the worker {} twice while setting up the task ({})",
                                  answer == Answer::timeout ? "timed out" : "died", last_exit_));
    }
  }
  if (serial_ || pending_.empty()) return;
  json tiles = json::array();
  for (const gen::TileConfig& tile : pending_) tiles.push_back(gen::to_string(tile));
  process_->write_line(json{{"op", "compile"}, {"tiles", tiles}}.dump());
}

void WorkerMeasurer::begin_task(const Task& task, const std::vector<gen::TileConfig>& tiles) {
  task_ = task;
  spec_ = task.spec;
  pending_ = tiles;
  serial_ = false;
  send_task();
}

Measurement WorkerMeasurer::measure(const gen::TileConfig& tile, const MeasureRequest& request) {
  if (!task_) throw std::logic_error("measure before begin_task");
  const std::string tile_name = gen::to_string(tile);
  const std::string variant = gen::to_string(gen::Variant{spec_, tile});
  std::erase(pending_, tile);
  for (int attempt = 0;; ++attempt) {
    if (!process_) {
      try {
        send_task();
      } catch (const TaskError& error) {
        Measurement m;
        m.status = CandidateStatus::launch_error;
        m.message = fmt::format("not measured: {}", error.what());
        return m;
      }
    }
    phase_.clear();
    json event;
    Answer answer = Answer::closed;
    if (process_->write_line(json{{"op", "measure"},
                                  {"tile", tile_name},
                                  {"repetitions", request.repetitions},
                                  {"skip_if_spills", request.skip_if_spills}}
                                 .dump())) {
      answer = await({"measured"}, event);
    }
    if (answer == Answer::ok) {
      Measurement m = measurement_from_json(event);
      if (event.value("context_lost", false)) stop_worker(10.0);
      return m;
    }
    Measurement m;
    const std::string phase = phase_.empty() ? "compile" : phase_;
    if (answer == Answer::timeout) {
      stop_worker(0.0);
      m.status = CandidateStatus::timeout;
      m.message = fmt::format(
          "no answer within {:.0f} s while in the {} phase of {}: the worker was killed (a hang)",
          options_.watchdog_seconds, phase, variant);
      return m;
    }
    const bool background_suspect = !serial_ && !compiling_.empty();
    stop_worker(5.0);
    if (background_suspect && attempt == 0) {
      // A background compile may have crashed the worker: retry this tile with every compile
      // done inside its own measurement, one at a time.
      serial_ = true;
      continue;
    }
    m.status = phase == "compile" ? CandidateStatus::compile_error : CandidateStatus::launch_error;
    m.message = fmt::format("the worker process died ({}) in the {} phase of {}", last_exit_, phase,
                            variant);
    return m;
  }
}

}  // namespace sigattn::tune
