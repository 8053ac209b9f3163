// Validation of KV-cache calls (forward_with_kvcache, the C ABI's sigattn_forward_with_kvcache):
// every rule rejects its bad value with the right status and a message naming the argument, valid
// calls map to the decode spec of their cache layout and masks, and the cache lengths and block
// table read from the device are checked against the capacity and the blocks; explain answers
// the decode tile a call would run. Pointers are fake but aligned: nothing dereferences them.
#include <gtest/gtest.h>
#include <sigattn/sigattn.h>

#include <cstdint>
#include <functional>
#include <sigattn/sigattn.hpp>
#include <string>
#include <vector>

#include "generator/kernel_spec.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/tile_choice.hpp"
#include "runtime/validation.hpp"
#include "temp_dir.hpp"

namespace sigattn {
namespace {

void* fake_pointer(std::uintptr_t address) { return reinterpret_cast<void*>(address); }
const std::int32_t* fake_ints(std::uintptr_t address) {
  return reinterpret_cast<const std::int32_t*>(address);
}

constexpr int kBatch = 2, kHeadsQ = 8, kHeadsKv = 2, kHeadDim = 64, kMaxLen = 256;
constexpr int kBlocks = 40, kBlockSize = 16, kMaxBlocks = 8, kNew = 3;

// Decode against a contiguous cache [2, 256, 2, 64], GQA 4:1, one query row, 3 new tokens.
KvCacheArgs contiguous_args() {
  KvCacheArgs args;
  args.batch = kBatch;
  args.heads_q = kHeadsQ;
  args.heads_kv = kHeadsKv;
  args.head_dim = kHeadDim;
  args.seqlen_q = 1;
  args.q = bthd(fake_pointer(0x10000), 1, kHeadsQ, kHeadDim);
  args.out = bthd(fake_pointer(0x20000), 1, kHeadsQ, kHeadDim);
  args.k_cache = bthd(fake_pointer(0x100000), kMaxLen, kHeadsKv, kHeadDim);
  args.v_cache = bthd(fake_pointer(0x200000), kMaxLen, kHeadsKv, kHeadDim);
  args.max_cache_len = kMaxLen;
  args.cache_seqlens = fake_ints(0x30000);
  args.k_new = bthd(fake_pointer(0x40000), kNew, kHeadsKv, kHeadDim);
  args.v_new = bthd(fake_pointer(0x50000), kNew, kHeadsKv, kHeadDim);
  args.seqlen_new = kNew;
  return args;
}

// The same call against a paged cache of 40 blocks of 16 positions, 8 blocks per sequence.
KvCacheArgs paged_args() {
  KvCacheArgs args = contiguous_args();
  args.max_cache_len = 0;
  args.k_cache = bthd(fake_pointer(0x100000), kBlockSize, kHeadsKv, kHeadDim);
  args.v_cache = bthd(fake_pointer(0x200000), kBlockSize, kHeadsKv, kHeadDim);
  args.block_table = fake_ints(0x60000);
  args.block_table_batch_stride = kMaxBlocks;
  args.max_blocks = kMaxBlocks;
  args.num_blocks = kBlocks;
  args.block_size = kBlockSize;
  return args;
}

sigattn_tensor c_tensor(const TensorRef& t) {
  return sigattn_tensor{t.data, t.batch_stride, t.seq_stride, t.head_stride};
}

// paged_args() without new tokens, as the C ABI takes it.
sigattn_kvcache_args paged_c_args() {
  sigattn_kvcache_args args;
  sigattn_kvcache_args_init(&args);
  const KvCacheArgs valid = paged_args();
  args.batch = valid.batch;
  args.heads_q = valid.heads_q;
  args.heads_kv = valid.heads_kv;
  args.head_dim = valid.head_dim;
  args.seqlen_q = 1;
  args.q = c_tensor(valid.q);
  args.out = c_tensor(valid.out);
  args.k_cache = c_tensor(valid.k_cache);
  args.v_cache = c_tensor(valid.v_cache);
  args.block_table = valid.block_table;
  args.block_table_batch_stride = valid.block_table_batch_stride;
  args.max_blocks = valid.max_blocks;
  args.num_blocks = valid.num_blocks;
  args.block_size = valid.block_size;
  args.cache_seqlens = valid.cache_seqlens;
  return args;
}

struct RejectCase {
  const char* rule;
  std::function<KvCacheArgs()> make;
  Status status;
  const char* message;
};

KvCacheArgs contiguous_with(const std::function<void(KvCacheArgs&)>& mutate) {
  KvCacheArgs args = contiguous_args();
  mutate(args);
  return args;
}

KvCacheArgs paged_with(const std::function<void(KvCacheArgs&)>& mutate) {
  KvCacheArgs args = paged_args();
  mutate(args);
  return args;
}

const std::vector<RejectCase>& reject_cases() {
  using A = KvCacheArgs;
  static const std::vector<RejectCase> cases = {
      {"dtype", [] { return contiguous_with([](A& a) { a.dtype = static_cast<DType>(5); }); },
       Status::invalid_argument, "dtype = 5 is not a valid dtype"},
      {"batch", [] { return contiguous_with([](A& a) { a.batch = 0; }); }, Status::invalid_argument,
       "batch = 0 is out of range"},
      {"heads", [] { return contiguous_with([](A& a) { a.heads_kv = 3; }); },
       Status::invalid_argument, "heads_q = 8 is not a multiple of heads_kv = 3"},
      {"head_dim", [] { return contiguous_with([](A& a) { a.head_dim = 100; }); },
       Status::unsupported, "head_dim = 100 is not supported"},
      {"seqlen_q", [] { return contiguous_with([](A& a) { a.seqlen_q = 0; }); },
       Status::invalid_argument, "seqlen_q = 0 is out of range"},
      {"max_cache_len", [] { return contiguous_with([](A& a) { a.max_cache_len = 0; }); },
       Status::invalid_argument, "max_cache_len = 0 is out of range"},
      {"paged fields without a table",
       [] { return contiguous_with([](A& a) { a.block_size = 16; }); }, Status::invalid_argument,
       "max_blocks, num_blocks and block_size describe a paged cache, but block_table is null"},
      {"cache_seqlens null",
       [] { return contiguous_with([](A& a) { a.cache_seqlens = nullptr; }); },
       Status::invalid_argument, "cache_seqlens is null"},
      {"cache_seqlens misaligned",
       [] { return contiguous_with([](A& a) { a.cache_seqlens = fake_ints(0x30002); }); },
       Status::invalid_argument, "cache_seqlens = 0x30002 is not 4-byte aligned"},
      {"q null", [] { return contiguous_with([](A& a) { a.q.data = nullptr; }); },
       Status::invalid_argument, "q.data is null"},
      {"out null", [] { return contiguous_with([](A& a) { a.out.data = nullptr; }); },
       Status::invalid_argument, "out.data is null"},
      {"k_cache misaligned",
       [] { return contiguous_with([](A& a) { a.k_cache.data = fake_pointer(0x100008); }); },
       Status::invalid_argument, "k_cache.data = 0x100008 is not 16-byte aligned"},
      {"v_cache stride", [] { return contiguous_with([](A& a) { a.v_cache.seq_stride = 12; }); },
       Status::invalid_argument, "v_cache.seq_stride = 12 is not a multiple of 8"},
      {"out overlaps", [] { return contiguous_with([](A& a) { a.out.head_stride = 32; }); },
       Status::invalid_argument, "out strides overlap: out.head_stride = 32"},
      {"k_new without v_new", [] { return contiguous_with([](A& a) { a.v_new.data = nullptr; }); },
       Status::invalid_argument, "k_new.data is set but v_new.data is null"},
      {"seqlen_new zero", [] { return contiguous_with([](A& a) { a.seqlen_new = 0; }); },
       Status::invalid_argument, "seqlen_new = 0 is out of range [1, 256]"},
      {"new tokens overflow the cache",
       [] { return contiguous_with([](A& a) { a.seqlen_new = kMaxLen + 1; }); },
       Status::invalid_argument, "seqlen_new = 257 is out of range [1, 256]"},
      {"seqlen_new without tensors",
       [] {
         return contiguous_with([](A& a) {
           a.k_new.data = nullptr;
           a.v_new.data = nullptr;
         });
       },
       Status::invalid_argument, "seqlen_new = 3 but k_new.data and v_new.data are null"},
      {"k_new stride", [] { return contiguous_with([](A& a) { a.k_new.head_stride = -8; }); },
       Status::invalid_argument, "k_new.head_stride = -8 is negative"},
      {"written cache overlaps",
       [] { return contiguous_with([](A& a) { a.k_cache.seq_stride = kHeadDim; }); },
       Status::invalid_argument, "k_cache strides overlap"},
      {"score_mod stride",
       [] {
         return contiguous_with([](A& a) {
           a.score_mod = reinterpret_cast<const float*>(0x70000);
           a.score_mod_batch_stride = kMaxLen - 8;
         });
       },
       Status::invalid_argument,
       "score_mod_batch_stride = 248 is smaller than the cache capacity 256"},
      {"window", [] { return contiguous_with([](A& a) { a.window_left = -3; }); },
       Status::invalid_argument, "window_left = -3 must be -1 (unbounded) or >= 0"},
      {"scale", [] { return contiguous_with([](A& a) { a.scale = 0.0f; }); },
       Status::invalid_argument, "scale = 0 must be finite and > 0"},
      {"bias", [] { return contiguous_with([](A& a) { a.bias = 1.0f / 0.0f; }); },
       Status::invalid_argument, "bias = inf must be finite"},
      {"sigmoid",
       [] { return contiguous_with([](A& a) { a.sigmoid = static_cast<SigmoidMode>(4); }); },
       Status::invalid_argument, "sigmoid = 4 is not a valid mode"},
      {"workspace misaligned",
       [] { return contiguous_with([](A& a) { a.workspace = fake_pointer(0x80004); }); },
       Status::invalid_argument, "workspace = 0x80004 is not 16-byte aligned"},
      {"workspace bytes without workspace",
       [] { return contiguous_with([](A& a) { a.workspace_bytes = 1024; }); },
       Status::invalid_argument, "workspace_bytes = 1024 but workspace is null"},
      {"paged with max_cache_len", [] { return paged_with([](A& a) { a.max_cache_len = 64; }); },
       Status::invalid_argument, "max_cache_len = 64 is set with block_table"},
      {"block_size", [] { return paged_with([](A& a) { a.block_size = 0; }); },
       Status::invalid_argument, "block_size = 0 is out of range"},
      {"num_blocks", [] { return paged_with([](A& a) { a.num_blocks = 0; }); },
       Status::invalid_argument, "num_blocks = 0 is out of range"},
      {"max_blocks", [] { return paged_with([](A& a) { a.max_blocks = 0; }); },
       Status::invalid_argument, "max_blocks = 0 is out of range"},
      {"capacity beyond 2^24 positions",
       [] {
         return paged_with([](A& a) {
           a.block_size = 256;
           a.max_blocks = (1 << 16) + 1;
         });
       },
       Status::invalid_argument, "max_blocks = 65537 is out of range [1, 65536]"},
      {"block table rows overlap",
       [] { return paged_with([](A& a) { a.block_table_batch_stride = kMaxBlocks - 1; }); },
       Status::invalid_argument, "block_table_batch_stride = 7 is out of range [8, "},
      {"block table misaligned",
       [] { return paged_with([](A& a) { a.block_table = fake_ints(0x60001); }); },
       Status::invalid_argument, "block_table = 0x60001 is not 4-byte aligned"},
      {"written blocks overlap",
       [] { return paged_with([](A& a) { a.k_cache.batch_stride = 8; }); },
       Status::invalid_argument, "k_cache strides overlap"},
      {"new tokens overflow the paged cache",
       [] { return paged_with([](A& a) { a.seqlen_new = kMaxBlocks * kBlockSize + 1; }); },
       Status::invalid_argument, "seqlen_new = 129 is out of range [1, 128]"},
  };
  return cases;
}

// `call` throws an Error of `status` whose message contains `message`.
void expect_error(const std::function<void()>& call, Status status, const std::string& message,
                  const std::string& what = "") {
  try {
    call();
    ADD_FAILURE() << what << ": accepted";
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), status) << what << ": " << error.what();
    EXPECT_NE(std::string(error.what()).find(message), std::string::npos)
        << what << ": got \"" << error.what() << "\", expected \"" << message << "\"";
  }
}

