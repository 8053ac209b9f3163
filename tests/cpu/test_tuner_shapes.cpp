// Tuning shapes: the shape string and its errors, the JSON shape file and its errors, presets,
// the expansion into tasks (specs and problem keys as the runtime derives them, padded lengths),
// decode shapes (contiguous and paged caches, query rows, the units key), task round trips
// through the worker protocol's JSON, and shards.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>

#include "temp_dir.hpp"
#include "tuner/shapes.hpp"
#include "tuner/tuner.hpp"

namespace sigattn::tune {
namespace {

using sigattn::testing::TempDir;

TEST(TunerShapes, StringRoundTripAndDefaults) {
  const Shape shape = parse_shape("fwd.bf16.d128.L4096.pad25");
  EXPECT_EQ(shape.batch, 4);     // 16384 tokens / 4096
  EXPECT_EQ(shape.heads_q, 16);  // 2048 / 128
  EXPECT_EQ(shape.heads_kv, 16);
  EXPECT_EQ(shape.padding_percent, 25);
  EXPECT_EQ(to_string(shape), "fwd.bf16.d128.L4096.pad25.b4.h16");
  for (const char* text :
       {"bwd.fp16.d64.L512.b3.h8x2.causal.accurate", "fwd.bf16.d128.L100.b2.h4"}) {
    EXPECT_EQ(to_string(parse_shape(text)), text);
  }
}

TEST(TunerShapes, StringErrorsNameTheField) {
  const std::pair<const char*, const char*> cases[] = {
      {"fwd.bf16.d128", "expected"},
      {"fwx.bf16.d128.L4096", "pass"},
      {"fwd.bf17.d128.L4096", "dtype"},
      {"fwd.bf16.128.L4096", "head dim"},
      {"fwd.bf16.d100.L4096", "head_dim 100"},
      {"fwd.bf16.d128.Lx", "length"},
      {"fwd.bf16.d128.L0", "seqlen 0"},
      {"fwd.bf16.d128.L4096.pad100", "padding_percent 100"},
      {"fwd.bf16.d128.L4096.h16x5", "heads_kv 5"},
      {"fwd.bf16.d128.L4096.b70000", "batch 70000"},
      {"fwd.bf16.d128.L4096.mask", "unknown field 'mask'"},
      {"fwd.bf16.d256.L1048576.b64.h64", "bytes"},
      // Each field is in range, but the byte count does not fit in 64 bits.
      {"fwd.bf16.d128.L16777216.b65535.h65535", "more than 2^63 bytes"},
      {"bwd.bf16.d256.L16777216.b65535.h65535x65535", "more than 2^63 bytes"},
      {"fwd.bf16.d128.L4096.b0", "batch 0 must be at least 1"},
      {"fwd.bf16.d128.L4096.h0", "heads 0 must be at least 1"},
      {"fwd.bf16.d128.L4096.h16x0", "kv heads 0 must be at least 1"},
      {"fwd.bf16.d128.L4096.q2", "decode shapes only"},
      {"bwd.bf16.d128.L4096.paged16", "decode shapes only"},
      {"dec.bf16.d128.L4096.q0", "query rows 0 must be at least 1"},
      {"dec.bf16.d128.L4096.q4097", "query rows 4097 must be in [1, seqlen 4096]"},
      {"dec.bf16.d128.L4096.paged0", "block size 0 must be at least 1"},
      {"dec.bf16.d128.L4096.paged8192", "block size 8192 must be in [1, seqlen 4096]"},
      {"dec.bf16.d128.L100.q80.pad50", "shorter than the 80 query rows"},
      {"dec.bf16.d128.L131072.b4096.h32x8", "bytes"},
      {"dex.bf16.d128.L4096", "must be fwd, bwd or dec"},
  };
  for (const auto& [text, needle] : cases) {
    try {
      parse_shape(text);
      ADD_FAILURE() << text << " was accepted";
    } catch (const std::invalid_argument& error) {
      EXPECT_NE(std::string(error.what()).find(needle), std::string::npos)
          << text << ": " << error.what();
    }
  }
}

TEST(TunerShapes, JsonFile) {
  TempDir dir;
  const auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return dir / name;
  };
  const std::vector<Shape> shapes = read_shapes_file(
      write("ok.json",
            R"({"shapes": [{"pass": "backward", "dtype": "fp16", "head_dim": 64, "seqlen": 2048,
          "padding_percent": 50, "causal": true},
         {"pass": "forward", "dtype": "bf16", "head_dim": 128, "seqlen": 1000, "batch": 2,
          "heads_q": 8, "heads_kv": 2, "sigmoid": "accurate"}]})"));
  ASSERT_EQ(shapes.size(), 2u);
  EXPECT_EQ(to_string(shapes[0]), "bwd.fp16.d64.L2048.pad50.b8.h32.causal");
  EXPECT_EQ(to_string(shapes[1]), "fwd.bf16.d128.L1000.b2.h8x2.accurate");

  const std::pair<const char*, const char*> bad[] = {
      {"not json", "not valid JSON"},
      {R"([1, 2])", "\"shapes\" array"},
      {R"({"shapes": []})", "empty"},
      {R"({"shapes": [], "extra": 1})", "unknown top-level field 'extra'"},
      {R"({"shapes": [{"pass": "forward", "dtype": "bf16", "head_dim": 64}]})",
       "shapes[0]: missing field 'seqlen'"},
      {R"({"shapes": [{"pass": "forward", "dtype": "bf16", "head_dim": "64", "seqlen": 8}]})",
       "shapes[0].head_dim: must be an integer"},
      {R"({"shapes": [{"pass": "sideways", "dtype": "bf16", "head_dim": 64, "seqlen": 8}]})",
       "shapes[0].pass"},
      {R"({"shapes": [{"pass": "forward", "dtype": "bf16", "head_dim": 64, "seqlen": 8,
          "colour": 1}]})",
       "shapes[0]: unknown field 'colour'"},
      {R"({"shapes": [{"pass": "forward", "dtype": "bf16", "head_dim": 72, "seqlen": 8,
          "heads_q": 3, "heads_kv": 2}]})",
       "shapes[0]: shape"},
      {R"({"shapes": [{"pass": "forward", "dtype": "bf16", "head_dim": 64, "seqlen": 8,
          "batch": 0}]})",
       "shapes[0].batch: 0 is out of range [1, 16777216]"},
      {R"({"shapes": [{"pass": "forward", "dtype": "bf16", "head_dim": 64, "seqlen": 8,
          "heads_q": 18446744073709551615}]})",
       "shapes[0].heads_q: 18446744073709551615 is out of range"},
      {R"({"shapes": [{"pass": "forward", "dtype": "bf16", "head_dim": 64, "seqlen": 8,
          "seqlen": 4096}]})",
       "the key 'seqlen' appears twice"},
      {R"({"shapes": [{"pass": "forward", "dtype": "bf16", "head_dim": 64, "seqlen": 8,
          "block_size": 4}]})",
       "decode shapes only"},
      {R"({"shapes": [{"pass": "decode", "dtype": "bf16", "head_dim": 64, "seqlen": 8,
          "decode_rows": 0}]})",
       "shapes[0].decode_rows: 0 is out of range"},
      {R"({"shapes": [{"pass": "decode", "dtype": "bf16", "head_dim": 64, "seqlen": 8,
          "block_size": 16}]})",
       "block size 16 must be in [1, seqlen 8]"},
  };
  for (const auto& [text, needle] : bad) {
    try {
      read_shapes_file(write("bad.json", text));
      ADD_FAILURE() << text << " was accepted";
    } catch (const std::invalid_argument& error) {
      EXPECT_NE(std::string(error.what()).find(needle), std::string::npos)
          << text << ": " << error.what();
    }
  }
  EXPECT_THROW(read_shapes_file(dir / "missing.json"), std::invalid_argument);
  try {
    read_shapes_file(dir.path());
    ADD_FAILURE() << "a directory was read as a shape file";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("it is a directory"), std::string::npos)
        << error.what();
  }
}

