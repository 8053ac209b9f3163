// `sigattn tune`: time the candidate tiles of a set of shapes on the GPUs here and store the
// winners in the user database; and the hidden `sigattn tune-worker`, the process the candidates
// run in. Usage errors are thrown as std::invalid_argument (exit 2 in cli/main.cpp) before the
// database is opened.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace sigattn::cli {

class TuneCommand {
 public:
  // Adds `tune` and `tune-worker` to app.
  explicit TuneCommand(CLI::App& app);

  bool parsed() const { return tune_->parsed() || worker_->parsed(); }
  // Runs the parsed command on the database at path. Returns the exit status: 0 when every
  // problem has a winner (or, without a GPU, every kernel compiled), 1 otherwise.
  int run(const std::string& database_path);

 private:
  int run_tune(const std::string& database_path);
  int run_worker(const std::string& database_path);

  CLI::App* tune_;
  CLI::App* worker_;
  std::string preset_;
  std::vector<std::string> shapes_;
  std::string shapes_file_;
  std::string strategy_ = "model";
  int budget_ = 12;
  int repetitions_ = 30;
  int finalists_ = 3;
  std::string devices_ = "all";
  std::string shard_;
  double timeout_seconds_ = 300.0;
  unsigned jobs_ = 0;
  std::string arch_ = "sm_90a";
  bool json_ = false;
  bool stale_ = false;
  unsigned long long seed_ = 1;
  int worker_device_ = 0;
};

}  // namespace sigattn::cli
