// The database file: creation with private permissions, WAL, schema migration from version 1, an
// older schema read from a migrated copy, a newer schema, files that are not databases or are
// truncated, a full disk, read-only files and directories (opened without writing anything), and
// the refusal of locations other users can write, through symbolic links too.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cache/database.hpp"
#include "temp_dir.hpp"
#include "unprivileged.hpp"

namespace sigattn::cache {
namespace {

using sigattn::testing::TempDir;

mode_t mode_of(const std::filesystem::path& path) {
  struct stat info {};
  EXPECT_EQ(::stat(path.c_str(), &info), 0) << path;
  return info.st_mode & 07777;
}

std::string single_text(Database& db, const std::string& sql) {
  Statement statement = db.prepare(sql);
  EXPECT_TRUE(statement.step()) << sql;
  return statement.text(0);
}

// Runs SQL with plain SQLite, as another program (or an older sigattn) would.
void run_sql(const std::filesystem::path& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* error = nullptr;
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK)
      << (error != nullptr ? error : "");
  sqlite3_free(error);
  sqlite3_close(db);
  ::chmod(path.c_str(), 0600);
}

// A database of schema version 1 with one tuning result, as a version 1 sigattn wrote it.
constexpr const char* kVersionOneDatabase = R"sql(
    CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);
    INSERT INTO schema_version VALUES (1, '2025-01-01 00:00:00');
    CREATE TABLE binaries (key TEXT PRIMARY KEY, template_hash TEXT NOT NULL,
      generator_version INTEGER NOT NULL, variant TEXT NOT NULL, tile TEXT NOT NULL,
      arch TEXT NOT NULL, nvrtc_version TEXT NOT NULL, options TEXT NOT NULL,
      source_hash TEXT NOT NULL, lowered_name TEXT NOT NULL, registers INTEGER NOT NULL,
      spill_store_bytes INTEGER NOT NULL, spill_load_bytes INTEGER NOT NULL,
      stack_frame_bytes INTEGER NOT NULL, compile_ms REAL NOT NULL, cubin BLOB NOT NULL,
      size INTEGER NOT NULL, integrity TEXT NOT NULL, created_at INTEGER NOT NULL,
      used_at INTEGER NOT NULL, use_sequence INTEGER NOT NULL);
    CREATE TABLE tuning_best (device_name TEXT NOT NULL, arch TEXT NOT NULL,
      sm_count INTEGER NOT NULL, template_hash TEXT NOT NULL, spec TEXT NOT NULL,
      seqlen_q_bucket INTEGER NOT NULL, seqlen_k_bucket INTEGER NOT NULL, tile TEXT NOT NULL,
      time_ms REAL NOT NULL, tflops REAL NOT NULL, measured_at TEXT NOT NULL,
      PRIMARY KEY (device_name, arch, sm_count, template_hash, spec, seqlen_q_bucket,
                   seqlen_k_bucket));
    INSERT INTO tuning_best VALUES ('NVIDIA H200', 'sm_90a', 132, 'h',
      'fwd.bf16.d128.dense.nomask.nosmod.fast.x128', 4096, 4096, 'sm80.m128n64w4s2', 0.5, 300.0,
      '2025-01-01T00:00:00Z');
  )sql";

// A new database at path holding one candidate row whose status is 'timeout'.
void create_with_one_candidate(const std::filesystem::path& path) {
  Database db(path, OpenMode::read_write);
  db.prepare(
        "INSERT INTO tuning_candidates VALUES ('d', 'sm_80', 1, 'h', 's', 1, 1, 't', "
        "'timeout', NULL, NULL, '', 'now')")
      .run();
}

std::string open_error(const std::filesystem::path& path, OpenMode mode) {
  try {
    Database db(path, mode);
  } catch (const DatabaseError& error) {
    return error.what();
  }
  return {};
}