TEST(TunerShapes, TensorBytesDoNotOverflow) {
  Shape shape = resolved(Shape{});
  EXPECT_EQ(tensor_bytes(shape), std::int64_t{2} * 4 * 4 * 4096 * 16 * 128);
  shape.seqlen = 1 << 24;
  shape.batch = shape.heads_q = shape.heads_kv = 65535;
  EXPECT_EQ(tensor_bytes(shape), std::nullopt);
}

TEST(TunerShapes, DecodeShapes) {
  const Shape shape = parse_shape("dec.bf16.d128.L4096.h32x8.paged16.causal");
  EXPECT_EQ(shape.pass, Pass::decode);
  EXPECT_EQ(shape.batch, 16);  // 65536 cached tokens / 4096
  EXPECT_EQ(shape.decode_rows, 1);
  EXPECT_EQ(shape.block_size, 16);
  EXPECT_EQ(to_string(shape), "dec.bf16.d128.L4096.b16.h32x8.paged16.causal");
  for (const char* text :
       {"dec.fp16.d64.L1000.pad20.b3.h8x2.q4", "dec.bf16.d256.L300.b2.h4.q3.paged7"}) {
    EXPECT_EQ(to_string(parse_shape(text)), text);
  }
  // q and out of one row, the caches of 4096 positions: 2 bytes an element.
  EXPECT_EQ(tensor_bytes(shape), 2 * 2 * (16 * 1 * 32 * 128 + 16 * 4096 * 8 * 128));
  // A paged cache holds whole blocks: 300 positions in blocks of 7 take 43 of them.
  const Shape paged = parse_shape("dec.bf16.d64.L300.b2.h4.paged7");
  EXPECT_EQ(blocks_per_sequence(paged), 43);
  EXPECT_EQ(tensor_bytes(paged), 2 * 2 * (2 * 1 * 4 * 64 + 2 * 43 * 7 * 4 * 64));

  const std::vector<Task> tasks = tasks_for(shape);
  ASSERT_EQ(tasks.size(), 1u);
  EXPECT_EQ(tasks[0].direction, gen::Direction::decode);
  EXPECT_EQ(tasks[0].spec.layout, gen::Layout::paged);
  EXPECT_TRUE(tasks[0].spec.causal);
  // The units key: batch 16 x 8 kv heads x 1 row; the capacity of the cache.
  EXPECT_EQ(tasks[0].problem.seqlen_q_bucket, 128);
  EXPECT_EQ(tasks[0].problem.seqlen_k_bucket, 4096);
  EXPECT_EQ(tasks[0].name(), "dec.bf16.d128.L4096.b16.h32x8.paged16.causal");
  // One row at the end of each cache sees every key.
  EXPECT_DOUBLE_EQ(tasks[0].flops(), 4.0 * 32 * 128 * 16 * 4096);
  // Four causal rows at the end see 4 x 4096 - (0 + 1 + 2 + 3) pairs.
  EXPECT_DOUBLE_EQ(tasks_for(parse_shape("dec.bf16.d128.L4096.b1.h8.q4.causal"))[0].flops(),
                   4.0 * 8 * 128 * (4.0 * 4096 - 6));
  // Padded caches: their lengths drawn from the shape, as for the forward.
  const Task mixed = tasks_for(parse_shape("dec.bf16.d128.L2000.pad50.b6.h16x4"))[0];
  ASSERT_EQ(mixed.lengths.size(), 6u);
  for (const int length : mixed.lengths) {
    EXPECT_GE(length, 1000);
    EXPECT_LE(length, 2000);
  }
  EXPECT_EQ(mixed.spec.layout, gen::Layout::padded);  // a contiguous cache
  EXPECT_EQ(mixed.problem.seqlen_k_bucket, 2048);

  nlohmann::json j = tasks[0];
  const Task back = task_from_json(nlohmann::json::parse(j.dump()));
  EXPECT_EQ(back.shape, tasks[0].shape);
  EXPECT_EQ(back.direction, gen::Direction::decode);
  EXPECT_EQ(back.problem, tasks[0].problem);
}