TEST(KvCacheValidation, RejectsEachInvalidArgumentWithItsName) {
  for (const RejectCase& c : reject_cases()) {
    expect_error([&] { check_kvcache(c.make()); }, c.status, c.message, c.rule);
  }
}

TEST(KvCacheValidation, ValidCallsGiveTheDecodeSpecOfTheirCache) {
  const gen::KernelSpec contiguous = check_kvcache(contiguous_args());
  EXPECT_EQ(gen::to_string(contiguous), "decode.bf16.d64.padded.causal.nosmod.fast.anylen");
  EXPECT_EQ(kvcache_capacity(contiguous_args()), kMaxLen);

  KvCacheArgs paged = paged_args();
  paged.dtype = DType::fp16;
  paged.causal = false;
  paged.window_left = 100;
  paged.score_mod = reinterpret_cast<const float*>(0x70000);
  paged.score_mod_batch_stride = kMaxBlocks * kBlockSize;
  paged.sigmoid = SigmoidMode::accurate;
  EXPECT_EQ(gen::to_string(check_kvcache(paged)),
            "decode.fp16.d64.paged.window.smod.accurate.anylen");
  EXPECT_EQ(kvcache_capacity(paged), kMaxBlocks * kBlockSize);

  // Without new tokens, with one sequence whose single score_mod row and block table row need no
  // stride, and with several query rows (speculative decoding, chunked prefill).
  KvCacheArgs read_only = paged_args();
  read_only.k_new = {};
  read_only.v_new = {};
  read_only.seqlen_new = 0;
  read_only.batch = 1;
  read_only.block_table_batch_stride = 0;
  read_only.score_mod = reinterpret_cast<const float*>(0x70000);
  read_only.seqlen_q = 5;
  read_only.q = bthd(fake_pointer(0x10000), 5, kHeadsQ, kHeadDim);
  read_only.out = bthd(fake_pointer(0x20000), 5, kHeadsQ, kHeadDim);
  EXPECT_EQ(gen::to_string(check_kvcache(read_only)),
            "decode.bf16.d64.paged.causal.smod.fast.anylen");
}

