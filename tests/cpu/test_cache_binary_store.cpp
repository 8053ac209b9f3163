// The binary store: round trips, hit/miss counters, the NVRTC version rule, invalidation on each
// key field, integrity checks against flipped bytes and bytes swapped between rows, the migration
// of schema 3 integrity hashes, reads of a read-only database that write nothing, LRU eviction,
// pruning, and several processes writing at once.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <vector>

#include "cache/binary_store.hpp"
#include "generator/template_store.hpp"
#include "temp_dir.hpp"

namespace sigattn::cache {
namespace {

using sigattn::testing::TempDir;

BinaryKey sample_key(const std::string& variant =
                         "fwd.bf16.d64.dense.nomask.nosmod.fast.anylen/"
                         "sm80.m64n64w4s2") {
  return {"0123456789abcdef0123456789abcdef",
          1,
          variant,
          "sm80.m64n64w4s2",
          "sm_90a",
          "13.0",
          "-std=c++17 -default-device",
          "fedcba9876543210fedcba9876543210"};
}

StoredBinary sample_binary(const BinaryKey& key, std::size_t bytes = 1000, char fill = 'c') {
  StoredBinary binary;
  binary.key = key;
  binary.lowered_name = "_ZN7sigattn15fwd_sm80_kernelI3CfgEEvNS_9FwdParamsE";
  binary.cubin.assign(bytes, fill);
  binary.cubin[0] = '\x7f';
  binary.registers = 168;
  binary.spill_store_bytes = 4;
  binary.spill_load_bytes = 8;
  binary.stack_frame_bytes = 16;
  binary.compile_ms = 812.5;
  return binary;
}

TEST(BinaryKey, HashCoversEveryField) {
  const BinaryKey base = sample_key();
  const std::vector<std::function<void(BinaryKey&)>> changes = {
      [](BinaryKey& k) { k.template_hash[0] = '9'; },
      [](BinaryKey& k) { k.generator_version = 2; },
      [](BinaryKey& k) { k.variant += "x"; },
      [](BinaryKey& k) { k.tile = "sm80.m128n64w4s2"; },
      [](BinaryKey& k) { k.arch = "sm_80"; },
      [](BinaryKey& k) { k.nvrtc_version = "12.8"; },
      [](BinaryKey& k) { k.options += " -lineinfo"; },
      [](BinaryKey& k) { k.source_hash[0] = '0'; },
  };
  for (std::size_t i = 0; i < changes.size(); ++i) {
    BinaryKey changed = base;
    changes[i](changed);
    EXPECT_NE(changed.hash(), base.hash()) << "field " << i;
  }
  EXPECT_EQ(sample_key().hash(), base.hash());
}

TEST(BinaryStore, RoundTripAndCounters) {
  Database db = Database::in_memory();
  BinaryStore store(db);
  EXPECT_FALSE(store.find(sample_key()));
  store.put(sample_binary(sample_key()));
  const std::optional<StoredBinary> found = store.find(sample_key());
  ASSERT_TRUE(found);
  const StoredBinary expected = sample_binary(sample_key());
  EXPECT_EQ(found->cubin, expected.cubin);
  EXPECT_EQ(found->lowered_name, expected.lowered_name);
  EXPECT_EQ(found->registers, 168);
  EXPECT_EQ(found->spill_store_bytes, 4);
  EXPECT_EQ(found->spill_load_bytes, 8);
  EXPECT_EQ(found->stack_frame_bytes, 16);
  EXPECT_DOUBLE_EQ(found->compile_ms, 812.5);
  EXPECT_EQ(store.stats().hits, 1u);
  EXPECT_EQ(store.stats().misses, 1u);
  EXPECT_EQ(store.stats().stores, 1u);
  EXPECT_EQ(store.summary().count, 1);
  EXPECT_EQ(store.summary().bytes, 1000);
  EXPECT_EQ(store.summary().served, 1);
  store.find(sample_key());
  EXPECT_EQ(store.summary().served, 2);
}

TEST(BinaryStore, ChangeOfAnyKeyFieldMisses) {
  Database db = Database::in_memory();
  BinaryStore store(db);
  store.put(sample_binary(sample_key()));
  const std::vector<std::pair<const char*, std::function<void(BinaryKey&)>>> changes = {
      {"template hash", [](BinaryKey& k) { k.template_hash[0] = '9'; }},
      {"generator version", [](BinaryKey& k) { k.generator_version = 2; }},
      {"variant", [](BinaryKey& k) { k.variant += "x"; }},
      {"tile", [](BinaryKey& k) { k.tile = "sm80.m128n64w4s2"; }},
      {"arch", [](BinaryKey& k) { k.arch = "sm_80"; }},
      {"nvrtc version", [](BinaryKey& k) { k.nvrtc_version = "12.8"; }},
      {"options", [](BinaryKey& k) { k.options += " -lineinfo"; }},
      {"source hash", [](BinaryKey& k) { k.source_hash[0] = '0'; }},
  };
  for (const auto& [field, change] : changes) {
    BinaryKey changed = sample_key();
    change(changed);
    EXPECT_FALSE(store.find(changed)) << "a stale binary was served after a change of " << field;
  }
  EXPECT_TRUE(store.find(sample_key()));
}

TEST(BinaryStore, WithoutNvrtcAnyNvrtcVersionMatches) {
  Database db = Database::in_memory();
  BinaryStore store(db);
  store.put(sample_binary(sample_key()));
  BinaryKey no_nvrtc = sample_key();
  no_nvrtc.nvrtc_version.clear();
  const std::optional<StoredBinary> found = store.find(no_nvrtc);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->key.nvrtc_version, "13.0");
}

TEST(BinaryStore, FlippedCubinByteIsDetectedAndOnlyThatRowDropped) {
  Database db = Database::in_memory();
  std::vector<std::string> warnings;
  BinaryStore store(db, kDefaultBinaryBytes,
                    [&warnings](const std::string& w) { warnings.push_back(w); });
  const BinaryKey other = sample_key("other-variant");
  store.put(sample_binary(sample_key()));
  store.put(sample_binary(other));
  // Flip one byte of the first CUBIN in place, as a bad disk sector would.
  db.prepare(
        "UPDATE binaries SET cubin = CAST(substr(cubin, 1, 10) || 'X' || substr(cubin, 12) "
        "AS BLOB) WHERE key = ?1")
      .bind(1, sample_key().hash())
      .run();
  ASSERT_EQ(store.verify().size(), 1u);
  EXPECT_EQ(store.verify()[0].variant, sample_key().variant);
  EXPECT_FALSE(store.find(sample_key()));
  EXPECT_EQ(store.stats().corrupt, 1u);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("integrity"), std::string::npos);
  EXPECT_TRUE(store.find(other));
  EXPECT_EQ(store.summary().count, 1);
  EXPECT_TRUE(store.verify().empty());
}

