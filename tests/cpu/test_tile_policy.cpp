// Tile-policy tests: constraints prune by name, candidates respect them, and the heuristic
// default always fits the architecture and explains itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "generator/generator.hpp"
#include "generator/tile_policy.hpp"

namespace sigattn::policy {
namespace {

gen::KernelSpec spec_with(int head_dim, gen::DType dtype = gen::DType::bf16) {
  gen::KernelSpec spec;
  spec.head_dim = head_dim;
  spec.dtype = dtype;
  return spec;
}

TEST(Targets, KnowTheSharedMemoryLimits) {
  EXPECT_EQ(target_for_arch("sm_80").max_smem_optin, 163 * 1024);
  EXPECT_EQ(target_for_arch("sm_86").max_smem_optin, 99 * 1024);
  EXPECT_EQ(target_for_arch("sm_90a").max_smem_optin, 227 * 1024);
  EXPECT_EQ(target_for_arch("sm_100a").max_smem_optin, 227 * 1024);
  EXPECT_EQ(target_for_arch("sm_120a").max_smem_optin, 99 * 1024);
  EXPECT_EQ(target_for_arch("compute_121").max_smem_optin, 99 * 1024);
  EXPECT_THROW(target_for_arch("sm_75"), std::invalid_argument);
}

// Blackwell's ptxas needs more registers beside the accumulators of the varlen dK/dV kernel than
// sm_80's: the register rule asks the target's compute capability.
TEST(Targets, BlackwellVarlenDkdvGetsASmallerRegisterBudget) {
  gen::KernelSpec dkdv = spec_with(128);
  dkdv.direction = gen::Direction::dkdv;
  dkdv.layout = gen::Layout::varlen;
  const gen::TileConfig tile{32, 64, 4, 2};
  EXPECT_EQ(rejection(dkdv, tile, target_for_arch("sm_80")), "");
  for (const char* arch : {"sm_100a", "sm_120a", "compute_121"}) {
    EXPECT_NE(rejection(dkdv, tile, target_for_arch(arch)).find("register_budget"),
              std::string::npos)
        << arch;
  }
  dkdv.layout = gen::Layout::dense;
  EXPECT_EQ(rejection(dkdv, tile, target_for_arch("sm_100a")), "");
}

// Every architecture the list names: its constraints, candidates and defaults are asked below.
std::vector<std::string> every_arch() {
  std::vector<std::string> names;
  for (const Architecture& a : architectures()) names.emplace_back(a.name);
  return names;
}

// The register rule asks the target: a block register file of half the size leaves 128 registers
// per thread to 8 warps, too few for the accumulators of 128 rows at d = 128.
TEST(Targets, RegisterBudgetFollowsTheRegisterFile) {
  const gen::TileConfig eight_warps{128, 64, 8, 2};
  Target target = target_for_arch("sm_100a");
  EXPECT_EQ(rejection(spec_with(128), eight_warps, target), "");
  target.registers_per_block = 32 * 1024;
  EXPECT_NE(rejection(spec_with(128), eight_warps, target).find("register_budget"),
            std::string::npos);
}

TEST(Constraints, NameWhatTheyReject) {
  Target sm86 = target_for_arch("sm_86");
  EXPECT_NE(rejection(spec_with(256), {128, 128, 8, 3}, sm86).find("shared_memory"),
            std::string::npos);
  EXPECT_NE(rejection(spec_with(64), {64, 64, 8, 2}, sm86).find("mma_rows"), std::string::npos);
  EXPECT_NE(
      rejection(spec_with(128), {128, 64, 4, 2}, target_for_arch("sm_90a")).find("register_budget"),
      std::string::npos);
  gen::KernelSpec x128 = spec_with(64);
  x128.seqlen = gen::SeqLen::x128;
  EXPECT_TRUE(rejection(x128, {128, 128, 8, 2}, sm86).empty());
  EXPECT_NE(rejection(x128, {128, 256, 8, 2}, target_for_arch("sm_90a")).find("x128"),
            std::string::npos);
  EXPECT_NE(rejection(spec_with(64), {128, 64, 3, 2}, sm86).find("warps"), std::string::npos);
  EXPECT_NE(rejection(spec_with(64), {128, 40, 4, 2}, sm86).find("block_n"), std::string::npos);
  EXPECT_NE(rejection(spec_with(64), {128, 64, 4, 7}, sm86).find("stages"), std::string::npos);
}

gen::Variant variant_of(const std::string& text) {
  const gen::ParsedVariant parsed = gen::parse_variant(text);
  return {parsed.spec, parsed.tile.value()};
}

gen::Variant decode_variant(const std::string& tile) {
  return variant_of("decode.bf16.d128.paged.causal.nosmod.fast.anylen/" + tile);
}

gen::Variant with_layout(gen::Variant variant, gen::Layout layout) {
  variant.spec.layout = layout;
  return variant;
}

// A variant that breaks one structural rule, and the constraint that must name it.
struct Illegal {
  gen::Variant variant;
  std::string constraint;
};

std::vector<Illegal> illegal_variants() {
  const std::string fwd = "fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/";
  gen::Variant unsupported_head_dim = variant_of(fwd + "sm80.m128n64w4s2");
  unsupported_head_dim.spec.head_dim = 100;
  gen::Variant padded_x128 = variant_of(fwd + "sm80.m128n64w4s2");
  padded_x128.spec.layout = gen::Layout::padded;
  padded_x128.spec.seqlen = gen::SeqLen::x128;
  return {
      {variant_of(fwd + "sm80.m128n64w3s2"), "tile_shape"},
      {variant_of(fwd + "sm80.m128n40w4s2"), "tile_shape"},
      {variant_of(fwd + "sm80.m128n64w4s5"), "tile_shape"},
      {unsupported_head_dim, "head_dim"},
      {padded_x128, "x128_layout"},
      {variant_of(fwd + "sm80.m128n64w4s2.atomicdq"), "work_split"},
      {variant_of(fwd + "sm80.m128n64w4s2.dynamic"), "schedule"},
      {variant_of("dkdv.bf16.d64.dense.nomask.nosmod.fast.anylen/sm80.m64n128w8s2.dynamic"),
       "schedule"},
      {variant_of("decode.bf16.d128.paged.causal.nosmod.fast.anylen/sm80.m16n64w4s3.dynamic"),
       "schedule"},
      {variant_of(fwd + "sm80.m64n64w8s2"), "mma_rows"},
      {variant_of("fwd.bf16.d128.dense.nomask.nosmod.fast.x128/sm80.m128n256w8s2"), "x128_divides"},
      {variant_of("fwd.bf16.d40.dense.nomask.nosmod.fast.anylen/sm90.m128n128w12s2"),
       "sm90_kernel"},
      {variant_of(fwd + "sm90.m128n128w8s2"), "wgmma_shape"},
      // The Hopper forward's register rule: one consumer warpgroup cannot take 128-key steps.
      {variant_of("fwd.bf16.d64.dense.nomask.nosmod.fast.anylen/sm90.m64n128w8s2"),
       "sm90_registers"},
      {variant_of("dkdv.bf16.d128.dense.nomask.nosmod.fast.anylen/sm90.m128n128w12s2"),
       "sm90_registers"},
      {variant_of(fwd + "sm80.m128n64w8s2.splits4"), "work_split"},
      {decode_variant("sm80.m16n64w4s3.splits2000"), "work_split"},
      {with_layout(variant_of(fwd + "sm80.m128n64w8s2"), gen::Layout::paged), "cache_layout"},
      {with_layout(decode_variant("sm80.m16n64w4s3"), gen::Layout::varlen), "cache_layout"},
      {decode_variant("sm90.m128n128w12s2"), "decode_family"},
      {decode_variant("sm80.m16n64w8s3"), "mma_rows"},
  };
}

TEST(StructuralRejection, NamesTheBrokenRule) {
  for (const Illegal& illegal : illegal_variants()) {
    const std::string why = structural_rejection(illegal.variant.spec, illegal.variant.tile);
    EXPECT_EQ(why.substr(0, illegal.constraint.size() + 2), illegal.constraint + ": ")
        << gen::to_string(illegal.variant) << " -> " << why;
    // Every target refuses what no target can build, with the same reason.
    EXPECT_EQ(rejection(illegal.variant.spec, illegal.variant.tile, target_for_arch("sm_90a")),
              why);
  }
}

TEST(StructuralRejection, PassesLegalTilesWhateverTheTarget) {
  for (const std::string text : {
           "fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w4s2",
           "fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm90.m128n128w12s3",
           "dkdv.bf16.d64.padded.causal.nosmod.fast.anylen/sm90.m128n128w12s2.atomicdq",
           "dq.fp16.d128.varlen.nomask.smod.fast.anylen/sm90.m128n64w12s3",
           "fwd.bf16.d128.varlen.causal.nosmod.fast.anylen/sm90.m128n128w12s3.dynamic",
           "dq.fp16.d64.padded.window.nosmod.fast.anylen/sm90.m128n64w12s2.dynamic",
       }) {
    const gen::Variant variant = variant_of(text);
    EXPECT_EQ(structural_rejection(variant.spec, variant.tile), "") << text;
  }
  // Shared memory, registers and the family's architecture belong to a target.
  const gen::TileConfig large{128, 128, 8, 3};
  EXPECT_EQ(structural_rejection(spec_with(256), large), "");
  EXPECT_NE(rejection(spec_with(256), large, target_for_arch("sm_86")).find("shared_memory"),
            std::string::npos);
  const gen::TileConfig hopper{128, 128, 12, 2, gen::Family::sm90};
  EXPECT_EQ(structural_rejection(spec_with(128), hopper), "");
  EXPECT_NE(rejection(spec_with(128), hopper, target_for_arch("sm_80")).find("family_arch"),
            std::string::npos);
}

TEST(StructuralRejection, GenerateRefusesWithTheSameReason) {
  for (const Illegal& illegal : illegal_variants()) {
    try {
      gen::generate(illegal.variant);
      ADD_FAILURE() << gen::to_string(illegal.variant) << " was generated";
    } catch (const std::invalid_argument& error) {
      EXPECT_EQ(error.what(), structural_rejection(illegal.variant.spec, illegal.variant.tile));
    }
  }
}

TEST(Candidates, AreUniqueAndAllowed) {
  for (const std::string& arch : every_arch()) {
    Target target = target_for_arch(arch);
    for (int head_dim : {8, 32, 64, 96, 128, 256}) {
      auto tiles = candidates(spec_with(head_dim), target);
      EXPECT_FALSE(tiles.empty()) << arch << " d" << head_dim;
      std::set<std::string> seen;
      for (const auto& tile : tiles) {
        EXPECT_TRUE(rejection(spec_with(head_dim), tile, target).empty());
        EXPECT_LE(gen::smem_bytes(spec_with(head_dim), tile), target.max_smem_optin);
        EXPECT_TRUE(seen.insert(gen::to_string(tile)).second);
      }
    }
  }
}

TEST(DefaultTile, FitsEveryHeadDimAndSaysWhy) {
  for (const std::string& arch : every_arch()) {
    Target target = target_for_arch(arch);
    for (int head_dim = 8; head_dim <= 256; head_dim += 8) {
      DefaultChoice choice = default_tile(spec_with(head_dim), target);
      EXPECT_TRUE(rejection(spec_with(head_dim), choice.tile, target).empty());
      EXPECT_NE(choice.reason.find(arch), std::string::npos);
    }
  }
}

// Blackwell (and Jetson Thor) run the portable family, forward and backward, both backward splits,
// with defaults that fit each one's shared memory. With 99 KiB (sm_120/121, as sm_86/89) the
// backward fits up to d = 160 (above, the dq kernel does not), and the policy says so.
TEST(DefaultTile, BlackwellRunsThePortableFamilyForwardAndBackward) {
  for (const std::string arch :
       {"sm_100", "sm_100a", "sm_103a", "sm_110a", "sm_120", "sm_120a", "sm_121a", "compute_121"}) {
    const Target target = target_for_arch(arch);
    for (int head_dim = 8; head_dim <= 256; head_dim += 8) {
      for (auto direction : {gen::Direction::forward, gen::Direction::dkdv, gen::Direction::dq}) {
        for (bool atomic_dq : {false, true}) {
          if (atomic_dq && direction != gen::Direction::dkdv) continue;
          gen::KernelSpec spec = spec_with(head_dim);
          spec.direction = direction;
          if (direction != gen::Direction::forward && head_dim > 160 &&
              target.max_smem_optin < 160 * 1024) {
            continue;
          }
          const gen::TileConfig tile = default_tile(spec, target, atomic_dq).tile;
          const std::string where = gen::to_string(gen::Variant{spec, tile}) + " on " + arch;
          EXPECT_EQ(tile.family, gen::Family::sm80) << where;
          EXPECT_EQ(rejection(spec, tile, target), "") << where;
          EXPECT_LE(gen::smem_bytes(spec, tile), target.max_smem_optin) << where;
        }
      }
    }
  }
  gen::KernelSpec dq = spec_with(168);
  dq.direction = gen::Direction::dq;
  try {
    default_tile(dq, target_for_arch("sm_120a"));
    ADD_FAILURE() << "a dq tile fits d = 168 in 99 KiB";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("shared_memory"), std::string::npos) << error.what();
  }
}

TEST(Sm90Family, ForwardOnSm90aOnlyWithNamedConstraints) {
  const Target hopper = target_for_arch("sm_90a");
  const gen::TileConfig two_consumers{128, 128, 12, 2, gen::Family::sm90};
  EXPECT_TRUE(rejection(spec_with(128), two_consumers, hopper).empty());
  EXPECT_NE(rejection(spec_with(128), two_consumers, target_for_arch("sm_90")).find("family_arch"),
            std::string::npos);
  EXPECT_NE(rejection(spec_with(40), two_consumers, hopper).find("sm90_kernel"), std::string::npos);
  EXPECT_NE(rejection(spec_with(128), {128, 128, 8, 2, gen::Family::sm90}, hopper).find("wgmma"),
            std::string::npos);
  EXPECT_NE(
      rejection(spec_with(128), {192, 64, 16, 2, gen::Family::sm90}, hopper).find("sm90_registers"),
      std::string::npos);
  EXPECT_NE(
      rejection(spec_with(128), {128, 128, 12, 4, gen::Family::sm90}, hopper).find("shared_memory"),
      std::string::npos);
  int hopper_tiles = 0;
  for (const auto& tile : candidates(spec_with(128), hopper)) {
    hopper_tiles += tile.family == gen::Family::sm90;
  }
  EXPECT_GT(hopper_tiles, 0);
  for (const auto& tile : candidates(spec_with(128), target_for_arch("sm_80"))) {
    EXPECT_EQ(tile.family, gen::Family::sm80);
  }
}

TEST(Sm90Family, DkdvAtHeadDims64To128WithNamedConstraints) {
  const Target hopper = target_for_arch("sm_90a");
  gen::KernelSpec dkdv = spec_with(128);
  dkdv.direction = gen::Direction::dkdv;
  const gen::TileConfig steps64{64, 128, 12, 2, gen::Family::sm90};
  EXPECT_TRUE(rejection(dkdv, steps64, hopper).empty());
  EXPECT_NE(rejection(dkdv, {64, 64, 8, 2, gen::Family::sm90}, hopper).find("wgmma_shape"),
            std::string::npos);
  EXPECT_NE(rejection(dkdv, {128, 128, 12, 2, gen::Family::sm90}, hopper).find("sm90_registers"),
            std::string::npos);
  EXPECT_NE(rejection(dkdv, steps64, target_for_arch("sm_90")).find("family_arch"),
            std::string::npos);
  int one_pass = 0, two_kernel = 0;
  for (const auto& tile : candidates(dkdv, hopper)) {
    if (tile.family != gen::Family::sm90) continue;
    (tile.atomic_dq ? one_pass : two_kernel) += 1;
  }
  EXPECT_GT(one_pass, 0);
  EXPECT_GT(two_kernel, 0);
  EXPECT_EQ(default_tile(dkdv, hopper, /*atomic_dq=*/true).tile,
            (gen::TileConfig{64, 128, 12, 2, gen::Family::sm90, true}));

  gen::KernelSpec narrow = dkdv;
  narrow.head_dim = 64;
  gen::TileConfig steps64_one_pass = steps64;
  steps64_one_pass.atomic_dq = true;
  EXPECT_NE(rejection(narrow, steps64_one_pass, hopper).find("wgmma_shape"), std::string::npos);
  EXPECT_EQ(default_tile(narrow, hopper, /*atomic_dq=*/true).tile,
            (gen::TileConfig{128, 128, 12, 2, gen::Family::sm90, true}));

  // Head dims of a whole and a partial 64-column block take d=128's tile; their one-pass split
  // has no Hopper tile, so a call that allows atomics keeps the Hopper two-kernel split.
  for (int head_dim : {80, 96, 112}) {
    gen::KernelSpec partial = dkdv;
    partial.head_dim = head_dim;
    EXPECT_EQ(default_tile(partial, hopper).tile, steps64) << head_dim;
    EXPECT_NE(rejection(partial, steps64_one_pass, hopper).find("wgmma_shape"), std::string::npos)
        << head_dim;
    EXPECT_EQ(default_tile(partial, hopper, /*atomic_dq=*/true).tile.family, gen::Family::sm80);
    EXPECT_FALSE(one_pass_by_default(partial, hopper)) << head_dim;
  }
  EXPECT_TRUE(one_pass_by_default(narrow, hopper));
  EXPECT_FALSE(one_pass_by_default(dkdv, hopper));
  EXPECT_TRUE(one_pass_by_default(dkdv, target_for_arch("sm_90")));

  gen::KernelSpec other = dkdv;
  other.head_dim = 72;
  EXPECT_NE(rejection(other, steps64, hopper).find("sm90_kernel"), std::string::npos);
  for (const auto& tile : candidates(other, hopper)) EXPECT_EQ(tile.family, gen::Family::sm80);
  EXPECT_EQ(default_tile(other, hopper).tile.family, gen::Family::sm80);
  EXPECT_TRUE(one_pass_by_default(other, hopper));
}

TEST(Sm90Family, DqAtHeadDims64To128WithNamedConstraints) {
  const Target hopper = target_for_arch("sm_90a");
  gen::KernelSpec dq = spec_with(128);
  dq.direction = gen::Direction::dq;
  const gen::TileConfig two_consumers{128, 64, 12, 3, gen::Family::sm90};
  EXPECT_TRUE(rejection(dq, two_consumers, hopper).empty());
  EXPECT_EQ(default_tile(dq, hopper).tile, two_consumers);
  EXPECT_NE(rejection(dq, {128, 128, 12, 2, gen::Family::sm90}, hopper).find("sm90_registers"),
            std::string::npos);
  EXPECT_NE(rejection(dq, {192, 64, 16, 2, gen::Family::sm90}, hopper).find("wgmma_shape"),
            std::string::npos);
  EXPECT_NE(rejection(dq, two_consumers, target_for_arch("sm_90")).find("family_arch"),
            std::string::npos);
  int hopper_tiles = 0;
  for (const auto& tile : candidates(dq, hopper)) hopper_tiles += tile.family == gen::Family::sm90;
  EXPECT_EQ(hopper_tiles, 8);  // block_m 64 or 128, 2 or 3 stages, 64-key steps, two schedules

  for (int head_dim : {80, 96, 112}) {
    gen::KernelSpec partial = dq;
    partial.head_dim = head_dim;
    EXPECT_EQ(default_tile(partial, hopper).tile, two_consumers) << head_dim;
  }

  gen::KernelSpec other = dq;
  other.head_dim = 72;
  EXPECT_NE(rejection(other, two_consumers, hopper).find("sm90_kernel"), std::string::npos);
  for (const auto& tile : candidates(other, hopper)) EXPECT_EQ(tile.family, gen::Family::sm80);
  EXPECT_EQ(default_tile(other, hopper).tile.family, gen::Family::sm80);
}

TEST(Sm90Family, BackwardAbove128SplitsTheGradientsAndShortensDqSteps) {
  const Target hopper = target_for_arch("sm_90a");
  const gen::TileConfig split_three{64, 64, 12, 3, gen::Family::sm90};
  const gen::TileConfig split_two{64, 64, 12, 2, gen::Family::sm90};
  // dq_block_n 0: the portable family's dQ kernel.
  for (auto [head_dim, dkdv_tile, dq_block_n] :
       {std::tuple{144, split_three, 32}, std::tuple{192, split_three, 32},
        std::tuple{208, split_two, 0}, std::tuple{256, split_two, 0}}) {
    gen::KernelSpec dkdv = spec_with(head_dim);
    dkdv.direction = gen::Direction::dkdv;
    EXPECT_EQ(default_tile(dkdv, hopper).tile, dkdv_tile) << head_dim;
    EXPECT_NE(rejection(dkdv, {64, 128, 12, 2, gen::Family::sm90}, hopper).find("sm90_registers"),
              std::string::npos)
        << head_dim;
    gen::TileConfig one_pass = split_two;
    one_pass.atomic_dq = true;
    EXPECT_NE(rejection(dkdv, one_pass, hopper).find("wgmma_shape"), std::string::npos);
    EXPECT_FALSE(one_pass_by_default(dkdv, hopper)) << head_dim;
    EXPECT_EQ(gen::grid_slices({dkdv, split_two}), 1);
    EXPECT_EQ(gen::grid_slices({dkdv, default_tile(dkdv, target_for_arch("sm_90")).tile}), 2);

    gen::KernelSpec dq = dkdv;
    dq.direction = gen::Direction::dq;
    const gen::TileConfig dq_tile = default_tile(dq, hopper).tile;
    EXPECT_EQ(dq_tile.family, dq_block_n > 0 ? gen::Family::sm90 : gen::Family::sm80) << head_dim;
    if (dq_block_n > 0) {
      EXPECT_EQ(dq_tile.block_n, dq_block_n) << head_dim;
    }
    // The column split (two warpgroups on 64 rows) is a candidate at every head dim above 128,
    // in both schedules.
    int column_split_tiles = 0;
    for (const auto& tile : candidates(dq, hopper)) {
      column_split_tiles +=
          tile.family == gen::Family::sm90 && tile.block_m == 64 && tile.warps == 12;
    }
    EXPECT_GE(column_split_tiles, 6) << head_dim;
  }
  // It needs more than two 64-column blocks of dQ and 32- or 64-key steps.
  gen::KernelSpec dq128 = spec_with(128);
  dq128.direction = gen::Direction::dq;
  EXPECT_NE(rejection(dq128, split_two, hopper).find("wgmma_shape"), std::string::npos);
  gen::KernelSpec dq256 = spec_with(256);
  dq256.direction = gen::Direction::dq;
  EXPECT_NE(rejection(dq256, {64, 128, 12, 2, gen::Family::sm90}, hopper).find("wgmma_shape"),
            std::string::npos);
  // At d=256 three stages of 64 keys exceed shared memory; three of 32 fit.
  EXPECT_NE(rejection(dq256, split_three, hopper).find("shared_memory"), std::string::npos);
  EXPECT_EQ(rejection(dq256, {64, 32, 12, 3, gen::Family::sm90}, hopper), "");
  gen::KernelSpec wide = spec_with(192);
  wide.direction = gen::Direction::dq;
  EXPECT_NE(rejection(wide, {128, 64, 12, 3, gen::Family::sm90}, hopper).find("sm90_registers"),
            std::string::npos);
  wide.head_dim = 208;
  EXPECT_NE(rejection(wide, {64, 32, 8, 2, gen::Family::sm90}, hopper).find("sm90_registers"),
            std::string::npos);
  // Below d=128 the gradient split is a candidate the tuner may take, not the default.
  gen::KernelSpec narrow = spec_with(128);
  narrow.direction = gen::Direction::dkdv;
  int split_tiles = 0;
  for (const auto& tile : candidates(narrow, hopper)) {
    split_tiles += tile.family == gen::Family::sm90 && tile.block_n == 64;
  }
  EXPECT_GT(split_tiles, 0);
  EXPECT_EQ(default_tile(narrow, hopper).tile.block_n, 128);
}

TEST(DefaultTile, PrefersTheSm90FamilyOnSm90aWhereItApplies) {
  const Target hopper = target_for_arch("sm_90a");
  for (int head_dim : {64, 96, 128, 192, 256}) {
    const DefaultChoice choice = default_tile(spec_with(head_dim), hopper);
    EXPECT_EQ(choice.tile.family, gen::Family::sm90) << head_dim;
    EXPECT_NE(choice.reason.find("wgmma"), std::string::npos) << choice.reason;
  }
  EXPECT_EQ(default_tile(spec_with(40), hopper).tile.family, gen::Family::sm80);
  EXPECT_EQ(default_tile(spec_with(128), target_for_arch("sm_90")).tile.family, gen::Family::sm80);
}

// The persistent kernels' tuner space has every Hopper tile in both schedules; the default is the
// dynamic schedule where tiles differ in cost or rows (padded, varlen, masks), strided on dense
// unmasked shapes. The dK/dV kernel's space has both schedules too (one CTA per key block, or
// persistent); its default stays one CTA per key block.
TEST(Schedules, AreCandidatesAndDefaultByTheShape) {
  const Target hopper = target_for_arch("sm_90a");
  for (auto direction : {gen::Direction::forward, gen::Direction::dq}) {
    for (auto layout : {gen::Layout::dense, gen::Layout::padded, gen::Layout::varlen}) {
      for (int mask = 0; mask < 4; ++mask) {
        gen::KernelSpec spec = spec_with(128);
        spec.direction = direction;
        spec.layout = layout;
        spec.causal = (mask & 1) != 0;
        spec.window = (mask & 2) != 0;
        const std::string name = gen::to_string(spec);
        int strided = 0, dynamic = 0;
        for (const auto& tile : candidates(spec, hopper)) {
          if (tile.family != gen::Family::sm90) {
            EXPECT_EQ(tile.schedule, gen::Schedule::strided) << name;
            continue;
          }
          gen::TileConfig other = tile;
          other.schedule = tile.schedule == gen::Schedule::dynamic ? gen::Schedule::strided
                                                                   : gen::Schedule::dynamic;
          EXPECT_TRUE(rejection(spec, other, hopper).empty()) << name;
          (tile.schedule == gen::Schedule::dynamic ? dynamic : strided) += 1;
        }
        EXPECT_GT(strided, 0) << name;
        EXPECT_EQ(dynamic, strided) << name;
        const DefaultChoice choice = default_tile(spec, hopper);
        const bool uniform = layout == gen::Layout::dense && mask == 0;
        EXPECT_EQ(choice.tile.schedule, uniform ? gen::Schedule::strided : gen::Schedule::dynamic)
            << name;
        EXPECT_EQ(choice.reason.find("dynamic schedule") != std::string::npos, !uniform)
            << choice.reason;
      }
    }
  }
  gen::KernelSpec dkdv = spec_with(128);
  dkdv.direction = gen::Direction::dkdv;
  dkdv.layout = gen::Layout::varlen;
  int strided = 0, dynamic = 0;
  for (const auto& tile : candidates(dkdv, hopper)) {
    if (tile.family != gen::Family::sm90) {
      EXPECT_EQ(tile.schedule, gen::Schedule::strided);
      continue;
    }
    (tile.schedule == gen::Schedule::dynamic ? dynamic : strided) += 1;
  }
  EXPECT_GT(strided, 0);
  EXPECT_EQ(dynamic, strided);
  EXPECT_EQ(default_tile(dkdv, hopper).tile.schedule, gen::Schedule::strided);
  gen::KernelSpec padded = spec_with(128);
  padded.layout = gen::Layout::padded;
  EXPECT_EQ(default_tile(padded, target_for_arch("sm_80")).tile.schedule, gen::Schedule::strided);
}

TEST(DefaultTile, IsAPureFunction) {
  Target target = target_for_arch("sm_90a");
  EXPECT_EQ(default_tile(spec_with(128), target).tile, default_tile(spec_with(128), target).tile);
  EXPECT_EQ(default_tile(spec_with(128), target).reason,
            default_tile(spec_with(128), target).reason);
}

TEST(DecodeTile, DefaultsToOneRowBlockOfAGqaGroupOnEveryArch) {
  for (const std::string arch : {"sm_80", "sm_86", "sm_89", "sm_90a"}) {
    for (int head_dim : {8, 40, 64, 128, 256}) {
      for (auto layout : {gen::Layout::padded, gen::Layout::paged}) {
        gen::KernelSpec spec = spec_with(head_dim);
        spec.direction = gen::Direction::decode;
        spec.layout = layout;
        spec.causal = true;
        const DefaultChoice choice = default_tile(spec, target_for_arch(arch));
        EXPECT_EQ(choice.tile.family, gen::Family::sm80) << arch;
        EXPECT_EQ(choice.tile.block_m, 16) << arch;
        EXPECT_EQ(choice.tile.splits, 0) << arch << ": the split count is chosen per call";
        EXPECT_EQ(rejection(spec, choice.tile, target_for_arch(arch)), "") << arch;
        EXPECT_NE(choice.reason.find("decode"), std::string::npos) << choice.reason;
        for (const gen::TileConfig& tile : candidates(spec, target_for_arch(arch))) {
          EXPECT_EQ(tile.family, gen::Family::sm80);
          EXPECT_EQ(tile.block_n, 16 * tile.warps) << gen::to_string(tile);
        }
      }
    }
  }
}

TEST(DecodeTile, SplitsFillTheGpuTwiceWithinTheKeyTiles) {
  // GQA 32:8 at batch 1 on 132 SMs: 8 units, ceil(264 / 8) = 33 splits.
  EXPECT_EQ(decode_splits(8, 64, 132), 33);
  // Fewer key tiles than that bound the split count.
  EXPECT_EQ(decode_splits(8, 16, 132), 16);
  EXPECT_EQ(decode_splits(8, 0, 132), 1);
  // A batch that fills the GPU alone runs unsplit.
  EXPECT_EQ(decode_splits(128 * 8, 2048, 132), 1);
  EXPECT_EQ(decode_splits(132, 2048, 132), 2);
  // One unit on a large GPU: never past kMaxDecodeSplits.
  EXPECT_EQ(decode_splits(1, 1 << 20, 1000), kMaxDecodeSplits);
}

TEST(DecodeTile, CandidatesTryEachTileOpenAndWithFixedSplitCounts) {
  const gen::KernelSpec spec = gen::parse_spec("decode.bf16.d128.paged.causal.nosmod.fast.anylen");
  const std::vector<gen::TileConfig> tiles = candidates(spec, target_for_arch("sm_90a"));
  std::vector<gen::TileConfig> open;
  for (const gen::TileConfig& tile : tiles) {
    EXPECT_EQ(rejection(spec, tile, target_for_arch("sm_90a")), "") << gen::to_string(tile);
    if (tile.splits == 0) open.push_back(tile);
  }
  ASSERT_FALSE(open.empty());
  // Each open tile once more with 1, 2, 4, ..., kMaxTunedDecodeSplits.
  EXPECT_EQ(tiles.size(), open.size() * 8);
  for (const gen::TileConfig& tile : open) {
    for (int splits = 1; splits <= kMaxTunedDecodeSplits; splits *= 2) {
      gen::TileConfig fixed = tile;
      fixed.splits = splits;
      EXPECT_NE(std::find(tiles.begin(), tiles.end(), fixed), tiles.end()) << gen::to_string(fixed);
    }
  }
}

TEST(DecodeTile, LookupUnitsCountBatchKvHeadsAndRows) {
  EXPECT_EQ(decode_lookup_units(16, 8, 1), 128);
  EXPECT_EQ(decode_lookup_units(2, 4, 3), 24);
  EXPECT_EQ(decode_lookup_units(65535, 65535, 1 << 24), 2147483647);
}

TEST(DefaultSpecs, CoverBothDtypesLayoutsAndCausal) {
  auto specs = default_specs();
  std::set<std::string> names;
  for (const auto& spec : specs) names.insert(gen::to_string(spec));
  EXPECT_EQ(names.size(), specs.size());
  EXPECT_TRUE(names.count("fwd.fp16.d64.varlen.causal.nosmod.fast.anylen"));
  EXPECT_TRUE(names.count("fwd.bf16.d128.dense.nomask.nosmod.fast.anylen"));
}

}  // namespace
}  // namespace sigattn::policy
