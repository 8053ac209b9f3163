// Tuning results: buckets, round trips, merging (the faster wins, provenance kept), the lookup
// chain level by level, and JSON import validation.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cache/json_io.hpp"
#include "cache/tuning_store.hpp"
#include "temp_dir.hpp"

namespace sigattn::cache {
namespace {

using sigattn::testing::TempDir;

const std::string kHash = "0123456789abcdef0123456789abcdef";
const DeviceKey kH200{"NVIDIA H200", "sm_90a", 132};
const gen::KernelSpec kSpec = gen::parse_spec("fwd.bf16.d128.dense.causal.nosmod.fast.x128");
// Tiles the sm_90a constraints accept for kSpec, distinct from each other and from the default.
const gen::TileConfig kTileA{128, 128, 8, 2};
const gen::TileConfig kTileB{64, 64, 4, 3};

TuningResult result(const DeviceKey& device, int seqlen, const gen::TileConfig& tile,
                    double time_ms, const std::string& hash = kHash) {
  TuningResult r;
  r.device = device;
  r.template_hash = hash;
  r.problem = problem_key(kSpec, seqlen, seqlen);
  r.tile = tile;
  r.time_ms = time_ms;
  r.tflops = 100.0 / time_ms;
  r.measured_at = "2025-06-01T12:00:00Z";
  r.method = "test";
  r.source = "host-a";
  return r;
}

TEST(TuningKeys, SeqlenBucketIsTheNextPowerOfTwo) {
  EXPECT_EQ(seqlen_bucket(1), 1);
  EXPECT_EQ(seqlen_bucket(128), 128);
  EXPECT_EQ(seqlen_bucket(129), 256);
  EXPECT_EQ(seqlen_bucket(4000), 4096);
  EXPECT_THROW(seqlen_bucket(0), std::invalid_argument);
  EXPECT_EQ(gen::parse_tile(gen::to_string(kTileB)), kTileB);
  EXPECT_THROW(gen::parse_tile("m64n64w4s3"), std::invalid_argument);
}

TEST(TuningStore, RoundTripOfBestAndCandidates) {
  Database db = Database::in_memory();
  TuningStore store(db);
  store.put_best(result(kH200, 4096, kTileA, 1.5));
  TuningCandidate failed;
  failed.device = kH200;
  failed.template_hash = kHash;
  failed.problem = problem_key(kSpec, 4096, 4096);
  failed.tile = kTileB;
  failed.status = CandidateStatus::compile_error;
  failed.message = "ptxas: too many resources";
  failed.measured_at = "2025-06-01T12:00:00Z";
  store.put_candidate(failed);

  const std::optional<TuningResult> best = store.best(kH200, kHash, problem_key(kSpec, 4000, 3000));
  ASSERT_TRUE(best);
  EXPECT_EQ(best->tile, kTileA);
  EXPECT_DOUBLE_EQ(best->time_ms, 1.5);
  EXPECT_EQ(best->source, "host-a");
  EXPECT_FALSE(store.best(kH200, kHash, problem_key(kSpec, 8192, 8192)));
  const std::vector<TuningCandidate> candidates = store.all_candidates();
  ASSERT_EQ(candidates.size(), 1u);
  EXPECT_EQ(candidates[0].status, CandidateStatus::compile_error);
  EXPECT_FALSE(candidates[0].time_ms);
  EXPECT_EQ(candidates[0].message, failed.message);
}

TEST(TuningStore, MergeKeepsTheFasterWithItsProvenance) {
  Database db = Database::in_memory();
  TuningStore store(db);
  store.put_best(result(kH200, 4096, kTileA, 1.5));
  TuningResult faster = result(kH200, 4096, kTileB, 1.2);
  faster.source = "host-b";
  TuningResult slower = result(kH200, 1024, kTileB, 0.9);
  store.put_best(result(kH200, 1024, kTileA, 0.5));
  const MergeCounts counts = store.merge({faster, slower}, {});
  EXPECT_EQ(counts.results_kept, 1);
  EXPECT_EQ(counts.results_slower, 1);
  const std::optional<TuningResult> best = store.best(kH200, kHash, problem_key(kSpec, 4096, 4096));
  ASSERT_TRUE(best);
  EXPECT_EQ(best->tile, kTileB);
  EXPECT_EQ(best->source, "host-b");
  EXPECT_EQ(store.best(kH200, kHash, problem_key(kSpec, 1024, 1024))->tile, kTileA);
}

TEST(TileLookup, EachLevelOfTheChain) {
  const policy::Target target = policy::target_for_arch("sm_90a");
  const std::vector<TuningResult> user = {result(kH200, 4096, kTileA, 1.0)};
  const std::vector<TuningResult> shipped = {result(kH200, 4096, kTileB, 0.5),
                                             result(kH200, 16384, kTileB, 9.0)};

  TileChoice choice = choose_tile(user, shipped, kH200, kHash, kSpec, 4096, 4096, target);
  EXPECT_EQ(choice.served_by, ServedBy::user_db);
  EXPECT_EQ(choice.tile, kTileA);

  choice = choose_tile({}, shipped, kH200, kHash, kSpec, 4096, 4096, target);
  EXPECT_EQ(choice.served_by, ServedBy::shipped_db);
  EXPECT_EQ(choice.tile, kTileB);

  choice = choose_tile(user, shipped, kH200, kHash, kSpec, 2048, 2048, target);
  EXPECT_EQ(choice.served_by, ServedBy::nearest_bucket);
  EXPECT_EQ(choice.tile, kTileA);  // 4096 is nearer than 16384; the user's row wins the tie
  EXPECT_NE(choice.reason.find("q 4096 k 4096 instead of q 2048 k 2048"), std::string::npos);

  const DeviceKey a100{"NVIDIA A100-SXM4-80GB", "sm_80", 108};
  choice =
      choose_tile(user, shipped, a100, kHash, kSpec, 4096, 4096, policy::target_for_arch("sm_80"));
  EXPECT_EQ(choice.served_by, ServedBy::heuristic);
  EXPECT_EQ(choice.tile, policy::default_tile(kSpec, policy::target_for_arch("sm_80")).tile);
  EXPECT_NE(choice.reason.find("heuristic default"), std::string::npos);
}

TEST(TileLookup, RowsOfAnotherTemplateHashAreNotUsed) {
  const policy::Target target = policy::target_for_arch("sm_90a");
  const std::vector<TuningResult> user = {
      result(kH200, 4096, kTileA, 1.0, "ffffffffffffffffffffffffffffffff")};
  const TileChoice choice = choose_tile(user, {}, kH200, kHash, kSpec, 4096, 4096, target);
  EXPECT_EQ(choice.served_by, ServedBy::heuristic);
}

TEST(TileLookup, ATileTheConstraintsRejectIsNeverChosen) {
  const policy::Target target = policy::target_for_arch("sm_90a");
  const gen::TileConfig rejected{48, 64, 4, 2};  // 48 rows cannot be split over 4 warps of 16
  ASSERT_FALSE(policy::rejection(kSpec, rejected, target).empty());
  const std::vector<TuningResult> user = {result(kH200, 4096, rejected, 0.1)};
  const std::vector<TuningResult> shipped = {result(kH200, 4096, kTileB, 0.5)};
  const TileChoice choice = choose_tile(user, shipped, kH200, kHash, kSpec, 4096, 4096, target);
  EXPECT_EQ(choice.served_by, ServedBy::shipped_db);
  EXPECT_EQ(choice.tile, kTileB);
  EXPECT_NE(choice.reason.find("rejected"), std::string::npos);
}

nlohmann::json valid_document() {
  return to_json(TuningDocument{{result(kH200, 4096, kTileA, 1.0)}, {}});
}

std::string import_error(const nlohmann::json& document) {
  try {
    parse_tuning_document(document, "test.json");
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), Status::invalid_argument);
    return error.what();
  }
  return {};
}