// The kernel of one name in two tiles: each row's CUBIN, size and integrity hash moved to the other
// row. Each CUBIN is intact on its own; only a hash bound to the key tells that it is not the
// row's.
TEST(BinaryStore, CubinSwappedBetweenRowsIsDetected) {
  Database db = Database::in_memory();
  BinaryStore store(db);
  BinaryKey wide = sample_key("fwd.bf16.d64.dense.nomask.nosmod.fast.anylen/sm80.m128n64w4s2");
  wide.tile = "sm80.m128n64w4s2";
  const BinaryKey narrow = sample_key();
  store.put(sample_binary(wide, 1200, 'w'));
  store.put(sample_binary(narrow, 1000, 'n'));
  struct Bytes {
    std::vector<char> cubin;
    std::int64_t size;
    std::string integrity;
  };
  const auto bytes_of = [&](const BinaryKey& key) {
    Statement row = db.prepare("SELECT cubin, size, integrity FROM binaries WHERE key = ?1");
    row.bind(1, key.hash());
    EXPECT_TRUE(row.step());
    return Bytes{row.blob(0), row.integer(1), row.text(2)};
  };
  const auto write = [&](const BinaryKey& key, const Bytes& bytes) {
    db.prepare("UPDATE binaries SET cubin = ?1, size = ?2, integrity = ?3 WHERE key = ?4")
        .bind_blob(1, bytes.cubin)
        .bind(2, bytes.size)
        .bind(3, bytes.integrity)
        .bind(4, key.hash())
        .run();
  };
  const Bytes of_wide = bytes_of(wide);
  const Bytes of_narrow = bytes_of(narrow);
  write(wide, of_narrow);
  write(narrow, of_wide);
  const std::vector<BinaryRow> problems = store.verify();
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_NE(problems[0].problem.find("integrity hash"), std::string::npos) << problems[0].problem;
  EXPECT_FALSE(store.find(wide));
  EXPECT_FALSE(store.find(narrow));
  EXPECT_EQ(store.stats().corrupt, 2u);
}

