// The `sigattn` command line on databases it may only read and on old ones: `db show`, `db verify`
// and `db export` of a database in a directory this user cannot write, `db merge` of a shard
// written by an older sigattn (left as it was), and empty values of --db and --shard.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "cache/database.hpp"
#include "cache/tuning_store.hpp"
#include "cli_runner.hpp"
#include "generator/template_store.hpp"
#include "temp_dir.hpp"
#include "unprivileged.hpp"

namespace sigattn {
namespace {

using sigattn::testing::CliRun;
using sigattn::testing::run_cli;
using sigattn::testing::TempDir;

// A database holding one tuning result that `db verify` accepts.
void create_with_one_result(const std::filesystem::path& path) {
  cache::Database db(path, cache::OpenMode::read_write);
  cache::TuningResult result;
  result.device = {"NVIDIA H200", "sm_90a", 132};
  result.template_hash = gen::template_hash();
  result.problem =
      cache::problem_key(gen::parse_spec("fwd.fp16.d64.dense.causal.nosmod.fast.x128"), 4096, 4096);
  result.tile = gen::TileConfig{64, 64, 4, 3};
  result.time_ms = 1.0;
  result.tflops = 100.0;
  result.measured_at = "2026-11-28T12:00:00Z";
  cache::TuningStore(db).put_best(result);
}

std::string describe(const CliRun& run) {
  return "exit " + std::to_string(run.exit_code) + "\nstdout:\n" + run.out + "\nstderr:\n" +
         run.err;
}

TEST(CliDatabases, InspectingNeedsNoWriteAccess) {
  TempDir dir;
  const std::string path = (dir / "shipped.db").string();
  create_with_one_result(path);
  ::chmod(path.c_str(), 0444);
  ::chmod(dir.path().c_str(), 0555);
  const std::string problem = sigattn::testing::run_unprivileged([&]() -> std::string {
    const CliRun show = run_cli({"db", "show", "--db", path});
    if (show.exit_code != 0 || show.out.find("tuning results: 1") == std::string::npos) {
      return "db show: " + describe(show);
    }
    const CliRun verify = run_cli({"db", "verify", "--db", path});
    if (verify.exit_code != 0 || !verify.out.ends_with("ok\n"))
      return "db verify: " + describe(verify);
    const CliRun exported = run_cli({"db", "export", "--db", path});
    if (exported.exit_code != 0 || exported.out.find("\"time_ms\": 1.0") == std::string::npos) {
      return "db export: " + describe(exported);
    }
    return {};
  });
  EXPECT_EQ(problem, "");
  for (const char* suffix : {"-wal", "-shm"}) {
    EXPECT_FALSE(std::filesystem::exists(path + suffix)) << suffix;
  }
}

TEST(CliDatabases, MergeReadsAShardOfAnOlderSchemaAndLeavesItAlone) {
  TempDir dir;
  const std::filesystem::path shard = dir / "shard.db";
  create_with_one_result(shard);
  // Back to schema 2, as an older sigattn wrote it.
  {
    cache::Database db(shard, cache::OpenMode::read_write);
    db.prepare("DELETE FROM schema_version WHERE version > 2").run();
    db.prepare("ALTER TABLE binaries DROP COLUMN served").run();
  }
  const CliRun merge = run_cli({"db", "merge", shard.string(), "--db", (dir / "all.db").string()});
  EXPECT_EQ(merge.exit_code, 0) << describe(merge);
  EXPECT_NE(merge.out.find("results kept: 1"), std::string::npos) << describe(merge);
  cache::Database merged(dir / "all.db", cache::OpenMode::read_only);
  EXPECT_EQ(cache::TuningStore(merged).all_best().size(), 1u);
  // Read with plain SQLite: this code would read it through a migrated copy.
  sqlite3* untouched = nullptr;
  ASSERT_EQ(sqlite3_open_v2(shard.c_str(), &untouched, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* version = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(untouched, "SELECT max(version) FROM schema_version", -1, &version,
                               nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(version), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(version, 0), 2);
  sqlite3_finalize(version);
  sqlite3_close(untouched);
}

TEST(CliDatabases, EmptyValuesAreUsageErrors) {
  TempDir dir;
  const std::string path = (dir / "never.db").string();
  const CliRun db = run_cli({"--db", "", "db", "show"});
  EXPECT_EQ(db.exit_code, 2) << describe(db);
  EXPECT_NE(db.err.find("--db must name a database file"), std::string::npos) << describe(db);
  const CliRun shard =
      run_cli({"tune", "--shape", "fwd.bf16.d64.L1024", "--shard", "", "--db", path});
  EXPECT_EQ(shard.exit_code, 2) << describe(shard);
  EXPECT_NE(shard.err.find("--shard must not be empty"), std::string::npos) << describe(shard);
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace sigattn
