// Generator tests: canonical variant strings round-trip and reject bad fields by name, generation
// is deterministic, the content hash follows every input (the decode split count excepted: it is
// a launch parameter), and the generated source matches the golden files in tests/data/golden
// (SIGATTN_UPDATE_GOLDENS=1 rewrites them).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "generator/generator.hpp"
#include "generator/template_store.hpp"

namespace sigattn::gen {
namespace {

Variant variant_of(const std::string& text) {
  ParsedVariant parsed = parse_variant(text);
  return Variant{parsed.spec, parsed.tile.value()};
}

TEST(VariantString, RoundTripsEveryAxis) {
  for (auto dtype : {DType::bf16, DType::fp16}) {
    for (int head_dim : {8, 40, 128, 256}) {
      for (auto layout : {Layout::dense, Layout::padded, Layout::varlen}) {
        for (int mask = 0; mask < 4; ++mask) {
          for (bool score_mod : {false, true}) {
            for (auto sigmoid : {SigmoidMode::fast, SigmoidMode::accurate}) {
              KernelSpec spec{Direction::forward, dtype,           head_dim,  layout,
                              (mask & 1) != 0,    (mask & 2) != 0, score_mod, sigmoid,
                              SeqLen::anylen};
              Variant v{spec, TileConfig{128, 32, 8, 3}};
              EXPECT_EQ(variant_of(to_string(v)), v) << to_string(v);
              EXPECT_EQ(parse_spec(to_string(spec)), spec);
            }
          }
        }
      }
    }
  }
}

TEST(VariantString, CanonicalForm) {
  KernelSpec spec;
  spec.causal = true;
  spec.score_mod = true;
  EXPECT_EQ(to_string(Variant{spec, TileConfig{128, 64, 4, 2}}),
            "fwd.bf16.d128.dense.causal.smod.fast.anylen/sm80.m128n64w4s2");
}

TEST(VariantString, FamilyAndWorkSplitRoundTrip) {
  const TileConfig hopper{128, 128, 12, 2, Family::sm90};
  EXPECT_EQ(to_string(hopper), "sm90.m128n128w12s2");
  EXPECT_EQ(parse_tile(to_string(hopper)), hopper);
  const TileConfig one_pass{64, 128, 8, 2, Family::sm80, true};
  EXPECT_EQ(to_string(one_pass), "sm80.m64n128w8s2.atomicdq");
  EXPECT_EQ(parse_tile(to_string(one_pass)), one_pass);
  nlohmann::json j = one_pass;
  EXPECT_EQ(j.get<TileConfig>(), one_pass);
}

TEST(VariantString, ScheduleRoundTrips) {
  TileConfig dynamic{128, 128, 12, 3, Family::sm90};
  dynamic.schedule = Schedule::dynamic;
  EXPECT_EQ(to_string(dynamic), "sm90.m128n128w12s3.dynamic");
  EXPECT_EQ(parse_tile(to_string(dynamic)), dynamic);
  nlohmann::json j = dynamic;
  EXPECT_EQ(j["schedule"], "dynamic");
  EXPECT_EQ(j.get<TileConfig>(), dynamic);
  // The strided schedule is the default and is not written.
  const TileConfig strided{128, 128, 12, 3, Family::sm90};
  EXPECT_EQ(to_string(strided), "sm90.m128n128w12s3");
  EXPECT_FALSE(nlohmann::json(strided).contains("schedule"));
  // Both suffixes, in order.
  TileConfig both = dynamic;
  both.atomic_dq = true;
  EXPECT_EQ(to_string(both), "sm90.m128n128w12s3.atomicdq.dynamic");
  EXPECT_EQ(parse_tile(to_string(both)), both);
  j["schedule"] = "lpt";
  EXPECT_THROW(j.get<TileConfig>(), std::invalid_argument);
}

TEST(VariantString, DecodeSpecsAndSplitCountsRoundTrip) {
  for (auto layout : {Layout::padded, Layout::paged}) {
    for (int mask = 0; mask < 4; ++mask) {
      KernelSpec spec{Direction::decode, DType::fp16,     64,   layout,
                      (mask & 1) != 0,   (mask & 2) != 0, true, SigmoidMode::accurate,
                      SeqLen::anylen};
      for (int splits : {0, 1, 33}) {
        Variant v{spec, TileConfig{16, 64, 4, 3}};
        v.tile.splits = splits;
        EXPECT_EQ(variant_of(to_string(v)), v) << to_string(v);
      }
    }
  }
  TileConfig split{16, 64, 4, 3};
  split.splits = 8;
  EXPECT_EQ(to_string(split), "sm80.m16n64w4s3.splits8");
  nlohmann::json j = split;
  EXPECT_EQ(j.at("splits"), 8);
  EXPECT_EQ(j.get<TileConfig>(), split);
  EXPECT_FALSE(nlohmann::json(TileConfig{16, 64, 4, 3}).contains("splits"));
  EXPECT_EQ(to_string(parse_spec("decode.bf16.d128.paged.causal.nosmod.fast.anylen")),
            "decode.bf16.d128.paged.causal.nosmod.fast.anylen");
}

TEST(VariantString, SpecWithoutTileLeavesTileEmpty) {
  ParsedVariant parsed = parse_variant("fwd.fp16.d64.varlen.window.nosmod.accurate.anylen");
  EXPECT_FALSE(parsed.tile.has_value());
  EXPECT_EQ(parsed.spec.layout, Layout::varlen);
  EXPECT_TRUE(parsed.spec.window);
  EXPECT_EQ(parsed.spec.sigmoid, SigmoidMode::accurate);
}

void expect_rejected(const std::string& text, const std::string& needle) {
  try {
    parse_variant(text);
    ADD_FAILURE() << "accepted " << text;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << text << " -> " << e.what();
  }
}

TEST(VariantString, BadFieldsAreNamed) {
  expect_rejected("bwd.bf16.d128.dense.nomask.nosmod.fast.anylen", "direction");
  expect_rejected("fwd.fp32.d128.dense.nomask.nosmod.fast.anylen", "dtype");
  expect_rejected("fwd.bf16.d100.dense.nomask.nosmod.fast.anylen", "head dim");
  expect_rejected("fwd.bf16.d264.dense.nomask.nosmod.fast.anylen", "head dim");
  expect_rejected("fwd.bf16.dx.dense.nomask.nosmod.fast.anylen", "head dim");
  expect_rejected("fwd.bf16.d128.ragged.nomask.nosmod.fast.anylen", "layout");
  expect_rejected("fwd.bf16.d128.dense.sliding.nosmod.fast.anylen", "mask");
  expect_rejected("fwd.bf16.d128.dense.nomask.mod.fast.anylen", "score_mod");
  expect_rejected("fwd.bf16.d128.dense.nomask.nosmod.exact.anylen", "sigmoid");
  expect_rejected("fwd.bf16.d128.dense.nomask.nosmod.fast.x64", "seqlen");
  expect_rejected("fwd.bf16.d128.padded.nomask.nosmod.fast.x128", "seqlen");
  expect_rejected("fwd.bf16.d128.dense.nomask.nosmod.fast", "8 dot-separated fields");
  expect_rejected("fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm70.m128n64w4s2", "family");
  expect_rejected("fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w4", "tile");
  expect_rejected("fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w4s2x", "tile");
  expect_rejected("fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80", "tile");
  expect_rejected("fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w4s2.atomic", "tile");
  expect_rejected("fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/m128n64w4s2", "FAMILY");
  expect_rejected(
      "fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm90.m128n64w12s2.dynamic.atomicdq",
      "in that order");
  expect_rejected("fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm90.m128n64w12s2.dynamic.dynamic",
                  "tile");
  expect_rejected("fwd.bf16.d128.paged.nomask.nosmod.fast.anylen", "paged applies to decode");
  expect_rejected("decode.bf16.d128.dense.causal.nosmod.fast.anylen", "padded (a contiguous");
  expect_rejected("decode.bf16.d128.varlen.causal.nosmod.fast.anylen", "padded (a contiguous");
  expect_rejected("decode.bf16.d128.paged.causal.nosmod.fast.anylen/sm80.m16n64w4s3.splits0",
                  "split count");
  expect_rejected("decode.bf16.d128.paged.causal.nosmod.fast.anylen/sm80.m16n64w4s3.splitsx",
                  "split count");
  expect_rejected("decode.bf16.d128.paged.causal.nosmod.fast.anylen/sm80.m16n64w4s3.split4",
                  "in that order");
}

TEST(TileConfigJson, RoundTripsAndRejectsUnknownFields) {
  TileConfig tile{64, 32, 4, 3};
  nlohmann::json j = tile;
  EXPECT_EQ(j.get<TileConfig>(), tile);
  j["block_k"] = 16;
  EXPECT_THROW(j.get<TileConfig>(), std::invalid_argument);
  EXPECT_THROW((nlohmann::json{{"block_m", 64}}.get<TileConfig>()), nlohmann::json::exception);
}

TEST(Generate, IsDeterministic) {
  Variant v = variant_of("fwd.fp16.d96.padded.causal+window.smod.accurate.anylen/sm80.m64n32w4s2");
  GeneratedKernel a = generate(v);
  GeneratedKernel b = generate(v);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.options, b.options);
  EXPECT_EQ(a.content_hash, b.content_hash);
  EXPECT_EQ(a.name_expression, "sigattn::fwd_sm80_kernel<sigattn_generated::Cfg>");
  EXPECT_EQ(a.threads, 128);
  EXPECT_EQ(a.smem_bytes, smem_bytes(v.spec, v.tile));
  EXPECT_EQ(a.content_hash.size(), 32u);
}

TEST(Generate, HashChangesWithEveryAxis) {
  const std::string base = "fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w8s2";
  const std::vector<std::string> others = {
      "fwd.fp16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w8s2",
      "fwd.bf16.d64.dense.nomask.nosmod.fast.anylen/sm80.m128n64w8s2",
      "fwd.bf16.d128.padded.nomask.nosmod.fast.anylen/sm80.m128n64w8s2",
      "fwd.bf16.d128.varlen.nomask.nosmod.fast.anylen/sm80.m128n64w8s2",
      "fwd.bf16.d128.dense.causal.nosmod.fast.anylen/sm80.m128n64w8s2",
      "fwd.bf16.d128.dense.window.nosmod.fast.anylen/sm80.m128n64w8s2",
      "fwd.bf16.d128.dense.nomask.smod.fast.anylen/sm80.m128n64w8s2",
      "fwd.bf16.d128.dense.nomask.nosmod.accurate.anylen/sm80.m128n64w8s2",
      "fwd.bf16.d128.dense.nomask.nosmod.fast.x128/sm80.m128n64w8s2",
      "fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m64n64w4s2",
      "fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n32w8s2",
      "fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w4s2",
      "fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w8s3",
  };
  const std::string base_hash = generate(variant_of(base)).content_hash;
  for (const auto& other : others) {
    EXPECT_NE(generate(variant_of(other)).content_hash, base_hash) << other;
  }
}

TEST(Generate, RejectsTilesOutsideTheFamily) {
  KernelSpec spec;
  EXPECT_THROW(generate({spec, {128, 64, 3, 2}}), std::invalid_argument);
  EXPECT_THROW(generate({spec, {96, 64, 4, 2}}), std::invalid_argument);
  EXPECT_THROW(generate({spec, {128, 40, 4, 2}}), std::invalid_argument);
  EXPECT_THROW(generate({spec, {128, 64, 4, 5}}), std::invalid_argument);
  spec.head_dim = 100;
  EXPECT_THROW(generate({spec, {128, 64, 4, 2}}), std::invalid_argument);
  spec.head_dim = 128;
  spec.seqlen = SeqLen::x128;
  EXPECT_THROW(generate({spec, {128, 256, 8, 2}}), std::invalid_argument);
}

TEST(Generate, Sm90ForwardHasItsKernelThreadsAndSharedMemory) {
  const GeneratedKernel kernel =
      generate(variant_of("fwd.bf16.d128.varlen.causal.nosmod.fast.anylen/sm90.m128n128w12s2"));
  EXPECT_EQ(kernel.name_expression, "sigattn::fwd_sm90_kernel<sigattn_generated::Cfg>");
  EXPECT_NE(kernel.source.find("#include \"sigattn/fwd_sm90.cuh\""), std::string::npos);
  EXPECT_EQ(kernel.threads, 384);  // a producer and two consumer warpgroups
  // Alignment slack, Q (2 column blocks x 128 rows x 128 bytes), 2 stages of K and V, barriers.
  EXPECT_EQ(kernel.smem_bytes, 1024 + 2 * 128 * 128 + 2 * 2 * 2 * 128 * 128 + 128);
}

TEST(Generate, RejectsSm90TilesOutsideTheFamily) {
  KernelSpec spec;
  EXPECT_THROW(generate({spec, {128, 128, 8, 2, Family::sm90}}), std::invalid_argument);
  EXPECT_THROW(generate({spec, {96, 128, 10, 2, Family::sm90}}), std::invalid_argument);
  EXPECT_THROW(generate({spec, {128, 512, 12, 2, Family::sm90}}), std::invalid_argument);
  EXPECT_NO_THROW(generate({spec, {128, 128, 12, 2, Family::sm90}}));
  spec.head_dim = 40;
  EXPECT_THROW(generate({spec, {128, 128, 12, 2, Family::sm90}}), std::invalid_argument);
  spec.head_dim = 128;
  spec.direction = Direction::dkdv;
  EXPECT_THROW(generate({spec, {128, 128, 12, 2, Family::sm90}}), std::invalid_argument);
}

TEST(Generate, Sm90DkdvHasItsKernelThreadsAndSharedMemory) {
  const GeneratedKernel one_pass = generate(
      variant_of("dkdv.bf16.d128.padded.causal.nosmod.fast.anylen/sm90.m64n128w12s2.atomicdq"));
  EXPECT_EQ(one_pass.name_expression, "sigattn::bwd_dkdv_sm90_kernel<sigattn_generated::Cfg>");
  EXPECT_NE(one_pass.source.find("#include \"sigattn/bwd_dkdv_sm90.cuh\""), std::string::npos);
  EXPECT_NE(one_pass.source.find("kAtomicDq = true"), std::string::npos);
  EXPECT_EQ(one_pass.threads, 384);  // a producer and two consumer warpgroups
  // Alignment slack, K and V (2 column blocks x 128 rows x 128 bytes each), 2 stages of Q and dO
  // (2 x 64 rows), two dS^T buffers (128 keys x 64 queries x 2 bytes), barriers.
  const int tiles = 1024 + 2 * 2 * 128 * 128 + 2 * 2 * 2 * 64 * 128;
  EXPECT_EQ(one_pass.smem_bytes, tiles + 2 * 128 * 64 * 2 + 128);
  const GeneratedKernel two_kernel =
      generate(variant_of("dkdv.bf16.d128.padded.causal.nosmod.fast.anylen/sm90.m64n128w12s2"));
  EXPECT_EQ(two_kernel.smem_bytes, tiles + 128);
}

TEST(Generate, Sm90DqHasItsKernelThreadsAndSharedMemory) {
  const GeneratedKernel kernel =
      generate(variant_of("dq.bf16.d128.padded.causal.smod.fast.anylen/sm90.m128n64w12s3"));
  EXPECT_EQ(kernel.name_expression, "sigattn::bwd_dq_sm90_kernel<sigattn_generated::Cfg>");
  EXPECT_NE(kernel.source.find("#include \"sigattn/bwd_dq_sm90.cuh\""), std::string::npos);
  EXPECT_EQ(kernel.threads, 384);  // a producer and two consumer warpgroups
  // Alignment slack, Q and dO (2 column blocks x 128 rows x 128 bytes each), 3 stages of K and V
  // (2 x 64 rows), barriers.
  EXPECT_EQ(kernel.smem_bytes, 1024 + 2 * 2 * 128 * 128 + 3 * 2 * 2 * 64 * 128 + 128);
}

TEST(Generate, RejectsSm90DqTilesOutsideTheKernel) {
  KernelSpec spec;
  spec.direction = Direction::dq;
  EXPECT_NO_THROW(generate({spec, {128, 64, 12, 3, Family::sm90}}));
  EXPECT_NO_THROW(generate({spec, {64, 64, 8, 2, Family::sm90}}));
  // Three consumer warpgroups, a warp count that does not match, S and dP of 128 keys beside dQ,
  // the one-pass split, a head dim that is not a multiple of 16.
  EXPECT_THROW(generate({spec, {192, 64, 16, 2, Family::sm90}}), std::invalid_argument);
  EXPECT_THROW(generate({spec, {128, 64, 8, 2, Family::sm90}}), std::invalid_argument);
  EXPECT_THROW(generate({spec, {128, 128, 12, 2, Family::sm90}}), std::invalid_argument);
  EXPECT_THROW(generate({spec, {128, 64, 12, 2, Family::sm90, true}}), std::invalid_argument);
  spec.head_dim = 72;
  EXPECT_THROW(generate({spec, {128, 64, 12, 2, Family::sm90}}), std::invalid_argument);
  // d=192: 32-key steps only; above, none.
  spec.head_dim = 192;
  EXPECT_NO_THROW(generate({spec, {128, 32, 12, 2, Family::sm90}}));
  EXPECT_THROW(generate({spec, {128, 64, 12, 2, Family::sm90}}), std::invalid_argument);
  spec.head_dim = 208;
  EXPECT_THROW(generate({spec, {64, 32, 8, 2, Family::sm90}}), std::invalid_argument);
}

TEST(Generate, RejectsSm90DkdvTilesOutsideTheKernel) {
  KernelSpec spec;
  spec.direction = Direction::dkdv;
  EXPECT_NO_THROW(generate({spec, {64, 128, 12, 2, Family::sm90}}));
  // One consumer warpgroup, a warp count that does not match, 128-query steps at d=128, a head
  // dim that is not a multiple of 16.
  EXPECT_THROW(generate({spec, {64, 64, 8, 2, Family::sm90}}), std::invalid_argument);
  EXPECT_THROW(generate({spec, {64, 128, 8, 2, Family::sm90}}), std::invalid_argument);
  EXPECT_THROW(generate({spec, {128, 128, 12, 2, Family::sm90}}), std::invalid_argument);
  spec.head_dim = 72;
  EXPECT_THROW(generate({spec, {64, 128, 12, 2, Family::sm90}}), std::invalid_argument);
  // Above d=128 only the gradient split (block_n 64), in the two-kernel split.
  spec.head_dim = 256;
  EXPECT_NO_THROW(generate({spec, {64, 64, 12, 2, Family::sm90}}));
  EXPECT_THROW(generate({spec, {64, 128, 12, 2, Family::sm90}}), std::invalid_argument);
  EXPECT_THROW(generate({spec, {64, 64, 12, 2, Family::sm90, true}}), std::invalid_argument);
  // d=64: the one-pass split needs 128-query steps for whole 64-column dQ parts.
  spec.head_dim = 64;
  EXPECT_NO_THROW(generate({spec, {64, 128, 12, 2, Family::sm90}}));
  EXPECT_THROW(generate({spec, {64, 128, 12, 2, Family::sm90, true}}), std::invalid_argument);
  EXPECT_NO_THROW(generate({spec, {128, 128, 12, 2, Family::sm90, true}}));
  spec.direction = Direction::dq;
  EXPECT_THROW(generate({spec, {128, 128, 12, 2, Family::sm90}}), std::invalid_argument);
}

TEST(Generate, AtomicDqOnlyForDkdvAndWithItsSharedMemory) {
  const Variant one_pass =
      variant_of("dkdv.bf16.d128.dense.causal.nosmod.fast.anylen/sm80.m32n128w8s2.atomicdq");
  Variant two_kernel = one_pass;
  two_kernel.tile.atomic_dq = false;
  const GeneratedKernel a = generate(one_pass);
  const GeneratedKernel b = generate(two_kernel);
  EXPECT_NE(a.source.find("kAtomicDq = true;"), std::string::npos);
  EXPECT_NE(b.source.find("kAtomicDq = false;"), std::string::npos);
  EXPECT_NE(a.content_hash, b.content_hash);
  // The dS^T tile: 128 keys x (32 + 8) queries of 2 bytes.
  EXPECT_EQ(a.smem_bytes - b.smem_bytes, 128 * 40 * 2);
  Variant dq = one_pass;
  dq.spec.direction = Direction::dq;
  EXPECT_THROW(generate(dq), std::invalid_argument);
}

TEST(Generate, DynamicScheduleOnlyForTheSm90KernelsAndWithItsSlots) {
  for (const char* text : {"fwd.bf16.d128.varlen.causal.nosmod.fast.anylen/sm90.m128n128w12s3",
                           "dq.bf16.d128.padded.nomask.nosmod.fast.anylen/sm90.m128n64w12s3",
                           "dkdv.bf16.d128.varlen.nomask.nosmod.fast.anylen/sm90.m64n128w12s2",
                           "dkdv.bf16.d192.padded.causal.nosmod.fast.anylen/sm90.m64n64w12s2"}) {
    const Variant strided = variant_of(text);
    Variant dynamic = strided;
    dynamic.tile.schedule = Schedule::dynamic;
    const GeneratedKernel a = generate(dynamic);
    const GeneratedKernel b = generate(strided);
    EXPECT_NE(a.source.find("kDynamicSchedule = true;"), std::string::npos) << text;
    EXPECT_NE(b.source.find("kDynamicSchedule = false;"), std::string::npos) << text;
    EXPECT_NE(a.content_hash, b.content_hash) << text;
    // Three 16-byte slots, inside the barriers' 128-byte granule.
    EXPECT_EQ(a.smem_bytes, b.smem_bytes) << text;
  }
  EXPECT_THROW(generate(variant_of(
                   "dkdv.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m32n128w8s2.dynamic")),
               std::invalid_argument);
  EXPECT_THROW(generate(variant_of(
                   "fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w8s2.dynamic")),
               std::invalid_argument);
  // The portable kernels have no schedule member.
  EXPECT_EQ(generate(variant_of("fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w8s2"))
                .source.find("kDynamicSchedule"),
            std::string::npos);
}

TEST(Generate, DqConversionDependsOnDtypeHeadDimAndLayoutOnly) {
  KernelSpec spec = parse_spec("dkdv.fp16.d136.varlen.causal+window.smod.accurate.anylen");
  const GeneratedKernel kernel = generate_dq_convert(spec);
  EXPECT_EQ(kernel.variant_name, "dqconvert.fp16.d136.varlen");
  EXPECT_EQ(kernel.name_expression, "sigattn::bwd_dq_convert_kernel<sigattn_generated::Cfg>");
  EXPECT_EQ(kernel.threads, kDqConvertThreads);
  EXPECT_EQ(kernel.smem_bytes, 0);
  EXPECT_NE(kernel.source.find("kRowsPerCta = 32;"), std::string::npos);
  KernelSpec same = parse_spec("dq.fp16.d136.varlen.nomask.nosmod.fast.anylen");
  EXPECT_EQ(generate_dq_convert(same).content_hash, kernel.content_hash);
  for (const char* other : {"dq.bf16.d136.varlen.nomask.nosmod.fast.anylen",
                            "dq.fp16.d128.varlen.nomask.nosmod.fast.anylen",
                            "dq.fp16.d136.padded.nomask.nosmod.fast.anylen"}) {
    EXPECT_NE(generate_dq_convert(parse_spec(other)).content_hash, kernel.content_hash) << other;
  }
  spec.direction = Direction::forward;
  EXPECT_THROW(generate_dq_convert(spec), std::invalid_argument);
}

TEST(Generate, DecodeCarriesTheCacheLayoutAndNotTheSplitCount) {
  const Variant paged =
      variant_of("decode.bf16.d128.paged.causal+window.smod.fast.anylen/sm80.m16n64w4s3");
  const GeneratedKernel a = generate(paged);
  EXPECT_EQ(a.name_expression, "sigattn::decode_sm80_kernel<sigattn_generated::Cfg>");
  EXPECT_NE(a.source.find("#include \"sigattn/decode_sm80.cuh\""), std::string::npos);
  EXPECT_NE(a.source.find("kPaged = true;"), std::string::npos);
  EXPECT_EQ(a.source.find("kLayout"), std::string::npos);
  EXPECT_EQ(a.threads, 128);
  // Q: 16 rows, K and V: 3 stages of 64 rows, each row 128 + 8 elements of 2 bytes; P: 16 rows
  // of 64 + 8.
  EXPECT_EQ(a.smem_bytes, (16 + 2 * 3 * 64) * 136 * 2 + 16 * 72 * 2);
  // Every split count runs one program, compiled once.
  Variant split = paged;
  split.tile.splits = 12;
  const GeneratedKernel b = generate(split);
  EXPECT_EQ(b.variant_name, to_string(split));
  EXPECT_EQ(b.source, a.source);
  EXPECT_EQ(b.content_hash, a.content_hash);
  Variant contiguous = paged;
  contiguous.spec.layout = Layout::padded;
  EXPECT_NE(generate(contiguous).source.find("kPaged = false;"), std::string::npos);
  // The family and the tile rules of the kernel.
  Variant hopper = paged;
  hopper.tile = TileConfig{128, 128, 12, 2, Family::sm90};
  EXPECT_THROW(generate(hopper), std::invalid_argument);
  Variant uneven = paged;
  uneven.tile = TileConfig{16, 32, 4, 2};
  EXPECT_THROW(generate(uneven), std::invalid_argument);
  Variant forward_split =
      variant_of("fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w8s2");
  forward_split.tile.splits = 2;
  EXPECT_THROW(generate(forward_split), std::invalid_argument);
}

TEST(Generate, CacheHelpersDependOnWhatReachesThem) {
  const KernelSpec paged = parse_spec("decode.fp16.d96.paged.causal+window.smod.accurate.anylen");
  const GeneratedKernel append = generate_kv_append(paged);
  EXPECT_EQ(append.variant_name, "kvappend.fp16.d96.paged");
  EXPECT_EQ(append.name_expression, "sigattn::kv_append_kernel<sigattn_generated::Cfg>");
  EXPECT_EQ(append.threads, kCacheHelperThreads);
  EXPECT_NE(append.source.find("kPaged = true;"), std::string::npos);
  EXPECT_EQ(generate_kv_append(parse_spec("decode.fp16.d96.paged.nomask.nosmod.fast.anylen"))
                .content_hash,
            append.content_hash);
  KernelSpec contiguous = paged;
  contiguous.layout = Layout::padded;
  EXPECT_NE(generate_kv_append(contiguous).content_hash, append.content_hash);

  const GeneratedKernel reduce = generate_decode_reduce(paged);
  EXPECT_EQ(reduce.variant_name, "decodereduce.fp16.d96");
  EXPECT_EQ(reduce.name_expression, "sigattn::decode_reduce_kernel<sigattn_generated::Cfg>");
  EXPECT_EQ(generate_decode_reduce(contiguous).content_hash, reduce.content_hash);
  KernelSpec bf16 = paged;
  bf16.dtype = DType::bf16;
  EXPECT_NE(generate_decode_reduce(bf16).content_hash, reduce.content_hash);

  const KernelSpec forward = parse_spec("fwd.fp16.d96.padded.causal.nosmod.fast.anylen");
  EXPECT_THROW(generate_kv_append(forward), std::invalid_argument);
  EXPECT_THROW(generate_decode_reduce(forward), std::invalid_argument);
}

TEST(TemplateStore, EmbedsTheKernelHeaders) {
  bool found_kernel = false;
  for (const auto& t : embedded_templates()) {
    EXPECT_GT(std::string(t.source).size(), 0u) << t.name;
    if (std::string(t.name) == "sigattn/fwd_sm80.cuh") found_kernel = true;
  }
  EXPECT_TRUE(found_kernel);
  EXPECT_EQ(template_hash().size(), 32u);
}

// The golden files hold the source with the template hash replaced, so they change only when
// the generator's output changes.
std::string normalized_source(const GeneratedKernel& kernel) {
  std::string source = kernel.source;
  const std::string& hash = template_hash();
  for (std::size_t pos = source.find(hash); pos != std::string::npos; pos = source.find(hash)) {
    source.replace(pos, hash.size(), "<template-hash>");
  }
  return source;
}

TEST(Generate, MatchesGoldenFiles) {
  const std::vector<std::string> variants = {
      "fwd.bf16.d128.dense.nomask.nosmod.fast.x128/sm80.m128n64w8s2",
      "fwd.fp16.d64.padded.causal.smod.accurate.anylen/sm80.m128n64w4s3",
      "fwd.bf16.d40.varlen.causal+window.nosmod.fast.anylen/sm80.m64n32w4s2",
      "fwd.bf16.d128.padded.causal.smod.fast.anylen/sm90.m128n128w12s2",
      "fwd.bf16.d128.varlen.causal.nosmod.fast.anylen/sm90.m128n128w12s3.dynamic",
      "dq.bf16.d64.padded.window.nosmod.fast.anylen/sm90.m128n64w12s3.dynamic",
      "dkdv.fp16.d96.varlen.causal.smod.accurate.anylen/sm80.m32n128w8s2.atomicdq",
      "decode.bf16.d128.paged.causal+window.smod.fast.anylen/sm80.m16n64w4s3",
  };
  const bool update = std::getenv("SIGATTN_UPDATE_GOLDENS") != nullptr;
  for (const auto& text : variants) {
    std::string file = std::string(SIGATTN_TEST_DATA_DIR) + "/golden/" +
                       text.substr(0, text.find('/')) + "." + text.substr(text.find('/') + 1) +
                       ".cu";
    std::string actual = normalized_source(generate(variant_of(text)));
    if (update) {
      std::ofstream(file) << actual;
      continue;
    }
    std::ifstream in(file);
    ASSERT_TRUE(in) << "missing golden file " << file
                    << " (run with SIGATTN_UPDATE_GOLDENS=1 to create it)";
    std::stringstream expected;
    expected << in.rdbuf();
    EXPECT_EQ(actual, expected.str()) << text;
  }
}

}  // namespace
}  // namespace sigattn::gen
