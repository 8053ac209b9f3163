// Argument validation of the backward call: the inputs follow the forward's rules (with dO in
// the output's place, and named grad_out), each gradient tensor is checked like an output and
// named in the error, and a valid call maps to the dK/dV and dQ kernel specs. Pointers are fake
// but aligned: validation never dereferences them.
#include <gtest/gtest.h>
#include <sigattn/sigattn.h>

#include <sigattn/sigattn.hpp>
#include <string>

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

}  // namespace
}  // namespace sigattn