TEST(Database, CreatesPrivateDirectoriesAndFileInWalMode) {
  TempDir dir;
  const std::filesystem::path path = dir / "a/b/sigattn.db";
  Database db(path, OpenMode::read_write);
  EXPECT_EQ(mode_of(dir / "a"), 0700u);
  EXPECT_EQ(mode_of(dir / "a/b"), 0700u);
  EXPECT_EQ(mode_of(path), 0600u);
  EXPECT_EQ(single_text(db, "PRAGMA journal_mode"), "wal");
  EXPECT_EQ(db.schema_version(), kSchemaVersion);
  EXPECT_TRUE(db.integrity_problems().empty());
}

TEST(Database, ReopeningKeepsRowsAndVersion) {
  TempDir dir;
  const std::filesystem::path path = dir / "sigattn.db";
  create_with_one_candidate(path);
  Database db(path, OpenMode::read_only);
  EXPECT_EQ(db.schema_version(), kSchemaVersion);
  EXPECT_EQ(single_text(db, "SELECT status FROM tuning_candidates"), "timeout");
}

TEST(Database, MigratesVersionOneKeepingItsRows) {
  TempDir dir;
  const std::filesystem::path path = dir / "old.db";
  run_sql(path, kVersionOneDatabase);
  Database db(path, OpenMode::read_write);
  EXPECT_EQ(db.schema_version(), kSchemaVersion);
  EXPECT_EQ(single_text(db, "SELECT tile || '|' || method || '|' || source FROM tuning_best"),
            "sm80.m128n64w4s2||");
  EXPECT_EQ(single_text(db, "SELECT count(*) FROM tuning_candidates"), "0");
  EXPECT_EQ(single_text(db, "SELECT count(served) FROM binaries"), "0");
  EXPECT_EQ(single_text(db, "SELECT group_concat(version) FROM schema_version"), "1,2,3,4");
}

TEST(Database, OlderSchemaOpenedReadOnlyIsReadFromAMigratedCopy) {
  TempDir dir;
  const std::filesystem::path path = dir / "old.db";
  run_sql(path, kVersionOneDatabase);
  {
    Database db(path, OpenMode::read_only);
    EXPECT_TRUE(db.read_only());
    EXPECT_EQ(db.schema_version(), kSchemaVersion);
    EXPECT_EQ(single_text(db, "SELECT tile || '|' || method FROM tuning_best"),
              "sm80.m128n64w4s2|");
    EXPECT_EQ(single_text(db, "SELECT count(*) FROM tuning_candidates"), "0");
  }
  // The file itself is as it was.
  run_sql(path, "CREATE TABLE check_version AS SELECT max(version) AS v FROM schema_version");
  Database reread(path, OpenMode::read_write);
  EXPECT_EQ(single_text(reread, "SELECT v FROM check_version"), "1");
}

TEST(Database, NewerSchemaIsRefusedReadOnlyToo) {
  TempDir dir;
  const std::filesystem::path path = dir / "new.db";
  run_sql(path,
          "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);"
          "INSERT INTO schema_version VALUES (99, 'later');");
  const std::string error = open_error(path, OpenMode::read_only);
  EXPECT_NE(error.find("schema version 99, newer than"), std::string::npos) << error;
}

TEST(Database, NewerSchemaIsRefusedAndLeftAlone) {
  TempDir dir;
  const std::filesystem::path path = dir / "new.db";
  run_sql(path,
          "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);"
          "INSERT INTO schema_version VALUES (99, 'later'); CREATE TABLE future (x);");
  const std::string error = open_error(path, OpenMode::read_write);
  EXPECT_NE(error.find("schema version 99, newer than"), std::string::npos) << error;
  // Nothing was migrated or dropped: the file still reads as it was written.
  run_sql(path, "INSERT INTO future VALUES (1)");
  EXPECT_NE(open_error(path, OpenMode::read_write).find("schema version 99"), std::string::npos);
}