TEST(TunerShapes, Presets) {
  EXPECT_EQ(preset_shapes("quick").size(), 4u);
  const std::vector<Shape> decode = preset_shapes("decode");
  EXPECT_GE(decode.size(), 30u);
  for (const Shape& shape : decode) {
    EXPECT_EQ(shape.pass, Pass::decode);
    EXPECT_LE(tensor_bytes(shape), kMaxShapeBytes) << to_string(shape);
    EXPECT_NO_THROW(tasks_for(shape)) << to_string(shape);
  }
  const std::vector<Shape> paper = preset_shapes("paper");
  EXPECT_EQ(paper.size(), 2u * 2 * 2 * 6 * 3);
  for (const Shape& shape : paper) {
    EXPECT_EQ(shape.batch * shape.seqlen, kTokensPerBatch) << to_string(shape);
    EXPECT_EQ(shape.heads_q * shape.head_dim, kHiddenSize) << to_string(shape);
    EXPECT_NO_THROW(tasks_for(shape)) << to_string(shape);
  }
  try {
    preset_shapes("huge");
    ADD_FAILURE() << "unknown preset accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("quick, paper, decode"), std::string::npos);
  }
}

TEST(TunerShapes, TasksCarryTheRuntimeSpec) {
  const std::vector<Task> dense = tasks_for(parse_shape("fwd.bf16.d128.L4096"));
  ASSERT_EQ(dense.size(), 1u);
  EXPECT_EQ(dense[0].problem.spec, "fwd.bf16.d128.dense.nomask.nosmod.fast.x128");
  EXPECT_EQ(dense[0].problem.seqlen_q_bucket, 4096);
  EXPECT_TRUE(dense[0].lengths.empty());
  EXPECT_DOUBLE_EQ(dense[0].flops(), 4.0 * 16 * 128 * 4.0 * 4096 * 4096);

  const std::vector<Task> padded = tasks_for(parse_shape("bwd.fp16.d64.L3000.pad50.causal"));
  ASSERT_EQ(padded.size(), 2u);
  EXPECT_EQ(padded[0].direction, gen::Direction::dkdv);
  EXPECT_EQ(padded[1].direction, gen::Direction::dq);
  EXPECT_EQ(padded[0].problem.spec, "dkdv.fp16.d64.padded.causal.nosmod.fast.anylen");
  EXPECT_EQ(padded[0].problem.seqlen_k_bucket, 4096);
  ASSERT_EQ(padded[0].lengths.size(), 5u);  // 16384 / 3000
  for (const int length : padded[0].lengths) {
    EXPECT_GE(length, 1500);
    EXPECT_LE(length, 3000);
  }
  EXPECT_EQ(padded[0].lengths, tasks_for(parse_shape("bwd.fp16.d64.L3000.pad50.causal"))[1].lengths)
      << "lengths are drawn from the shape, the same in every process";
  EXPECT_EQ(padded[1].name(), "bwd.fp16.d64.L3000.pad50.b5.h32.causal dq");
}

