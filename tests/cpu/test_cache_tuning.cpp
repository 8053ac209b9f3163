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
#include "generator/generator.hpp"
#include "temp_dir.hpp"

namespace sigattn::cache {
namespace {

using sigattn::testing::TempDir;

// A source hash that no kernel has: rows with it are stale.
const std::string kStaleHash = "0123456789abcdef0123456789abcdef";
const DeviceKey kH200{"NVIDIA H200", "sm_90a", 132};
const gen::KernelSpec kSpec = gen::parse_spec("fwd.bf16.d128.dense.causal.nosmod.fast.x128");
// Tiles the sm_90a constraints accept for kSpec, distinct from each other and from the default.
const gen::TileConfig kTileA{128, 128, 8, 2};
const gen::TileConfig kTileB{64, 64, 4, 3};

enum class Age { fresh, stale };

// A result for kSpec, keyed by the tile's kernel source hash of today or by one no kernel has.
TuningResult result(const DeviceKey& device, int seqlen, const gen::TileConfig& tile,
                    double time_ms, Age age = Age::fresh) {
  TuningResult r;
  r.device = device;
  r.problem = problem_key(kSpec, seqlen, seqlen);
  r.template_hash = age == Age::fresh ? kernel_source_hash(r.problem, tile) : kStaleHash;
  r.tile = tile;
  r.time_ms = time_ms;
  r.tflops = 100.0 / time_ms;
  r.measured_at = "2025-06-01T12:00:00Z";
  r.method = "test";
  r.source = "host-a";
  return r;
}

TuningCandidate candidate(const gen::TileConfig& tile, Age age) {
  TuningCandidate c;
  c.device = kH200;
  c.problem = problem_key(kSpec, 4096, 4096);
  c.template_hash = age == Age::fresh ? kernel_source_hash(c.problem, tile) : kStaleHash;
  c.tile = tile;
  c.status = CandidateStatus::ok;
  c.time_ms = 1.0;
  c.measured_at = "2025-06-01T12:00:00Z";
  return c;
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

TEST(TuningKeys, FreshnessFollowsTheKernelSourceHash) {
  const ProblemKey problem = problem_key(kSpec, 4096, 4096);
  EXPECT_EQ(kernel_source_hash(problem, kTileA),
            gen::kernel_source_hash(gen::Variant{kSpec, kTileA}));
  EXPECT_NE(kernel_source_hash(problem, kTileA), kernel_source_hash(problem, kTileB));
  EXPECT_TRUE(is_fresh(result(kH200, 4096, kTileA, 1.0)));
  EXPECT_FALSE(is_fresh(result(kH200, 4096, kTileA, 1.0, Age::stale)));
  EXPECT_TRUE(is_fresh(candidate(kTileA, Age::fresh)));
  EXPECT_FALSE(is_fresh(candidate(kTileA, Age::stale)));
  // A spec that does not parse or a tile the generator refuses has no source hash today.
  EXPECT_EQ(kernel_source_hash({"fwd.bf16", 4096, 4096}, kTileA), "");
  EXPECT_EQ(kernel_source_hash(problem, gen::TileConfig{48, 64, 4, 2}), "");
  const FreshnessCounts counts = count_freshness({result(kH200, 4096, kTileA, 1.0),
                                                  result(kH200, 1024, kTileA, 1.0, Age::stale),
                                                  result(kH200, 2048, kTileB, 1.0, Age::stale)});
  EXPECT_EQ(counts.fresh, 1);
  EXPECT_EQ(counts.stale, 2);
}

TEST(TuningStore, RoundTripOfBestAndCandidates) {
  Database db = Database::in_memory();
  TuningStore store(db);
  store.put_best(result(kH200, 4096, kTileA, 1.5));
  TuningCandidate failed = candidate(kTileB, Age::fresh);
  failed.status = CandidateStatus::compile_error;
  failed.time_ms.reset();
  failed.message = "ptxas: too many resources";
  store.put_candidate(failed);

  const std::optional<TuningResult> best = store.best(kH200, problem_key(kSpec, 4000, 3000));
  ASSERT_TRUE(best);
  EXPECT_EQ(best->tile, kTileA);
  EXPECT_DOUBLE_EQ(best->time_ms, 1.5);
  EXPECT_EQ(best->source, "host-a");
  EXPECT_FALSE(store.best(kH200, problem_key(kSpec, 8192, 8192)));
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
  const std::optional<TuningResult> best = store.best(kH200, problem_key(kSpec, 4096, 4096));
  ASSERT_TRUE(best);
  EXPECT_EQ(best->tile, kTileB);
  EXPECT_EQ(best->source, "host-b");
  EXPECT_EQ(store.best(kH200, problem_key(kSpec, 1024, 1024))->tile, kTileA);
  EXPECT_EQ(store.all_best().size(), 2u) << "one result per device and problem";
}

TEST(TuningStore, AFreshResultReplacesAStaleOneHoweverFast) {
  Database db = Database::in_memory();
  TuningStore store(db);
  store.put_best(result(kH200, 4096, kTileA, 0.5, Age::stale));
  store.put_best(result(kH200, 1024, kTileA, 0.5));
  const MergeCounts counts = store.merge(
      {result(kH200, 4096, kTileB, 2.0), result(kH200, 1024, kTileB, 0.1, Age::stale)}, {});
  EXPECT_EQ(counts.results_kept, 1);
  EXPECT_EQ(counts.results_slower, 1);
  const std::optional<TuningResult> replaced = store.best(kH200, problem_key(kSpec, 4096, 4096));
  ASSERT_TRUE(replaced);
  EXPECT_EQ(replaced->tile, kTileB);
  EXPECT_TRUE(is_fresh(*replaced));
  EXPECT_EQ(store.best(kH200, problem_key(kSpec, 1024, 1024))->tile, kTileA);
  EXPECT_EQ(store.all_best().size(), 2u) << "the stale row of 4096 is gone";
}

TEST(TuningStore, ACandidateMeasuredAgainReplacesItsStaleRow) {
  Database db = Database::in_memory();
  TuningStore store(db);
  store.put_candidate(candidate(kTileA, Age::stale));
  store.put_candidate(candidate(kTileB, Age::stale));
  store.put_candidate(candidate(kTileA, Age::fresh));
  const std::vector<TuningCandidate> rows = store.all_candidates();
  ASSERT_EQ(rows.size(), 2u);
  for (const TuningCandidate& row : rows) {
    EXPECT_EQ(is_fresh(row), row.tile == kTileA) << gen::to_string(row.tile);
  }
}

TEST(TuningStore, PruneRemovesOnlyStaleRows) {
  Database db = Database::in_memory();
  TuningStore store(db);
  store.put_best(result(kH200, 4096, kTileA, 1.0));
  store.put_best(result(kH200, 1024, kTileA, 1.0, Age::stale));
  store.put_best(result(kH200, 2048, kTileB, 1.0, Age::stale));
  store.put_candidate(candidate(kTileA, Age::fresh));
  store.put_candidate(candidate(kTileB, Age::stale));
  EXPECT_EQ(store.prune_stale(), 3);
  ASSERT_EQ(store.all_best().size(), 1u);
  EXPECT_EQ(store.all_best()[0].problem.seqlen_q_bucket, 4096);
  ASSERT_EQ(store.all_candidates().size(), 1u);
  EXPECT_EQ(store.all_candidates()[0].tile, kTileA);
  EXPECT_EQ(store.prune_stale(), 0);
}

TEST(TileLookup, EachLevelOfTheChain) {
  const policy::Target target = policy::target_for_arch("sm_90a");
  const std::vector<TuningResult> user = {result(kH200, 4096, kTileA, 1.0)};
  const std::vector<TuningResult> shipped = {result(kH200, 4096, kTileB, 0.5),
                                             result(kH200, 16384, kTileB, 9.0)};

  TileChoice choice = choose_tile(user, shipped, kH200, kSpec, 4096, 4096, target);
  EXPECT_EQ(choice.served_by, ServedBy::user_db);
  EXPECT_EQ(choice.tile, kTileA);
  EXPECT_FALSE(choice.stale);

  choice = choose_tile({}, shipped, kH200, kSpec, 4096, 4096, target);
  EXPECT_EQ(choice.served_by, ServedBy::shipped_db);
  EXPECT_EQ(choice.tile, kTileB);

  choice = choose_tile(user, shipped, kH200, kSpec, 2048, 2048, target);
  EXPECT_EQ(choice.served_by, ServedBy::nearest_bucket);
  EXPECT_EQ(choice.tile, kTileA);  // 4096 is nearer than 16384; the user's row wins the tie
  EXPECT_NE(choice.reason.find("q 4096 k 4096 instead of q 2048 k 2048"), std::string::npos);

  const DeviceKey a100{"NVIDIA A100-SXM4-80GB", "sm_80", 108};
  choice = choose_tile(user, shipped, a100, kSpec, 4096, 4096, policy::target_for_arch("sm_80"));
  EXPECT_EQ(choice.served_by, ServedBy::heuristic);
  EXPECT_EQ(choice.tile, policy::default_tile(kSpec, policy::target_for_arch("sm_80")).tile);
  EXPECT_NE(choice.reason.find("heuristic default"), std::string::npos);
  EXPECT_FALSE(choice.stale);
}

// Every fresh level comes before every stale one: user, shipped, nearest bucket over fresh rows,
// then the same over stale rows, then the heuristic.
TEST(TileLookup, StaleRowsAreHintsAfterEveryFreshRow) {
  const policy::Target target = policy::target_for_arch("sm_90a");
  const gen::TileConfig kTileC{128, 64, 8, 2};
  const gen::TileConfig kTileD{64, 128, 4, 2};
  ASSERT_EQ(policy::rejection(kSpec, kTileC, target), "");
  ASSERT_EQ(policy::rejection(kSpec, kTileD, target), "");
  struct Level {
    const char* what;
    std::vector<TuningResult> user, shipped;
    ServedBy served_by;
    gen::TileConfig tile;
    bool stale;
  };
  // Each level holds the rows that outrank the next level's answer.
  const TuningResult user_stale = result(kH200, 4096, kTileA, 0.1, Age::stale);
  const TuningResult shipped_stale = result(kH200, 4096, kTileB, 0.1, Age::stale);
  const TuningResult near_stale = result(kH200, 8192, kTileC, 0.1, Age::stale);
  const std::vector<Level> levels = {
      {"user fresh",
       {result(kH200, 4096, kTileD, 2.0), user_stale},
       {shipped_stale},
       ServedBy::user_db,
       kTileD,
       false},
      {"shipped fresh",
       {user_stale},
       {result(kH200, 4096, kTileD, 2.0), shipped_stale},
       ServedBy::shipped_db,
       kTileD,
       false},
      {"nearest fresh",
       {user_stale, result(kH200, 16384, kTileD, 2.0)},
       {shipped_stale},
       ServedBy::nearest_bucket,
       kTileD,
       false},
      {"user stale", {user_stale, near_stale}, {shipped_stale}, ServedBy::user_db, kTileA, true},
      {"shipped stale", {near_stale}, {shipped_stale}, ServedBy::shipped_db, kTileB, true},
      {"nearest stale", {near_stale}, {}, ServedBy::nearest_bucket, kTileC, true},
      {"heuristic", {}, {}, ServedBy::heuristic, policy::default_tile(kSpec, target).tile, false},
  };
  for (const Level& level : levels) {
    const TileChoice choice =
        choose_tile(level.user, level.shipped, kH200, kSpec, 4096, 4096, target);
    EXPECT_EQ(choice.served_by, level.served_by) << level.what;
    EXPECT_EQ(choice.tile, level.tile) << level.what;
    EXPECT_EQ(choice.stale, level.stale) << level.what;
    EXPECT_EQ(choice.reason.find("stale") != std::string::npos, level.stale)
        << level.what << ": " << choice.reason;
  }
}

// Four K/V stages of 128 keys at d = 128 need more shared memory than a Hopper CTA may have: a
// tile the generator builds and the sm_90a target rejects.
const gen::TileConfig kTooLarge{128, 128, 8, 4};

TEST(TileLookup, ATileTheConstraintsRejectIsNeverChosen) {
  const policy::Target target = policy::target_for_arch("sm_90a");
  ASSERT_EQ(policy::structural_rejection(kSpec, kTooLarge), "");
  ASSERT_FALSE(policy::rejection(kSpec, kTooLarge, target).empty());
  const std::vector<TuningResult> user = {result(kH200, 4096, kTooLarge, 0.1)};
  const std::vector<TuningResult> shipped = {result(kH200, 4096, kTileB, 0.5)};
  const TileChoice choice = choose_tile(user, shipped, kH200, kSpec, 4096, 4096, target);
  EXPECT_EQ(choice.served_by, ServedBy::shipped_db);
  EXPECT_EQ(choice.tile, kTileB);
  EXPECT_NE(choice.reason.find("rejected"), std::string::npos);
}

TEST(TileLookup, AStaleTileIsCheckedAgainstTheConstraintsOfToday) {
  const policy::Target target = policy::target_for_arch("sm_90a");
  const gen::TileConfig refused{48, 64, 4, 2};  // 48 rows cannot be split over 4 warps of 16
  ASSERT_FALSE(policy::structural_rejection(kSpec, refused).empty());
  TuningResult unbuildable = result(kH200, 4096, refused, 0.1, Age::stale);
  const std::vector<TuningResult> user = {result(kH200, 4096, kTooLarge, 0.1, Age::stale),
                                          unbuildable};
  TileChoice choice = choose_tile(user, {}, kH200, kSpec, 4096, 4096, target);
  EXPECT_EQ(choice.served_by, ServedBy::heuristic);
  EXPECT_FALSE(choice.stale);
  EXPECT_NE(choice.reason.find("rejected"), std::string::npos);
  // A tile the generator refuses has no source hash today, so not even an empty one matches.
  unbuildable.template_hash = "";
  EXPECT_FALSE(is_fresh(unbuildable));
  choice = choose_tile({unbuildable}, {}, kH200, kSpec, 4096, 4096, target);
  EXPECT_EQ(choice.served_by, ServedBy::heuristic);
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

TEST(TuningJson, ExportImportRoundTripKeepsFreshAndStaleRows) {
  Database source = Database::in_memory();
  TuningStore store(source);
  store.put_best(result(kH200, 4096, kTileA, 1.0));
  store.put_best(result(kH200, 1024, kTileB, 1.0, Age::stale));
  TuningCandidate timed_out = candidate(kTileB, Age::stale);
  timed_out.status = CandidateStatus::timeout;
  timed_out.time_ms.reset();
  store.put_candidate(timed_out);
  store.put_candidate(candidate(kTileA, Age::fresh));

  const nlohmann::json exported = to_json(export_document(store));
  const TuningDocument imported = parse_tuning_document(exported, "export");
  Database target = Database::in_memory();
  TuningStore target_store(target);
  target_store.merge(imported.results, imported.candidates);
  EXPECT_EQ(to_json(export_document(target_store)), exported);
  const FreshnessCounts counts = count_freshness(target_store.all_best());
  EXPECT_EQ(counts.fresh, 1);
  EXPECT_EQ(counts.stale, 1);
  // Rows come in bucket order: the stale one of 1024 first, with its hash as it was.
  EXPECT_EQ(exported["results"][0]["template_hash"], kStaleHash);
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
      {"unknown tile field", [](auto& j) { j["results"][0]["tile"]["block_k"] = 2; },
       "results[0].tile: unknown field 'block_k'"},
      {"split count of a forward tile", [](auto& j) { j["results"][0]["tile"]["splits"] = 2; },
       "work_split: the split count applies to decode kernels, not fwd"},
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