// One error message of check_cache_contents, or empty when it accepts.
std::string contents_error(const KvCacheArgs& args, const std::vector<std::int32_t>& lengths,
                           const std::vector<std::int32_t>& table) {
  try {
    check_cache_contents(args, lengths, table);
    return {};
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), Status::invalid_argument);
    return error.what();
  }
}

TEST(KvCacheContents, CacheLengthsLeaveRoomForTheNewTokens) {
  const KvCacheArgs args = contiguous_args();
  EXPECT_EQ(contents_error(args, {0, kMaxLen - kNew}, {}), "");
  EXPECT_EQ(contents_error(args, {-1, 0}, {}),
            "cache_seqlens[0] = -1 is out of range [0, 253]: the cache holds 256 positions per "
            "sequence, 3 of them for the seqlen_new new tokens");
  EXPECT_NE(contents_error(args, {5, kMaxLen - kNew + 1}, {}).find("cache_seqlens[1] = 254"),
            std::string::npos);
}

TEST(KvCacheContents, BlockTableEntriesThatTheSequencesUseAreBlocks) {
  const KvCacheArgs args = paged_args();
  std::vector<std::int32_t> table(kBatch * kMaxBlocks, -1);
  // Sequence 0: 13 + 3 positions, one block; sequence 1: 14 + 3, two blocks (a boundary).
  table[0] = 39;
  table[kMaxBlocks] = 0;
  table[kMaxBlocks + 1] = 7;
  EXPECT_EQ(contents_error(args, {13, 14}, table), "");
  table[kMaxBlocks + 1] = kBlocks;
  EXPECT_EQ(contents_error(args, {13, 14}, table),
            "block_table[1][1] = 40 is out of range [0, 40) (num_blocks); sequence 1 uses its "
            "first 2 entries");
  table[kMaxBlocks + 1] = 7;
  EXPECT_NE(contents_error(args, {16, 14}, table).find("block_table[0][1] = -1"),
            std::string::npos);
  // Empty caches use no block.
  const std::vector<std::int32_t> unused(kBatch * kMaxBlocks, -1);
  KvCacheArgs empty = args;
  empty.k_new = {};
  empty.v_new = {};
  empty.seqlen_new = 0;
  EXPECT_EQ(contents_error(empty, {0, 0}, unused), "");
  EXPECT_NE(contents_error(empty, {kMaxBlocks * kBlockSize + 1, 0}, unused).find("[0, 128]"),
            std::string::npos);
}

