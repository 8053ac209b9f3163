// Tile-policy tests: constraints prune by name, candidates respect them, and the heuristic
// default always fits the architecture and explains itself.
#include <gtest/gtest.h>

#include <set>
#include <stdexcept>
#include <string>
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

TEST(Sm90Family, DkdvAtHeadDims64And128WithNamedConstraints) {
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

  gen::KernelSpec other = dkdv;
  other.head_dim = 96;
  EXPECT_NE(rejection(other, steps64, hopper).find("sm90_kernel"), std::string::npos);
  for (const auto& tile : candidates(other, hopper)) EXPECT_EQ(tile.family, gen::Family::sm80);
  EXPECT_EQ(default_tile(other, hopper).tile.family, gen::Family::sm80);
}

TEST(Sm90Family, DqAtHeadDims64And128WithNamedConstraints) {
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
  EXPECT_EQ(hopper_tiles, 4);  // block_m 64 or 128, 2 or 3 stages, 64-key steps

  gen::KernelSpec other = dq;
  other.head_dim = 96;
  EXPECT_NE(rejection(other, two_consumers, hopper).find("sm90_kernel"), std::string::npos);
  for (const auto& tile : candidates(other, hopper)) EXPECT_EQ(tile.family, gen::Family::sm80);
  EXPECT_EQ(default_tile(other, hopper).tile.family, gen::Family::sm80);
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

TEST(DefaultTile, IsAPureFunction) {
  Target target = target_for_arch("sm_90a");
  EXPECT_EQ(default_tile(spec_with(128), target).tile, default_tile(spec_with(128), target).tile);
  EXPECT_EQ(default_tile(spec_with(128), target).reason,
            default_tile(spec_with(128), target).reason);
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