TEST(TunerShapes, TaskJsonRoundTrip) {
  for (const Task& task : tasks_for(parse_shape("bwd.bf16.d128.L2048.pad25.b3.h4x2"))) {
    nlohmann::json j = task;
    const Task back = task_from_json(nlohmann::json::parse(j.dump()));
    EXPECT_EQ(back.shape, task.shape);
    EXPECT_EQ(back.direction, task.direction);
    EXPECT_EQ(back.spec, task.spec);
    EXPECT_EQ(back.problem, task.problem);
    EXPECT_EQ(back.lengths, task.lengths);
  }
}

TEST(TunerShapes, AStoredProblemGivesItsTaskBack) {
  for (const char* text :
       {"fwd.bf16.d128.L4096", "fwd.fp16.d64.L1000.causal.accurate", "fwd.bf16.d128.L4096.pad25",
        "bwd.bf16.d128.L512", "fwd.bf16.d64.L100", "bwd.fp16.d64.L3000.pad50.causal",
        "dec.bf16.d128.L4096.b16.h32x8.paged16.causal", "dec.fp16.d64.L65536.b1.h32x8"}) {
    for (const Task& task : tasks_for(parse_shape(text))) {
      const std::optional<Task> found = task_for_problem(task.problem);
      ASSERT_TRUE(found) << task.name();
      EXPECT_EQ(found->problem, task.problem) << task.name();
      EXPECT_EQ(found->spec, task.spec) << task.name();
    }
  }
  // Problems no tuning shape gives.
  for (const cache::ProblemKey& problem :
       {cache::ProblemKey{"fwd.bf16.d128.dense.causal+window.nosmod.fast.x128", 4096, 4096},
        cache::ProblemKey{"fwd.bf16.d128.dense.nomask.smod.fast.x128", 4096, 4096},
        cache::ProblemKey{"fwd.bf16.d128.varlen.nomask.nosmod.fast.anylen", 4096, 4096},
        cache::ProblemKey{"fwd.bf16.d128.dense.nomask.nosmod.fast.x128", 4096, 1024},
        cache::ProblemKey{"fwd.bf16.d128", 4096, 4096},
        cache::ProblemKey{"decode.bf16.d128.paged.causal+window.nosmod.fast.anylen", 128, 4096}}) {
    EXPECT_FALSE(task_for_problem(problem)) << problem.spec;
  }
}

TEST(TunerShapes, ShardsCoverEveryTaskOnce) {
  std::vector<Task> tasks;
  for (const Shape& shape : preset_shapes("quick")) {
    for (Task& task : tasks_for(shape)) tasks.push_back(std::move(task));
  }
  std::multiset<std::string> seen;
  for (int i = 0; i < 3; ++i) {
    for (const Task& task : shard(tasks, i, 3)) seen.insert(task.name());
  }
  EXPECT_EQ(seen.size(), tasks.size());
  for (const Task& task : tasks) EXPECT_EQ(seen.count(task.name()), 1u) << task.name();
  EXPECT_THROW(shard(tasks, 3, 3), std::invalid_argument);
  EXPECT_THROW(shard(tasks, 0, 0), std::invalid_argument);
}

}  // namespace
}  // namespace sigattn::tune