TEST(KvCacheCApi, InitSetsTheDefaults) {
  sigattn_kvcache_args args;
  sigattn_kvcache_args_init(&args);
  EXPECT_EQ(args.dtype, SIGATTN_BF16);
  EXPECT_EQ(args.causal, 1);
  EXPECT_EQ(args.window_left, -1);
  EXPECT_EQ(args.window_right, -1);
  EXPECT_EQ(args.sigmoid, SIGATTN_SIGMOID_FAST);
  EXPECT_EQ(args.block_table, nullptr);
  EXPECT_EQ(args.workspace, nullptr);
  EXPECT_EQ(args.seqlen_new, 0);
  sigattn_kvcache_args_init(nullptr);
}

TEST(KvCacheCApi, StatusAndMessageOfInvalidCalls) {
  EXPECT_EQ(sigattn_forward_with_kvcache(nullptr, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_STREQ(sigattn_last_error(), "args is null");
  sigattn_kvcache_args args;
  sigattn_kvcache_args_init(&args);
  std::size_t bytes = 0;
  EXPECT_EQ(sigattn_kvcache_workspace_bytes(&args, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_STREQ(sigattn_last_error(), "bytes is null");
  EXPECT_EQ(sigattn_forward_with_kvcache(&args, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sigattn_last_error()).find("batch = 0 is out of range"), std::string::npos);
  args.batch = 1;
  args.heads_q = args.heads_kv = 1;
  args.head_dim = 72;
  args.seqlen_q = 1;
  args.max_cache_len = 16;
  args.dtype = static_cast<sigattn_dtype>(9);
  EXPECT_EQ(sigattn_kvcache_workspace_bytes(&args, &bytes), SIGATTN_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sigattn_last_error()).find("dtype = 9"), std::string::npos);
  args.dtype = SIGATTN_FP16;
  EXPECT_EQ(sigattn_forward_with_kvcache(&args, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sigattn_last_error()).find("cache_seqlens is null"), std::string::npos);
}

TEST(KvCacheCApi, ValidCallWithoutDriverIsNotAvailable) {
  if (cuda::try_driver(nullptr) != nullptr) {
    GTEST_SKIP() << "a CUDA driver is present; this checks the behaviour without one";
  }
  sigattn_kvcache_args args = paged_c_args();
  EXPECT_EQ(sigattn_forward_with_kvcache(&args, nullptr), SIGATTN_NOT_AVAILABLE);
  std::size_t bytes = 1;
  EXPECT_EQ(sigattn_kvcache_workspace_bytes(&args, &bytes), SIGATTN_NOT_AVAILABLE);
  sigattn_dispatch out{};
  EXPECT_EQ(sigattn_explain_forward_with_kvcache(&args, &out), SIGATTN_NOT_AVAILABLE);
}

// A decode call on a described Hopper: the decode kernel of its spec with the default tile and
// the split count of the policy for the described SMs; the C ABI answers the same.
TEST(KvCacheExplain, DescribedDeviceChoosesTheDecodeTileAndItsSplits) {
  testing::TempDir dir;
  set_database_path((dir / "sigattn.db").string());
  KvCacheArgs args = contiguous_args();
  args.batch = 1;
  const Dispatch dispatch = explain_forward_with_kvcache(args, {"sm_90a", "Test GPU", 132});
  EXPECT_EQ(dispatch.served_by, "heuristic");
  const gen::ParsedVariant parsed = gen::parse_variant(dispatch.variant);
  ASSERT_TRUE(parsed.tile.has_value()) << dispatch.variant;
  EXPECT_EQ(parsed.spec.direction, gen::Direction::decode) << dispatch.variant;
  EXPECT_EQ(gen::to_string(*parsed.tile), dispatch.tile);
  EXPECT_EQ(parsed.tile->splits, decode_split_count(args, *parsed.tile, 132)) << dispatch.variant;
  EXPECT_GT(parsed.tile->splits, 1) << "one sequence of 2 kv heads leaves most of 132 SMs idle";
  EXPECT_NE(dispatch.reason.find("splits on 132 SMs"), std::string::npos) << dispatch.reason;

  sigattn_kvcache_args c_args = paged_c_args();
  c_args.batch = 1;
  c_args.k_cache = c_tensor(args.k_cache);
  c_args.v_cache = c_tensor(args.v_cache);
  c_args.block_table = nullptr;
  c_args.block_table_batch_stride = c_args.max_blocks = c_args.num_blocks = c_args.block_size = 0;
  c_args.max_cache_len = args.max_cache_len;
  c_args.k_new = c_tensor(args.k_new);
  c_args.v_new = c_tensor(args.v_new);
  c_args.seqlen_new = args.seqlen_new;
  const sigattn_device device{"sm_90a", "Test GPU", 132};
  sigattn_dispatch out{};
  ASSERT_EQ(sigattn_explain_forward_with_kvcache_on(&c_args, &device, &out), SIGATTN_OK)
      << sigattn_last_error();
  EXPECT_EQ(out.variant, dispatch.variant);
  EXPECT_EQ(out.reason, dispatch.reason);
  set_database_path("");
}

TEST(KvCacheExplain, DescribedDeviceNeedsItsSmCountAndAKnownArch) {
  const KvCacheArgs args = paged_args();
  expect_error(
      [&] {
        explain_forward_with_kvcache(args, {"sm_90a", "Test GPU", 0});
      },
      Status::invalid_argument, "device.sm_count = 0: the split count of a KV-cache call");
  expect_error(
      [&] {
        explain_forward_with_kvcache(args, {"sm_70", "", 80});
      },
      Status::invalid_argument, "device.arch: unknown architecture 'sm_70'");
  const sigattn_kvcache_args c_args = paged_c_args();
  const sigattn_device device{"sm_90a", "", 132};
  sigattn_dispatch out{};
  EXPECT_EQ(sigattn_explain_forward_with_kvcache_on(nullptr, &device, &out),
            SIGATTN_INVALID_ARGUMENT);
  EXPECT_STREQ(sigattn_last_error(), "args is null");
  EXPECT_EQ(sigattn_explain_forward_with_kvcache_on(&c_args, nullptr, &out),
            SIGATTN_INVALID_ARGUMENT);
  EXPECT_STREQ(sigattn_last_error(), "device is null");
  EXPECT_EQ(sigattn_explain_forward_with_kvcache_on(&c_args, &device, nullptr),
            SIGATTN_INVALID_ARGUMENT);
  EXPECT_STREQ(sigattn_last_error(), "out is null");
  EXPECT_EQ(sigattn_explain_forward_with_kvcache(nullptr, &out), SIGATTN_INVALID_ARGUMENT);
}

}  // namespace
}  // namespace sigattn