TEST(BinaryStore, RowWhoseKeyDoesNotMatchItsColumnsIsDetected) {
  Database db = Database::in_memory();
  BinaryStore store(db);
  store.put(sample_binary(sample_key()));
  db.prepare("UPDATE binaries SET key = 'elsewhere'").run();
  ASSERT_EQ(store.verify().size(), 1u);
  EXPECT_NE(store.verify()[0].problem.find("key does not match"), std::string::npos);
  EXPECT_FALSE(store.find(sample_key()));
}

// Turns the database at `path` back into what schema 3 wrote: integrity hashes over the CUBIN
// alone (`intact` keeps them right, otherwise they are wrong), and no migration 4.
void make_schema_3(const std::filesystem::path& path, const BinaryKey& key, bool intact) {
  Database db(path, OpenMode::read_write);
  const std::vector<char> cubin = sample_binary(key).cubin;
  const std::string old_hash = gen::hash_hex(std::string_view(cubin.data(), cubin.size()));
  db.prepare("UPDATE binaries SET integrity = ?1 WHERE key = ?2")
      .bind(1, intact ? old_hash : std::string(old_hash.size(), '0'))
      .bind(2, key.hash())
      .run();
  db.prepare("DELETE FROM schema_version WHERE version = 4").run();
}

TEST(BinaryStore, SchemaThreeIntegrityIsRehashedOnMigration) {
  TempDir dir;
  const std::filesystem::path path = dir / "old.db";
  const BinaryKey good = sample_key("good");
  const BinaryKey bad = sample_key("bad");
  {
    Database db(path, OpenMode::read_write);
    BinaryStore store(db);
    store.put(sample_binary(good));
    store.put(sample_binary(bad));
  }
  make_schema_3(path, good, true);
  make_schema_3(path, bad, false);
  // Read-only: a migrated copy in memory, the file left at schema 3.
  {
    Database db(path, OpenMode::read_only);
    BinaryStore store(db);
    ASSERT_EQ(store.verify().size(), 1u);
    EXPECT_EQ(store.verify()[0].variant, "bad");
    EXPECT_TRUE(store.find(good));
  }
  Database db(path, OpenMode::read_write);
  EXPECT_EQ(db.schema_version(), kSchemaVersion);
  BinaryStore store(db);
  ASSERT_EQ(store.verify().size(), 1u);
  EXPECT_EQ(store.verify()[0].variant, "bad");
  EXPECT_TRUE(store.find(good));
  EXPECT_FALSE(store.find(bad));
}

TEST(BinaryStore, ReadOnlyDatabaseServesWithoutRecordingOrDropping) {
  TempDir dir;
  const std::filesystem::path path = dir / "sigattn.db";
  const BinaryKey corrupt = sample_key("corrupt");
  {
    Database db(path, OpenMode::read_write);
    BinaryStore store(db);
    store.put(sample_binary(sample_key()));
    store.put(sample_binary(corrupt));
    db.prepare("UPDATE binaries SET integrity = 'wrong' WHERE key = ?1")
        .bind(1, corrupt.hash())
        .run();
  }
  {
    Database db(path, OpenMode::read_only);
    std::vector<std::string> warnings;
    BinaryStore store(db, kDefaultBinaryBytes,
                      [&warnings](const std::string& w) { warnings.push_back(w); });
    EXPECT_TRUE(store.find(sample_key()));
    EXPECT_FALSE(store.find(corrupt));
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find("read-only"), std::string::npos) << warnings[0];
  }
  Database db(path, OpenMode::read_write);
  BinaryStore store(db);
  EXPECT_EQ(store.summary().count, 2);
  EXPECT_EQ(store.summary().served, 0);
}

