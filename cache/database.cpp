// SQLite connection, statements, schema migrations and the location checks. Migrations run in
// one BEGIN IMMEDIATE transaction, so processes opening a fresh database at the same time apply
// each migration once; the busy timeout makes the others wait instead of failing. Read-only
// connections in a directory this process cannot write open the file as immutable, since SQLite
// could not create the -shm file a WAL database is otherwise read through.
#include "cache/database.hpp"

#include <fmt/format.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <system_error>
#include <thread>
#include <utility>

#include "cache/binary_store.hpp"

namespace sigattn::cache {
namespace {

// A schema change: SQL, then an optional rewrite of rows that SQL cannot do, in one transaction.
struct Migration {
  std::string_view sql;
  void (*rewrite)(Database&) = nullptr;
};

// Migration i (1-based) brings the schema from version i - 1 to version i. Never edit an entry
// that has been released: append a new one and bump kSchemaVersion.
constexpr Migration kMigrations[] = {
    // 1: compiled kernels and the best tile per problem.
    {R"sql(
CREATE TABLE binaries (
  key TEXT PRIMARY KEY,
  template_hash TEXT NOT NULL,
  generator_version INTEGER NOT NULL,
  variant TEXT NOT NULL,
  tile TEXT NOT NULL,
  arch TEXT NOT NULL,
  nvrtc_version TEXT NOT NULL,
  options TEXT NOT NULL,
  source_hash TEXT NOT NULL,
  lowered_name TEXT NOT NULL,
  registers INTEGER NOT NULL,
  spill_store_bytes INTEGER NOT NULL,
  spill_load_bytes INTEGER NOT NULL,
  stack_frame_bytes INTEGER NOT NULL,
  compile_ms REAL NOT NULL,
  cubin BLOB NOT NULL,
  size INTEGER NOT NULL,
  integrity TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  used_at INTEGER NOT NULL,
  use_sequence INTEGER NOT NULL
);
CREATE INDEX binaries_by_variant ON binaries (variant, arch, template_hash, generator_version);
CREATE INDEX binaries_by_use ON binaries (use_sequence);
CREATE TABLE tuning_best (
  device_name TEXT NOT NULL,
  arch TEXT NOT NULL,
  sm_count INTEGER NOT NULL,
  template_hash TEXT NOT NULL,
  spec TEXT NOT NULL,
  seqlen_q_bucket INTEGER NOT NULL,
  seqlen_k_bucket INTEGER NOT NULL,
  tile TEXT NOT NULL,
  time_ms REAL NOT NULL,
  tflops REAL NOT NULL,
  measured_at TEXT NOT NULL,
  PRIMARY KEY (device_name, arch, sm_count, template_hash, spec, seqlen_q_bucket, seqlen_k_bucket)
);
)sql"},
    // 2: provenance of the best tile, and every candidate tried, for resuming and auditing.
    {R"sql(
ALTER TABLE tuning_best ADD COLUMN method TEXT NOT NULL DEFAULT '';
ALTER TABLE tuning_best ADD COLUMN source TEXT NOT NULL DEFAULT '';
CREATE TABLE tuning_candidates (
  device_name TEXT NOT NULL,
  arch TEXT NOT NULL,
  sm_count INTEGER NOT NULL,
  template_hash TEXT NOT NULL,
  spec TEXT NOT NULL,
  seqlen_q_bucket INTEGER NOT NULL,
  seqlen_k_bucket INTEGER NOT NULL,
  tile TEXT NOT NULL,
  status TEXT NOT NULL
    CHECK (status IN ('ok', 'compile_error', 'launch_error', 'verify_failed', 'timeout')),
  time_ms REAL,
  tflops REAL,
  message TEXT NOT NULL,
  measured_at TEXT NOT NULL,
  PRIMARY KEY (device_name, arch, sm_count, template_hash, spec, seqlen_q_bucket,
               seqlen_k_bucket, tile)
);
)sql"},
    // 3: how many times each binary was served from the database in place of NVRTC.
    {R"sql(
ALTER TABLE binaries ADD COLUMN served INTEGER NOT NULL DEFAULT 0;
)sql"},
    // 4: a binary's integrity hash covers its key as well as its CUBIN.
    {"", &bind_integrity_to_keys},
};
static_assert(std::size(kMigrations) == kSchemaVersion,
              "kSchemaVersion must equal the number of migrations");

constexpr mode_t kPrivateDirectoryMode = 0700;
constexpr int kMaxSymlinkHops = 40;
constexpr mode_t kPrivateFileMode = 0600;

std::string describe_mode(mode_t mode) { return fmt::format("{:04o}", mode & 07777); }

// Creates each missing directory of `directory` with mode 0700.
void create_private_directories(const std::filesystem::path& directory,
                                const std::string& database) {
  std::filesystem::path partial;
  for (const std::filesystem::path& part : directory) {
    partial /= part;
    if (::mkdir(partial.c_str(), kPrivateDirectoryMode) == 0) {
      ::chmod(partial.c_str(), kPrivateDirectoryMode);  // the umask may have removed bits
    } else if (errno != EEXIST) {
      const std::error_code error(errno, std::generic_category());
      throw DatabaseError(database, "mkdir", 0, error.message(),
                          fmt::format("cannot create the database directory {}: {}",
                                      partial.string(), error.message()));
    }
  }
}

std::filesystem::path directory_of(const std::filesystem::path& path) {
  return path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
}

bool writable(const std::filesystem::path& path) { return ::access(path.c_str(), W_OK) == 0; }

// An immutable read-only URI for SQLite: nothing is locked and no -wal or -shm file is created.
std::string immutable_uri(const std::filesystem::path& path) {
  std::string uri = "file:";
  for (const unsigned char c : path.string()) {
    if (std::isalnum(c) || c == '/' || c == '-' || c == '_' || c == '.' || c == '~') {
      uri += static_cast<char>(c);
    } else {
      uri += fmt::format("%{:02X}", c);
    }
  }
  return uri + "?immutable=1";
}

// Whether a read-only connection must treat the file as immutable: no process can be writing it
// (nobody can create the -wal or rollback journal a writer needs beside it, and none is there),
// and SQLite could not create the -shm file beside it.
bool open_as_immutable(const std::filesystem::path& resolved) {
  std::error_code error;
  const auto beside = [&](const char* suffix) {
    return std::filesystem::exists(resolved.string() + suffix, error);
  };
  return !writable(directory_of(resolved)) && !beside("-wal") && !beside("-journal");
}

DatabaseError newer_schema_error(const std::string& path, int version) {
  return DatabaseError(path, "schema_version", SQLITE_MISMATCH, "newer schema",
                       fmt::format("database {} has schema version {}, newer than the version {} "
                                   "this sigattn understands: use a newer sigattn or another "
                                   "database (SIGATTN_DB)",
                                   path, version, kSchemaVersion));
}

}  // namespace

DatabaseError::DatabaseError(std::string path, std::string statement, int result,
                             std::string sqlite_message, const std::string& message)
    : Error(Status::internal_error, message),
      path_(std::move(path)),
      statement_(std::move(statement)),
      result_(result),
      sqlite_message_(std::move(sqlite_message)) {}

Statement::Statement(sqlite3* db, std::string_view sql, std::string path)
    : db_(db), sql_(sql), path_(std::move(path)) {
  const int result =
      sqlite3_prepare_v2(db_, sql_.data(), static_cast<int>(sql_.size()), &statement_, nullptr);
  if (result != SQLITE_OK) fail(result, "prepare");
}

Statement::~Statement() { sqlite3_finalize(statement_); }

void Statement::fail(int result, std::string_view operation) const {
  const std::string message = sqlite3_errmsg(db_);
  throw DatabaseError(path_, sql_, result, message,
                      fmt::format("database {}: {} failed: {} ({}); statement: {}", path_,
                                  operation, message, sqlite3_errstr(result), sql_));
}

Statement& Statement::bind(int index, std::string_view text) {
  const int result = sqlite3_bind_text(statement_, index, text.data(),
                                       static_cast<int>(text.size()), SQLITE_TRANSIENT);
  if (result != SQLITE_OK) fail(result, "bind");
  return *this;
}

Statement& Statement::bind(int index, std::int64_t value) {
  const int result = sqlite3_bind_int64(statement_, index, value);
  if (result != SQLITE_OK) fail(result, "bind");
  return *this;
}

Statement& Statement::bind(int index, double value) {
  const int result = sqlite3_bind_double(statement_, index, value);
  if (result != SQLITE_OK) fail(result, "bind");
  return *this;
}

Statement& Statement::bind_blob(int index, std::span<const char> blob) {
  const int result =
      sqlite3_bind_blob64(statement_, index, blob.data(), blob.size(), SQLITE_TRANSIENT);
  if (result != SQLITE_OK) fail(result, "bind");
  return *this;
}

Statement& Statement::bind_null(int index) {
  const int result = sqlite3_bind_null(statement_, index);
  if (result != SQLITE_OK) fail(result, "bind");
  return *this;
}

bool Statement::step() {
  const int result = sqlite3_step(statement_);
  if (result == SQLITE_ROW) return true;
  if (result == SQLITE_DONE) return false;
  fail(result, "step");
}

void Statement::run() {
  while (step()) {
  }
}

void Statement::reset() {
  sqlite3_reset(statement_);
  sqlite3_clear_bindings(statement_);
}

bool Statement::is_null(int column) const {
  return sqlite3_column_type(statement_, column) == SQLITE_NULL;
}

std::int64_t Statement::integer(int column) const {
  return sqlite3_column_int64(statement_, column);
}

double Statement::real(int column) const { return sqlite3_column_double(statement_, column); }

std::string Statement::text(int column) const {
  const unsigned char* text = sqlite3_column_text(statement_, column);
  if (text == nullptr) return {};
  return {reinterpret_cast<const char*>(text),
          static_cast<std::size_t>(sqlite3_column_bytes(statement_, column))};
}

std::vector<char> Statement::blob(int column) const {
  const auto* data = static_cast<const char*>(sqlite3_column_blob(statement_, column));
  const int size = sqlite3_column_bytes(statement_, column);
  if (data == nullptr) return {};
  return {data, data + size};
}

Database::Database(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}

Database::Database(const std::filesystem::path& path, OpenMode mode)
    : path_(path.string()), read_only_(mode == OpenMode::read_only) {
  const bool existed = std::filesystem::exists(path);
  if (!existed && read_only_) {
    throw DatabaseError(path_, "open", SQLITE_CANTOPEN, "no such file",
                        fmt::format("database {} does not exist", path_));
  }
  if (!read_only_ && path.has_parent_path()) {
    create_private_directories(path.parent_path(), path_);
  }
  if (const std::string why = unsafe_location(path); !why.empty()) {
    throw DatabaseError(path_, "open", SQLITE_PERM, why,
                        fmt::format("refusing to use database {}: {}", path_, why));
  }
  std::string location = path_;
  int flags = SQLITE_OPEN_FULLMUTEX;
  if (!read_only_) {
    flags |= SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
  } else if (const std::filesystem::path resolved = resolved_path(path);
             open_as_immutable(resolved)) {
    location = immutable_uri(resolved);
    flags |= SQLITE_OPEN_READONLY | SQLITE_OPEN_URI;
  } else {
    flags |= SQLITE_OPEN_READONLY;
  }
  const int result = sqlite3_open_v2(location.c_str(), &db_, flags, nullptr);
  if (result != SQLITE_OK) {
    const std::string message = db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(result);
    sqlite3_close(db_);
    db_ = nullptr;
    throw DatabaseError(path_, "open", result, message,
                        fmt::format("cannot open database {}: {}", path_, message));
  }
  try {
    if (!existed) ::chmod(path_.c_str(), kPrivateFileMode);
    configure(mode);
    if (!read_only_) {
      migrate();
    } else if (const int version = schema_version(); version > kSchemaVersion) {
      throw newer_schema_error(path_, version);
    } else if (version < kSchemaVersion) {
      migrate_private_copy();
    }
  } catch (...) {
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

Database Database::in_memory() {
  sqlite3* db = nullptr;
  const int result =
      sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, nullptr);
  Database database(db, ":memory:");
  if (result != SQLITE_OK) {
    throw DatabaseError(
        ":memory:", "open", result, sqlite3_errstr(result),
        fmt::format("cannot open an in-memory database: {}", sqlite3_errstr(result)));
  }
  database.migrate();
  return database;
}

Database::~Database() { sqlite3_close(db_); }

Database::Database(Database&& other) noexcept
    : db_(std::exchange(other.db_, nullptr)),
      path_(std::move(other.path_)),
      read_only_(other.read_only_) {}

void Database::configure(OpenMode mode) {
  sqlite3_busy_timeout(db_, kBusyTimeoutMs);
  if (mode == OpenMode::read_only) {
    // Reading the schema here turns "not a database" into an error at open time.
    prepare("SELECT count(*) FROM sqlite_schema").run();
    return;
  }
  // WAL lets readers continue while a tuning run writes. Switching a new file to WAL needs an
  // exclusive lock, and SQLite answers "database is locked" at once, without the busy handler,
  // when several processes open the new file together: retry within the busy timeout.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(kBusyTimeoutMs);
  Statement journal = prepare("PRAGMA journal_mode = WAL");
  while (true) {
    try {
      journal.step();
      break;
    } catch (const DatabaseError& error) {
      const int code = error.result() & 0xff;
      const bool busy = code == SQLITE_BUSY || code == SQLITE_LOCKED;
      if (!busy || std::chrono::steady_clock::now() > deadline) throw;
      journal.reset();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  prepare("PRAGMA synchronous = NORMAL").run();
}

Statement Database::prepare(std::string_view sql) { return Statement(db_, sql, path_); }

void Database::execute(std::string_view sql) {
  char* error = nullptr;
  const std::string text(sql);
  const int result = sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &error);
  if (result != SQLITE_OK) {
    const std::string message = error != nullptr ? error : sqlite3_errstr(result);
    sqlite3_free(error);
    throw DatabaseError(path_, text, result, message,
                        fmt::format("database {}: {}; statement: {}", path_, message, text));
  }
}

int Database::schema_version() {
  Statement has_table = prepare(
      "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'schema_version'");
  has_table.step();
  if (has_table.integer(0) == 0) return 0;
  Statement version = prepare("SELECT coalesce(max(version), 0) FROM schema_version");
  version.step();
  return static_cast<int>(version.integer(0));
}

void Database::migrate() {
  Transaction transaction(*this);
  execute(
      "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at "
      "TEXT NOT NULL)");
  const int current = schema_version();
  if (current > kSchemaVersion) throw newer_schema_error(path_, current);
  for (int version = current + 1; version <= kSchemaVersion; ++version) {
    const Migration& migration = kMigrations[version - 1];
    if (!migration.sql.empty()) execute(migration.sql);
    if (migration.rewrite != nullptr) migration.rewrite(*this);
    prepare("INSERT INTO schema_version (version, applied_at) VALUES (?1, datetime('now'))")
        .bind(1, version)
        .run();
  }
  transaction.commit();
}

void Database::migrate_private_copy() {
  sqlite3* copy = nullptr;
  int result =
      sqlite3_open_v2(":memory:", &copy, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, nullptr);
  std::string message = sqlite3_errstr(result);
  if (result == SQLITE_OK) {
    sqlite3_backup* backup = sqlite3_backup_init(copy, "main", db_, "main");
    if (backup == nullptr) {
      result = sqlite3_errcode(copy);
      message = sqlite3_errmsg(copy);
    } else {
      sqlite3_backup_step(backup, -1);
      result = sqlite3_backup_finish(backup);
      message = sqlite3_errstr(result);
    }
  }
  if (result != SQLITE_OK) {
    sqlite3_close(copy);
    throw DatabaseError(path_, "backup", result, message,
                        fmt::format("cannot read database {} (schema version {}) into memory to "
                                    "migrate it: {}",
                                    path_, schema_version(), message));
  }
  sqlite3_close(db_);
  db_ = copy;
  sqlite3_busy_timeout(db_, kBusyTimeoutMs);
  migrate();
}

std::vector<std::string> Database::integrity_problems() {
  std::vector<std::string> problems;
  try {
    Statement check = prepare("PRAGMA integrity_check");
    while (check.step()) {
      if (std::string row = check.text(0); row != "ok") problems.push_back(std::move(row));
    }
  } catch (const DatabaseError& error) {
    problems.push_back(error.sqlite_message());
  }
  return problems;
}

Database::Transaction::Transaction(Database& db) : db_(db) { db_.execute("BEGIN IMMEDIATE"); }

Database::Transaction::~Transaction() {
  if (open_) sqlite3_exec(db_.db_, "ROLLBACK", nullptr, nullptr, nullptr);
}

void Database::Transaction::commit() {
  db_.execute("COMMIT");
  open_ = false;
}

std::filesystem::path resolved_path(const std::filesystem::path& path) {
  std::error_code error;
  std::filesystem::path current = std::filesystem::absolute(path, error);
  for (int hop = 0; hop < kMaxSymlinkHops; ++hop) {
    // Resolves every link of the part that exists; a dangling link at the end stays as it is.
    current = std::filesystem::weakly_canonical(current, error);
    if (error || !std::filesystem::is_symlink(current, error)) return current;
    const std::filesystem::path target = std::filesystem::read_symlink(current, error);
    if (error) return current;
    current = target.is_absolute() ? target : current.parent_path() / target;
  }
  return current;
}

OpenMode usable_mode(const std::filesystem::path& path) {
  const std::filesystem::path resolved = resolved_path(path);
  std::error_code error;
  if (!std::filesystem::exists(resolved, error)) return OpenMode::read_write;
  return writable(resolved) && writable(directory_of(resolved)) ? OpenMode::read_write
                                                                : OpenMode::read_only;
}

std::string unsafe_location(const std::filesystem::path& database_path) {
  const uid_t user = ::geteuid();
  const auto check = [user](const std::filesystem::path& path,
                            const std::string& what) -> std::string {
    struct stat info {};
    if (::stat(path.c_str(), &info) != 0) return {};
    // Root can replace any file anyway; another user could place GPU code that this user runs.
    if (info.st_uid != user && info.st_uid != 0) {
      return fmt::format("{} {} is owned by uid {}, neither this user (uid {}) nor root", what,
                         path.string(), info.st_uid, user);
    }
    if ((info.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
      return fmt::format(
          "{} {} is writable by other users (mode {}), who could place GPU code in it; run "
          "chmod go-w {}",
          what, path.string(), describe_mode(info.st_mode), path.string());
    }
    return {};
  };
  if (std::string why = check(directory_of(database_path), "directory"); !why.empty()) return why;
  const std::filesystem::path resolved = resolved_path(database_path);
  const std::filesystem::path resolved_directory = directory_of(resolved);
  std::error_code error;
  if (!std::filesystem::equivalent(resolved_directory, directory_of(database_path), error)) {
    if (std::string why = check(resolved_directory, "link target's directory"); !why.empty()) {
      return why;
    }
  }
  return check(resolved, "file");
}

}  // namespace sigattn::cache
