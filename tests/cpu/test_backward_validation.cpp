// Argument validation of the backward call: the inputs follow the forward's rules (with dO in
// the output's place, and named grad_out), each gradient tensor is checked like an output and
// named in the error, a valid call maps to the dK/dV and dQ kernel specs, and the deterministic
// flag (C++ and C) selects the work split. Pointers are fake but aligned: validation never
// dereferences them.
#include <gtest/gtest.h>
#include <sigattn/sigattn.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <sigattn/sigattn.hpp>
#include <string>

#include "generator/tile_policy.hpp"
#include "runtime/backward.hpp"

namespace sigattn {
namespace {

constexpr int kBatch = 2, kHeadsQ = 4, kHeadsKv = 2, kHeadDim = 64, kSeqQ = 100, kSeqK = 130;

void* fake(std::uintptr_t address) { return reinterpret_cast<void*>(address); }

BackwardArgs valid_args() {
  BackwardArgs args;
  ForwardArgs& in = args.inputs;
  in.batch = kBatch;
  in.heads_q = kHeadsQ;
  in.heads_kv = kHeadsKv;
  in.head_dim = kHeadDim;
  in.max_seqlen_q = kSeqQ;
  in.max_seqlen_k = kSeqK;
  in.causal = true;
  in.q = bthd(fake(0x10000), kSeqQ, kHeadsQ, kHeadDim);
  in.k = bthd(fake(0x20000), kSeqK, kHeadsKv, kHeadDim);
  in.v = bthd(fake(0x30000), kSeqK, kHeadsKv, kHeadDim);
  args.grad_out = bthd(fake(0x40000), kSeqQ, kHeadsQ, kHeadDim);
  args.grad_q = bthd(fake(0x50000), kSeqQ, kHeadsQ, kHeadDim);
  args.grad_k = bthd(fake(0x60000), kSeqK, kHeadsKv, kHeadDim);
  args.grad_v = bthd(fake(0x70000), kSeqK, kHeadsKv, kHeadDim);
  return args;
}

void expect_rejected(const BackwardArgs& args, const std::string& needle) {
  try {
    backward_specs(args);
    ADD_FAILURE() << "accepted, expected an error naming " << needle;
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), Status::invalid_argument);
    EXPECT_NE(std::string(error.what()).find(needle), std::string::npos) << error.what();
  }
}

TEST(BackwardValidation, ValidCallMapsToBothKernels) {
  BackwardSpecs specs = backward_specs(valid_args());
  EXPECT_EQ(specs.dkdv.direction, gen::Direction::dkdv);
  EXPECT_EQ(specs.dq.direction, gen::Direction::dq);
  EXPECT_TRUE(specs.dq.causal);
  EXPECT_EQ(specs.dq.head_dim, kHeadDim);
  EXPECT_EQ(gen::to_string(specs.dq), "dq.bf16.d64.dense.causal.nosmod.fast.anylen");
}

TEST(BackwardValidation, InputsOutIsNotRequired) {
  BackwardArgs args = valid_args();
  args.inputs.out = {};
  EXPECT_NO_THROW(backward_specs(args));
}

TEST(BackwardValidation, EachGradientIsNamed) {
  {
    BackwardArgs args = valid_args();
    args.grad_out.data = nullptr;
    expect_rejected(args, "grad_out.data is null");
  }
  {
    BackwardArgs args = valid_args();
    args.grad_out.seq_stride = 12;
    expect_rejected(args, "grad_out.seq_stride = 12");
  }
  {
    BackwardArgs args = valid_args();
    args.grad_q.data = nullptr;
    expect_rejected(args, "grad_q.data is null");
  }
  {
    BackwardArgs args = valid_args();
    args.grad_k.data = fake(0x60002);
    expect_rejected(args, "grad_k.data");
  }
  {
    BackwardArgs args = valid_args();
    args.grad_v.head_stride = -8;
    expect_rejected(args, "grad_v.head_stride = -8 is negative");
  }
  {
    BackwardArgs args = valid_args();
    args.grad_k.seq_stride = 8;
    expect_rejected(args, "grad_k strides overlap");
  }
  {
    BackwardArgs args = valid_args();
    args.grad_q.batch_stride = 0;
    expect_rejected(args, "grad_q strides overlap");
  }
}

