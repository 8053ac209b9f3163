// The SQLite database behind the persistent cache: an RAII connection with WAL, a busy timeout,
// forward schema migrations recorded in a schema_version table, prepared statements only, a
// refusal to open files that other users could write, and read-only opening that never writes
// (for databases on read-only filesystems or in directories this user cannot write). Nothing
// outside cache/ touches SQLite.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <sigattn/sigattn.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace sigattn::cache {

// The schema this code writes. Bump it together with a new entry in the migration list.
inline constexpr int kSchemaVersion = 4;

// How long a connection waits for another process's lock before reporting SQLITE_BUSY.
inline constexpr int kBusyTimeoutMs = 10000;

// A failed SQLite call: the database path, the statement (or operation), the SQLite result code
// and SQLite's own message.
class DatabaseError : public Error {
 public:
  DatabaseError(std::string path, std::string statement, int result, std::string sqlite_message,
                const std::string& message);
  const std::string& path() const noexcept { return path_; }
  const std::string& statement() const noexcept { return statement_; }
  int result() const noexcept { return result_; }
  const std::string& sqlite_message() const noexcept { return sqlite_message_; }

 private:
  std::string path_;
  std::string statement_;
  int result_;
  std::string sqlite_message_;
};

// A prepared statement. Parameters are bound by 1-based index; text is always bound, never
// spliced into SQL.
class Statement {
 public:
  Statement(sqlite3* db, std::string_view sql, std::string path);
  ~Statement();
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int index, std::string_view text);
  Statement& bind(int index, std::int64_t value);
  Statement& bind(int index, int value) { return bind(index, std::int64_t{value}); }
  Statement& bind(int index, double value);
  Statement& bind_blob(int index, std::span<const char> blob);
  Statement& bind_null(int index);

  // Advances to the next row: true while there is one, false when done.
  bool step();
  // Runs a statement that returns no rows.
  void run();
  void reset();

  bool is_null(int column) const;
  std::int64_t integer(int column) const;
  double real(int column) const;
  std::string text(int column) const;
  std::vector<char> blob(int column) const;

 private:
  [[noreturn]] void fail(int result, std::string_view operation) const;

  sqlite3* db_;
  sqlite3_stmt* statement_ = nullptr;
  std::string sql_;
  std::string path_;
};

enum class OpenMode { read_write, read_only };

// How this process can use the database at `path`: read_only when the file exists and this process
// may not write it or the directory that holds it (through symbolic links), read_write otherwise.
OpenMode usable_mode(const std::filesystem::path& path);

class Database {
 public:
  // read_write: opens (creating it and its directory, mode 0700) and migrates the schema to
  // kSchemaVersion. read_only: opens without writing anything, not even SQLite's -wal and -shm
  // files where the directory is not writable; an older schema is read from a private in-memory
  // copy migrated to kSchemaVersion, and the file is left as it is. Throws DatabaseError when the
  // file is not a database, is corrupt, has a newer schema, cannot be created, or sits where
  // other users could write it.
  Database(const std::filesystem::path& path, OpenMode mode);
  // A private in-memory database with the current schema.
  static Database in_memory();
  ~Database();
  Database(Database&& other) noexcept;
  Database& operator=(Database&&) = delete;
  Database(const Database&) = delete;

  Statement prepare(std::string_view sql);
  const std::string& path() const noexcept { return path_; }
  // Opened read_only: nothing may be written (usage is not recorded, nothing is stored).
  bool read_only() const noexcept { return read_only_; }
  int schema_version();
  // SQLite's own consistency check: empty when the file is sound, else its findings.
  std::vector<std::string> integrity_problems();

  // BEGIN IMMEDIATE ... COMMIT; rolled back when destroyed without commit().
  class Transaction {
   public:
    explicit Transaction(Database& db);
    ~Transaction();
    Transaction(const Transaction&) = delete;
    Transaction& operator=(const Transaction&) = delete;
    void commit();

   private:
    Database& db_;
    bool open_ = true;
  };

 private:
  Database(sqlite3* db, std::string path);
  void configure(OpenMode mode);
  void migrate();
  // Replaces the connection by an in-memory copy of the database, migrated to kSchemaVersion.
  void migrate_private_copy();
  void execute(std::string_view sql);

  sqlite3* db_ = nullptr;
  std::string path_;
  bool read_only_ = false;
};

// Why binaries must not be loaded from this database file: its directory or the file itself is
// writable by group or others, or owned by a user other than this one and root. A symbolic link
// is followed: the directory of the link and the file and directory it resolves to are checked.
// Empty when the location is private. Mode bits and owners are checked, not access(), so the
// answer is the same for root.
std::string unsafe_location(const std::filesystem::path& database_path);

// `path` with every symbolic link resolved, in the path and in the last component, whether or not
// the file exists yet.
std::filesystem::path resolved_path(const std::filesystem::path& path);

}  // namespace sigattn::cache
