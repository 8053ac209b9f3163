// `sigattn db show|export|import|merge|verify|prune`: the user database from the command line.
// Commands return an exit code for what they found (0, or 1 when verify finds problems) and throw
// for errors, which cli/main.cpp turns into exit codes.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

namespace sigattn::cli {

class DbCommands {
 public:
  // Adds the `db` subcommand and its subcommands to app.
  explicit DbCommands(CLI::App& app);

  bool parsed() const { return db_->parsed(); }
  // Runs the parsed subcommand on the database at path (the resolved --db, $SIGATTN_DB or the
  // default location).
  int run(const std::string& path);

 private:
  CLI::App* db_;
  CLI::App* show_;
  CLI::App* export_;
  CLI::App* import_;
  CLI::App* merge_;
  CLI::App* verify_;
  CLI::App* prune_;
  std::string export_file_;
  std::string import_file_;
  std::string merge_source_;
  std::optional<int> prune_older_than_days_;
  bool prune_tuning_ = false;
};

}  // namespace sigattn::cli