TEST(Database, FileThatIsNotADatabaseIsAClearError) {
  TempDir dir;
  const std::filesystem::path path = dir / "text.db";
  std::ofstream(path) << std::string(8192, 'x');
  ::chmod(path.c_str(), 0600);
  const std::string error = open_error(path, OpenMode::read_write);
  EXPECT_NE(error.find("file is not a database"), std::string::npos) << error;
}

TEST(Database, TruncatedFileIsDetected) {
  TempDir dir;
  const std::filesystem::path path = dir / "sigattn.db";
  {
    Database db(path, OpenMode::read_write);
    Statement insert = db.prepare(
        "INSERT INTO tuning_candidates VALUES ('d', 'sm_80', 1, 'h', 's', 1, 1, ?1, "
        "'timeout', NULL, NULL, ?2, 'now')");
    for (int i = 0; i < 400; ++i) {
      insert.bind(1, std::to_string(i)).bind(2, std::string(200, 'm')).run();
      insert.reset();
    }
    // Move everything from the WAL into the main file before cutting it.
    db.prepare("PRAGMA wal_checkpoint(TRUNCATE)").run();
  }
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  std::vector<std::string> problems;
  try {
    Database db(path, OpenMode::read_write);
    problems = db.integrity_problems();
  } catch (const DatabaseError& error) {
    problems.push_back(error.what());
  }
  EXPECT_FALSE(problems.empty());
}

TEST(Database, FullDiskIsAnErrorThatLosesNoRows) {
  Database db = Database::in_memory();
  db.prepare(
        "INSERT INTO tuning_candidates VALUES ('d', 'sm_80', 1, 'h', 's', 1, 1, 'kept', "
        "'timeout', NULL, NULL, '', 'now')")
      .run();
  Statement pages = db.prepare("PRAGMA page_count");
  pages.step();
  // A disk that is full now: no page may be added.
  db.prepare("PRAGMA max_page_count = " + std::to_string(pages.integer(0))).run();
  Statement insert = db.prepare(
      "INSERT INTO tuning_candidates VALUES ('d', 'sm_80', 1, 'h', 's', 1, 1, 'big', "
      "'timeout', NULL, NULL, ?1, 'now')");
  insert.bind(1, std::string(1 << 20, 'x'));
  try {
    insert.run();
    FAIL() << "the insert should have failed";
  } catch (const DatabaseError& error) {
    EXPECT_NE(std::string(error.what()).find("full"), std::string::npos) << error.what();
    EXPECT_FALSE(error.statement().empty());
  }
  EXPECT_EQ(single_text(db, "SELECT group_concat(tile) FROM tuning_candidates"), "kept");
}

TEST(Database, RefusesADirectoryOthersCanWrite) {
  TempDir dir;
  ::chmod(dir.path().c_str(), 0777);
  const std::string error = open_error(dir / "sigattn.db", OpenMode::read_write);
  EXPECT_NE(error.find("writable by other users (mode 0777)"), std::string::npos) << error;
  EXPECT_FALSE(std::filesystem::exists(dir / "sigattn.db"));
}

TEST(Database, RefusesAFileOthersCanWrite) {
  TempDir dir;
  const std::filesystem::path path = dir / "sigattn.db";
  { Database db(path, OpenMode::read_write); }
  ::chmod(path.c_str(), 0666);
  const std::string error = open_error(path, OpenMode::read_only);
  EXPECT_NE(error.find("file " + path.string() + " is writable by other users"), std::string::npos)
      << error;
}

TEST(Database, RefusesAFileOfAnotherUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "changing a file's owner needs root";
  TempDir dir;
  const std::filesystem::path path = dir / "sigattn.db";
  { Database db(path, OpenMode::read_write); }
  ASSERT_EQ(::chown(path.c_str(), 12345, 12345), 0);
  EXPECT_NE(open_error(path, OpenMode::read_only).find("owned by uid 12345"), std::string::npos);
}