TEST(BackwardValidation, InputRulesStillApply) {
  BackwardArgs args = valid_args();
  args.inputs.heads_kv = 3;
  expect_rejected(args, "heads_q = 4 is not a multiple of heads_kv = 3");
}

TEST(BackwardSplit, FastestSplitByDefault) {
  EXPECT_FALSE(BackwardArgs{}.deterministic);
  EXPECT_FALSE(valid_args().deterministic);
}

TEST(BackwardSplit, FastModeTakesTheFasterSplitForEveryHeadDimAndArch) {
  for (const std::string arch : {"sm_80", "sm_86", "sm_89", "sm_90a"}) {
    const policy::Target target = policy::target_for_arch(arch);
    // The dq kernel of the deterministic split needs more than the 99 KiB of sm_86/89 above
    // d = 160.
    const int max_head_dim = target.max_smem_optin >= 160 * 1024 ? 256 : 160;
    for (int head_dim = 8; head_dim <= max_head_dim; head_dim += 8) {
      BackwardArgs args = valid_args();
      args.inputs.head_dim = head_dim;
      for (TensorRef* t : {&args.inputs.q, &args.grad_out, &args.grad_q}) {
        *t = bthd(t->data, kSeqQ, kHeadsQ, head_dim);
      }
      for (TensorRef* t : {&args.inputs.k, &args.inputs.v, &args.grad_k, &args.grad_v}) {
        *t = bthd(t->data, kSeqK, kHeadsKv, head_dim);
      }
      const BackwardSpecs specs = backward_specs(args);
      const BackwardTiles deterministic = default_backward_tiles(specs, target, true);
      const BackwardTiles fast = default_backward_tiles(specs, target, false);
      const std::string where = arch + " d" + std::to_string(head_dim);
      EXPECT_FALSE(deterministic.dkdv.atomic_dq) << where;
      // Only sm_90a at the Hopper backward's head dims above 64, where its dQ kernel outruns
      // the one-pass split (or the one-pass split has no Hopper tile), keeps the two-kernel
      // split when atomics are allowed.
      const bool hopper_split = arch == "sm_90a" && head_dim > 64 && head_dim % 16 == 0 &&
                                fast.dkdv.family == gen::Family::sm90;
      EXPECT_EQ(fast.dkdv.atomic_dq, !hopper_split) << where;
      EXPECT_EQ(fast.dkdv.atomic_dq, policy::one_pass_by_default(specs.dkdv, target)) << where;
      EXPECT_FALSE(fast.dq.atomic_dq) << where;
      EXPECT_EQ(policy::rejection(specs.dkdv, fast.dkdv, target), "") << where;
      EXPECT_EQ(policy::rejection(specs.dkdv, deterministic.dkdv, target), "") << where;
      EXPECT_EQ(policy::rejection(specs.dq, deterministic.dq, target), "") << where;
    }
  }
}

TEST(BackwardSplit, AtomicDqIsADkdvSplitOnly) {
  const BackwardSpecs specs = backward_specs(valid_args());
  const policy::Target target = policy::target_for_arch("sm_90a");
  gen::TileConfig tile = default_backward_tiles(specs, target, true).dq;
  tile.atomic_dq = true;
  EXPECT_NE(policy::rejection(specs.dq, tile, target).find("work_split"), std::string::npos);
  EXPECT_THROW(policy::default_tile(specs.dq, target, /*atomic_dq=*/true), std::invalid_argument);
  const std::vector<gen::TileConfig> tiles = policy::candidates(specs.dkdv, target);
  const auto atomic = std::count_if(tiles.begin(), tiles.end(),
                                    [](const gen::TileConfig& t) { return t.atomic_dq; });
  EXPECT_GT(atomic, 0);
  EXPECT_LT(atomic, static_cast<std::ptrdiff_t>(tiles.size()));
  for (const gen::TileConfig& t : policy::candidates(specs.dq, target)) EXPECT_FALSE(t.atomic_dq);
}

TEST(BackwardCApi, DeterministicIsTheLastFieldAndDefaultsToZero) {
  EXPECT_EQ(offsetof(sigattn_backward_args, deterministic),
            offsetof(sigattn_backward_args, grad_v) + sizeof(sigattn_tensor));
  sigattn_backward_args args;
  std::memset(&args, 0x7f, sizeof(args));
  sigattn_backward_args_init(&args);
  EXPECT_EQ(args.deterministic, 0);
}