TEST(BinaryStore, TruncatedCubinIsDetected) {
  Database db = Database::in_memory();
  BinaryStore store(db);
  store.put(sample_binary(sample_key()));
  db.prepare("UPDATE binaries SET cubin = substr(cubin, 1, 500)").run();
  ASSERT_EQ(store.verify().size(), 1u);
  EXPECT_NE(store.verify()[0].problem.find("the row says 1000"), std::string::npos);
  EXPECT_FALSE(store.find(sample_key()));
}

TEST(BinaryStore, EvictsLeastRecentlyUsedBeyondTheBound) {
  Database db = Database::in_memory();
  BinaryStore store(db, 3000);
  store.put(sample_binary(sample_key("a")));
  store.put(sample_binary(sample_key("b")));
  store.put(sample_binary(sample_key("c")));
  ASSERT_TRUE(store.find(sample_key("a")));  // now b is the least recently used
  store.put(sample_binary(sample_key("d")));
  EXPECT_EQ(store.stats().evictions, 1u);
  EXPECT_FALSE(store.find(sample_key("b")));
  EXPECT_TRUE(store.find(sample_key("a")));
  EXPECT_TRUE(store.find(sample_key("c")));
  EXPECT_TRUE(store.find(sample_key("d")));
  EXPECT_EQ(store.summary().bytes, 3000);
  EXPECT_EQ(store.evict_to(1000), 2);
  EXPECT_TRUE(store.find(sample_key("d")));  // the most recently used stays
}

TEST(BinaryStore, PruneRemovesStaleAndUnusedRows) {
  Database db = Database::in_memory();
  BinaryStore store(db);
  BinaryKey old_template = sample_key("old-template");
  old_template.template_hash = "ffffffffffffffffffffffffffffffff";
  BinaryKey old_generator = sample_key("old-generator");
  old_generator.generator_version = 0;
  store.put(sample_binary(sample_key()));
  store.put(sample_binary(old_template));
  store.put(sample_binary(old_generator));
  store.put(sample_binary(sample_key("unused")));
  db.prepare("UPDATE binaries SET used_at = used_at - 40 * 86400 WHERE variant = 'unused'").run();

  const std::vector<BinaryRow> stale = store.prune(sample_key().template_hash, 1, std::nullopt);
  ASSERT_EQ(stale.size(), 2u);
  EXPECT_EQ(store.summary().count, 2);
  const std::vector<BinaryRow> unused = store.prune(sample_key().template_hash, 1, 30 * 86400);
  ASSERT_EQ(unused.size(), 1u);
  EXPECT_EQ(unused[0].variant, "unused");
  EXPECT_TRUE(store.find(sample_key()));
}

TEST(BinaryStore, SeveralProcessesWritingAtOnceLoseNothing) {
  TempDir dir;
  const std::filesystem::path path = dir / "shared.db";
  constexpr int kProcesses = 6;
  constexpr int kRowsEach = 25;
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int status = 0;
      try {
        // Each process opens the (possibly not yet created) database itself.
        Database db(path, OpenMode::read_write);
        BinaryStore store(db);
        for (int i = 0; i < kRowsEach; ++i) {
          store.put(sample_binary(sample_key(fmt::format("p{}-r{}", p, i)), 4096));
          if (!store.find(sample_key(fmt::format("p{}-r{}", p, i / 2)))) status = 2;
        }
      } catch (const std::exception& error) {
        fmt::print(stderr, "process {}: {}\n", p, error.what());
        status = 1;
      }
      ::_exit(status);
    }
    children.push_back(pid);
  }
  for (const pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  }
  Database db(path, OpenMode::read_write);
  BinaryStore store(db);
  EXPECT_EQ(store.summary().count, kProcesses * kRowsEach);
  EXPECT_TRUE(store.verify().empty());
  EXPECT_TRUE(db.integrity_problems().empty());
}

}  // namespace
}  // namespace sigattn::cache