// A database (in WAL mode, as every one this code writes) in a directory of mode 0555 and itself
// 0444, as a prebuilt cache in a container image or a shared software tree.
std::filesystem::path read_only_database(const TempDir& dir) {
  const std::filesystem::path path = dir / "shipped.db";
  create_with_one_candidate(path);
  EXPECT_FALSE(std::filesystem::exists(path.string() + "-wal"));
  ::chmod(path.c_str(), 0444);
  ::chmod(dir.path().c_str(), 0555);
  return path;
}

TEST(Database, ReadOnlyFileInAReadOnlyDirectoryIsReadWithoutWritingAnything) {
  TempDir dir;
  const std::filesystem::path path = read_only_database(dir);
  const std::string problem = sigattn::testing::run_unprivileged([&]() -> std::string {
    if (usable_mode(path) != OpenMode::read_only) return "usable_mode is not read_only";
    Database db(path, OpenMode::read_only);
    Statement status = db.prepare("SELECT status FROM tuning_candidates");
    if (!status.step() || status.text(0) != "timeout") return "the row was not read";
    if (!db.integrity_problems().empty()) return "integrity_check failed";
    return {};
  });
  EXPECT_EQ(problem, "");
  for (const char* suffix : {"-wal", "-shm", "-journal"}) {
    EXPECT_FALSE(std::filesystem::exists(path.string() + suffix)) << suffix;
  }
}

TEST(Database, UsableModeIsReadWriteWhereThisProcessCanWrite) {
  TempDir dir;
  EXPECT_EQ(usable_mode(dir / "new.db"), OpenMode::read_write);
  { Database db(dir / "mine.db", OpenMode::read_write); }
  EXPECT_EQ(usable_mode(dir / "mine.db"), OpenMode::read_write);
}

TEST(Database, SymbolicLinkToADirectoryOthersCanWriteIsRefused) {
  TempDir dir;
  const std::filesystem::path open_directory = dir / "open";
  const std::filesystem::path private_directory = dir / "private";
  std::filesystem::create_directory(open_directory);
  std::filesystem::create_directory(private_directory);
  ::chmod(private_directory.c_str(), 0700);
  { Database db(open_directory / "target.db", OpenMode::read_write); }
  ::chmod(open_directory.c_str(), 0777);
  const std::filesystem::path link = private_directory / "sigattn.db";
  std::filesystem::create_symlink(open_directory / "target.db", link);
  // The target's own path is refused; so is the link to it.
  EXPECT_NE(open_error(open_directory / "target.db", OpenMode::read_only).find("writable by other"),
            std::string::npos);
  for (const OpenMode mode : {OpenMode::read_only, OpenMode::read_write}) {
    const std::string error = open_error(link, mode);
    EXPECT_NE(error.find("link target's directory " + open_directory.string() +
                         " is writable by other users"),
              std::string::npos)
        << error;
  }
  // A dangling link is followed too: the database would be created where the link points.
  const std::filesystem::path dangling = private_directory / "new.db";
  std::filesystem::create_symlink(open_directory / "missing.db", dangling);
  EXPECT_NE(open_error(dangling, OpenMode::read_write).find("link target's directory"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(open_directory / "missing.db"));
}

TEST(Database, SymbolicLinkBetweenPrivateDirectoriesIsUsed) {
  TempDir dir;
  std::filesystem::create_directory(dir / "real");
  ::chmod((dir / "real").c_str(), 0700);
  std::filesystem::create_directory_symlink(dir / "real", dir / "alias");
  Database db(dir / "alias" / "sigattn.db", OpenMode::read_write);
  EXPECT_TRUE(std::filesystem::exists(dir / "real" / "sigattn.db"));
}

TEST(Database, ReadOnlyDirectoryIsAClearError) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes into read-only directories";
  TempDir dir;
  ::chmod(dir.path().c_str(), 0500);
  const std::string error = open_error(dir / "sigattn.db", OpenMode::read_write);
  EXPECT_NE(error.find("cannot open database"), std::string::npos) << error;
}

}  // namespace
}  // namespace sigattn::cache