TEST(BackwardCApi, EitherSplitValidatesTheSameWay) {
  sigattn_backward_args args;
  sigattn_backward_args_init(&args);
  args.inputs.batch = 1;
  args.inputs.heads_q = 4;
  args.inputs.heads_kv = 3;
  std::string messages[2];
  for (int deterministic : {0, 1}) {
    args.deterministic = deterministic;
    EXPECT_EQ(sigattn_backward(&args, nullptr), SIGATTN_INVALID_ARGUMENT);
    messages[deterministic] = sigattn_last_error();
  }
  EXPECT_NE(messages[0].find("heads_q = 4 is not a multiple of heads_kv = 3"), std::string::npos)
      << messages[0];
  EXPECT_EQ(messages[0], messages[1]);
}

TEST(BackwardCApi, NullArgsAndBadInputsReportStatusAndMessage) {
  EXPECT_EQ(sigattn_backward(nullptr, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_STREQ(sigattn_last_error(), "args is null");
  sigattn_backward_args args;
  sigattn_backward_args_init(&args);
  EXPECT_EQ(args.inputs.window_left, -1);
  EXPECT_EQ(args.grad_q.data, nullptr);
  EXPECT_EQ(sigattn_backward(&args, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sigattn_last_error()).find("batch"), std::string::npos)
      << sigattn_last_error();
}

TEST(BackwardTiles, TunedTilesServeOnlyTheCallsTheyMayServe) {
  const BackwardTiles defaults{gen::TileConfig{64, 128, 8, 2},
                               gen::TileConfig{128, 64, 8, 2},
                               {"heuristic", "dkdv default"},
                               {"heuristic", "dq default"}};
  const gen::TileConfig one_pass{32, 128, 8, 3, gen::Family::sm80, true};
  const gen::TileConfig two_kernel{32, 64, 4, 2};
  const gen::TileConfig dq_tuned{64, 64, 4, 2};
  const cache::TileChoice tuned_one_pass{one_pass, cache::ServedBy::user_db, "tuned"};
  const cache::TileChoice tuned_two_kernel{two_kernel, cache::ServedBy::shipped_db, "shipped"};
  const cache::TileChoice tuned_dq{dq_tuned, cache::ServedBy::nearest_bucket, "near"};
  const cache::TileChoice heuristic{gen::TileConfig{16, 64, 4, 2}, cache::ServedBy::heuristic, ""};

  // A deterministic call never takes a one-pass tile; it keeps the default dkdv tile.
  // Each tile's origin says which level chose it, and why a tuned tile was passed over.
  BackwardTiles tiles = combine_backward_tiles(defaults, tuned_one_pass, tuned_dq, true);
  EXPECT_EQ(tiles.dkdv, defaults.dkdv);
  EXPECT_EQ(tiles.dkdv_origin.served_by, "heuristic");
  EXPECT_EQ(tiles.dkdv_origin.reason,
            "the tuned one-pass tile sm80.m32n128w8s3.atomicdq may not serve a deterministic "
            "call; dkdv default");
  EXPECT_EQ(tiles.dq, dq_tuned);
  EXPECT_EQ(tiles.dq_origin.served_by, "nearest_bucket");
  EXPECT_EQ(tiles.dq_origin.reason, "near");
  tiles = combine_backward_tiles(defaults, tuned_one_pass, tuned_dq, false);
  EXPECT_EQ(tiles.dkdv, one_pass);
  EXPECT_EQ(tiles.dkdv_origin.served_by, "user_db");
  tiles = combine_backward_tiles(defaults, tuned_two_kernel, heuristic, true);
  EXPECT_EQ(tiles.dkdv, two_kernel);
  EXPECT_EQ(tiles.dkdv_origin.served_by, "shipped_db");
  EXPECT_EQ(tiles.dq, defaults.dq);
  EXPECT_EQ(tiles.dq_origin.reason, "dq default");
  // Heuristic answers leave the defaults (which carry the fast mode's one-pass choice).
  tiles = combine_backward_tiles(defaults, heuristic, heuristic, false);
  EXPECT_EQ(tiles.dkdv, defaults.dkdv);
  EXPECT_EQ(tiles.dq, defaults.dq);
  EXPECT_EQ(tiles.dkdv_origin.reason, "dkdv default");
}

}  // namespace
}  // namespace sigattn