TEST(TuningJson, ExportImportRoundTrip) {
  Database source = Database::in_memory();
  TuningStore store(source);
  store.put_best(result(kH200, 4096, kTileA, 1.0));
  TuningCandidate timed_out;
  timed_out.device = kH200;
  timed_out.template_hash = kHash;
  timed_out.problem = problem_key(kSpec, 4096, 4096);
  timed_out.tile = kTileB;
  timed_out.status = CandidateStatus::timeout;
  timed_out.measured_at = "2025-06-01T12:00:00Z";
  store.put_candidate(timed_out);

  const nlohmann::json exported = to_json(export_document(store));
  const TuningDocument imported = parse_tuning_document(exported, "export");
  Database target = Database::in_memory();
  TuningStore target_store(target);
  target_store.merge(imported.results, imported.candidates);
  EXPECT_EQ(to_json(export_document(target_store)), exported);
}

TEST(TuningJson, ImportValidation) {
  ASSERT_EQ(import_error(valid_document()), "");
  struct Case {
    const char* what;
    std::function<void(nlohmann::json&)> edit;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"unknown top-level field", [](auto& j) { j["extra"] = 1; }, "unknown field 'extra'"},
      {"unknown result field", [](auto& j) { j["results"][0]["speed"] = 1; },
       "results[0]: unknown field 'speed'"},
      {"unknown tile field", [](auto& j) { j["results"][0]["tile"]["splits"] = 2; },
       "results[0].tile: unknown field 'splits'"},
      {"missing field", [](auto& j) { j["results"][0].erase("time_ms"); },
       "missing field 'time_ms'"},
      {"format", [](auto& j) { j["format"] = "other"; }, "format: 'other' is not"},
      {"format version", [](auto& j) { j["format_version"] = 2; }, "version 2 is not supported"},
      {"arch", [](auto& j) { j["results"][0]["device"]["arch"] = "sm_70"; },
       "unknown architecture 'sm_70'"},
      {"sm count", [](auto& j) { j["results"][0]["device"]["sm_count"] = 0; },
       "sm_count: 0 is out of range"},
      {"hash", [](auto& j) { j["results"][0]["template_hash"] = "xyz"; }, "not a template hash"},
      {"spec", [](auto& j) { j["results"][0]["spec"] = "fwd.bf16.d128"; }, "results[0].spec"},
      {"bucket", [](auto& j) { j["results"][0]["seqlen_k_bucket"] = 1000; },
       "1000 is not a power of two"},
      {"huge tile value", [](auto& j) { j["results"][0]["tile"]["block_m"] = 1LL << 40; },
       "out of range"},
      {"float tile value", [](auto& j) { j["results"][0]["tile"]["warps"] = 4.5; },
       "expected an integer"},
      {"rejected tile", [](auto& j) { j["results"][0]["tile"]["block_m"] = 48; },
       "is rejected for"},
      {"family", [](auto& j) { j["results"][0]["tile"]["family"] = "sm70"; },
       "tile.family: bad family 'sm70'"},
      {"atomic dq on a forward tile", [](auto& j) { j["results"][0]["tile"]["atomic_dq"] = true; },
       "work_split"},
      {"atomic dq type", [](auto& j) { j["results"][0]["tile"]["atomic_dq"] = 1; },
       "expected true or false"},
      {"time", [](auto& j) { j["results"][0]["time_ms"] = -1.0; }, "time_ms: -1"},
      {"type", [](auto& j) { j["results"][0]["tflops"] = "fast"; }, "expected a number"},
      {"status",
       [](auto& j) {
         auto candidate = j["results"][0];
         for (const char* key : {"time_ms", "tflops", "method", "source"}) candidate.erase(key);
         candidate["status"] = "crashed";
         j["candidates"].push_back(candidate);
       },
       "unknown candidate status 'crashed'"},
      {"measured_at in words", [](auto& j) { j["results"][0]["measured_at"] = "yesterday"; },
       "measured_at: 'yesterday' is not a UTC time"},
      {"measured_at without a zone",
       [](auto& j) { j["results"][0]["measured_at"] = "2025-06-01T12:00:00"; },
       "is not a UTC time"},
      {"measured_at on a day that does not exist",
       [](auto& j) { j["results"][0]["measured_at"] = "2025-02-30T12:00:00Z"; },
       "is not a UTC time"},
  };
  for (const Case& c : cases) {
    nlohmann::json document = valid_document();
    c.edit(document);
    const std::string error = import_error(document);
    EXPECT_NE(error.find(c.message), std::string::npos)
        << c.what << ": expected '" << c.message << "' in '" << error << "'";
  }
}

