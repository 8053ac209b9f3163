// Validation of packed (varlen) outputs, whose token count only cu_seqlens on the device gives:
// the host checks leave the token axis out, so a packed tensor of one token may step by no seq
// stride whatever max_seqlen is (forward and backward); the launch checks the outputs over the
// packed tokens the prefix sums count, or over max_seqlen when they are not read; and the prefix
// sums are checked and counted. Pointers are fake but aligned: validation never dereferences them.
#include <gtest/gtest.h>

#include <cstdint>
#include <sigattn/sigattn.hpp>
#include <string>
#include <vector>

#include "runtime/backward.hpp"
#include "runtime/forward.hpp"
#include "runtime/validation.hpp"

namespace sigattn {
namespace {

constexpr int kHeads = 2, kHeadDim = 64, kMaxSeqLen = 127;

void* fake(std::uintptr_t address) { return reinterpret_cast<void*>(address); }
const std::int32_t* fake_lengths(std::uintptr_t address) {
  return reinterpret_cast<const std::int32_t*>(address);
}

// A packed [tokens, heads, head_dim] tensor; with one token its seq stride is never stepped over,
// so a caller may pass 0 (as for any extent-1 dimension).
TensorRef packed(std::uintptr_t address, std::int64_t seq_stride) {
  return {fake(address), 0, seq_stride, kHeadDim};
}

constexpr std::int64_t kRow = std::int64_t{kHeads} * kHeadDim;

// cu_seqlens_q = [0, 1, 1], cu_seqlens_k = [0, 60, 127]: one query token in all, max_seqlen 127.
ForwardArgs one_query_token() {
  ForwardArgs args;
  args.batch = 2;
  args.heads_q = args.heads_kv = kHeads;
  args.head_dim = kHeadDim;
  args.max_seqlen_q = args.max_seqlen_k = kMaxSeqLen;
  args.cu_seqlens_q = fake_lengths(0x50000);
  args.cu_seqlens_k = fake_lengths(0x60000);
  args.q = packed(0x10000, 0);
  args.k = packed(0x20000, kRow);
  args.v = packed(0x30000, kRow);
  args.out = packed(0x40000, 0);
  return args;
}

TEST(PackedOutputs, OneQueryTokenMayHaveNoSeqStrideBelowALongerMaxSeqlen) {
  EXPECT_NO_THROW(forward_spec(one_query_token()));
}

TEST(PackedOutputs, OneKeyTokenMayHaveNoSeqStrideInTheBackward) {
  BackwardArgs args;
  args.inputs = one_query_token();
  args.inputs.q = packed(0x10000, kRow);
  args.inputs.k = packed(0x20000, 0);
  args.inputs.v = packed(0x30000, 0);
  args.grad_out = packed(0x40000, kRow);
  args.grad_q = packed(0x70000, kRow);
  args.grad_k = packed(0x80000, 0);
  args.grad_v = packed(0x90000, 0);
  EXPECT_NO_THROW(backward_specs(args));
}

// The message of check_outputs for `out` over `rows` query tokens; empty when it passes.
std::string out_check(const ForwardArgs& args, std::int64_t rows) {
  try {
    check_outputs(args, {{"out", args.out, false}}, {rows, args.max_seqlen_k}, true);
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), Status::invalid_argument);
    return error.what();
  }
  return "";
}

TEST(PackedOutputs, CheckedOverThePackedTokensAtLaunch) {
  const ForwardArgs args = one_query_token();
  // cu_seqlens_q read from the device: one token.
  EXPECT_EQ(out_check(args, 1), "");
  // Lengths not read (trust_lengths, graph capture): max_seqlen_q rows, as always.
  EXPECT_NE(out_check(args, kMaxSeqLen)
                .find("out strides overlap: out.seq_stride is 0 over an "
                      "extent of 127"),
            std::string::npos);
}

TEST(PackedOutputs, HeadMajorStorageMustHoldEveryPackedToken) {
  // [heads, tokens, head_dim] storage of max_seqlen_q tokens per head: 150 packed tokens of two
  // sequences overrun each head into the next.
  ForwardArgs args = one_query_token();
  args.out = {fake(0x40000), 0, kHeadDim, kMaxSeqLen * kHeadDim};
  EXPECT_EQ(out_check(args, kMaxSeqLen), "");
  EXPECT_NE(out_check(args, 150).find("out strides overlap: out.head_stride = 8128 is smaller "
                                      "than the 9600 elements spanned by out.seq_stride"),
            std::string::npos)
      << out_check(args, 150);
}

TEST(CuSeqlens, CountsThePackedTokens) {
  EXPECT_EQ(check_cu_seqlens("cu_seqlens_q", {0, 1, 1}, "max_seqlen_q", kMaxSeqLen), 1);
  EXPECT_EQ(check_cu_seqlens("cu_seqlens_k", {0, 127, 150}, "max_seqlen_k", kMaxSeqLen), 150);
}

TEST(CuSeqlens, RejectsBadPrefixSumsWithTheirNames) {
  const auto message = [](const std::vector<std::int32_t>& offsets) -> std::string {
    try {
      check_cu_seqlens("cu_seqlens_k", offsets, "max_seqlen_k", kMaxSeqLen);
    } catch (const Error& error) {
      EXPECT_EQ(error.status(), Status::invalid_argument);
      return error.what();
    }
    return "accepted";
  };
  EXPECT_EQ(message({3, 10}), "cu_seqlens_k[0] = 3 must be 0");
  EXPECT_EQ(message({0, 10, 9}),
            "cu_seqlens_k[2] = 9 is smaller than cu_seqlens_k[1] = 10: prefix sums must not "
            "decrease");
  EXPECT_EQ(message({0, 128}),
            "cu_seqlens_k[1] - cu_seqlens_k[0] = 128 exceeds max_seqlen_k = 127");
}

}  // namespace
}  // namespace sigattn