TEST(TuningJson, DuplicateKeysHugeNumbersAndDirectoriesAreArgumentErrors) {
  TempDir dir;
  std::string text = valid_document().dump();
  const std::string time_key = "\"time_ms\":";
  text.insert(text.find(time_key), time_key + "0.001,");
  std::ofstream(dir / "twice.json") << text;
  const auto error_of = [](const std::filesystem::path& path) -> std::string {
    try {
      read_tuning_file(path);
    } catch (const Error& error) {
      EXPECT_EQ(error.status(), Status::invalid_argument);
      return error.what();
    }
    return "accepted";
  };
  EXPECT_NE(error_of(dir / "twice.json").find("the key 'time_ms' appears twice"), std::string::npos)
      << error_of(dir / "twice.json");
  EXPECT_NE(error_of(dir.path()).find("it is a directory"), std::string::npos)
      << error_of(dir.path());
  std::ofstream(dir / "huge.json") << R"({"format": "sigattn-tuning", "format_version": 1e400})";
  EXPECT_NE(error_of(dir / "huge.json").find("is not valid JSON"), std::string::npos)
      << error_of(dir / "huge.json");
}

// data/README.md describes each shipped file with "(N results" and "every candidate tried (M)".
TEST(TuningJson, ShippedDataReadmeCountsMatchTheFiles) {
  const std::filesystem::path data = std::filesystem::path(SIGATTN_TEST_DATA_DIR) / "../../data";
  std::ifstream readme_file(data / "README.md");
  ASSERT_TRUE(readme_file) << data / "README.md";
  const std::string readme((std::istreambuf_iterator<char>(readme_file)),
                           std::istreambuf_iterator<char>());
  for (const auto& entry : std::filesystem::directory_iterator(data)) {
    if (entry.path().extension() != ".json") continue;
    const std::string name = entry.path().filename().string();
    const std::size_t start = readme.find("`" + name + "`:");
    ASSERT_NE(start, std::string::npos) << name << " is not described in data/README.md";
    const std::string text = readme.substr(start, readme.find("\n- ", start) - start);
    const TuningDocument document = read_tuning_file(entry.path());
    // The number that follows `before` in the description.
    const auto count_after = [&](const std::string& before) -> std::size_t {
      const std::size_t at = text.find(before);
      EXPECT_NE(at, std::string::npos) << "'" << before << "' is not in: " << text;
      return at == std::string::npos ? 0 : std::stoul(text.substr(at + before.size()));
    };
    const std::size_t results_at = text.rfind('(', text.find(" results"));
    ASSERT_NE(results_at, std::string::npos) << text;
    EXPECT_EQ(std::stoul(text.substr(results_at + 1)), document.results.size()) << name;
    EXPECT_EQ(count_after("every candidate tried ("), document.candidates.size()) << name;
  }
}

TEST(TuningJson, ShippedDirectoryMayBeMissingOrEmpty) {
  TempDir dir;
  EXPECT_TRUE(read_shipped_directory(dir / "missing").results.empty());
  EXPECT_TRUE(read_shipped_directory(dir.path()).results.empty());
  std::ofstream(dir / "README.md") << "not JSON";
  std::ofstream(dir / "h200.json") << valid_document().dump();
  EXPECT_EQ(read_shipped_directory(dir.path()).results.size(), 1u);
  std::ofstream(dir / "broken.json") << "{";
  EXPECT_THROW(read_shipped_directory(dir.path()), Error);
}

}  // namespace
}  // namespace sigattn::cache
