// Argument validation of sigattn::forward_spec and of the C ABI: every rule rejects its bad value
// with the right status and a message naming the argument, valid calls map to the expected
// KernelSpec, the persistent grid refuses more work tiles than an int numbers, and zero strides no
// TMA map describes are named. explain on a described device decides without a GPU. Pointers are
// fake but aligned: validation never dereferences them.
#include <gtest/gtest.h>
#include <sigattn/sigattn.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <sigattn/sigattn.hpp>
#include <string>
#include <thread>
#include <vector>

#include "runtime/cuda_driver.hpp"
#include "runtime/forward.hpp"
#include "runtime/kernel_launch.hpp"
#include "runtime/kernel_params.hpp"
#include "temp_dir.hpp"

namespace sigattn {
namespace {

void* fake_pointer(std::uintptr_t address) { return reinterpret_cast<void*>(address); }
const std::int32_t* fake_lengths(std::uintptr_t address) {
  return reinterpret_cast<const std::int32_t*>(address);
}

// The largest stride that is a multiple of 8 elements: any extent above 1 overflows its span.
constexpr std::int64_t kHugeStride = std::numeric_limits<std::int64_t>::max() - 7;

constexpr int kBatch = 2, kHeadsQ = 4, kHeadsKv = 2, kHeadDim = 64, kSeqQ = 100, kSeqK = 130;

// A valid dense BTHD call with GQA.
ForwardArgs valid_args() {
  ForwardArgs args;
  args.dtype = DType::bf16;
  args.batch = kBatch;
  args.heads_q = kHeadsQ;
  args.heads_kv = kHeadsKv;
  args.head_dim = kHeadDim;
  args.max_seqlen_q = kSeqQ;
  args.max_seqlen_k = kSeqK;
  args.q = bthd(fake_pointer(0x10000), kSeqQ, kHeadsQ, kHeadDim);
  args.k = bthd(fake_pointer(0x20000), kSeqK, kHeadsKv, kHeadDim);
  args.v = bthd(fake_pointer(0x30000), kSeqK, kHeadsKv, kHeadDim);
  args.out = bthd(fake_pointer(0x40000), kSeqQ, kHeadsQ, kHeadDim);
  return args;
}

struct RejectCase {
  const char* rule;
  std::function<void(ForwardArgs&)> mutate;
  Status status;
  const char* message;
};

const std::vector<RejectCase>& reject_cases() {
  static const std::vector<RejectCase> cases = {
      {"dtype", [](ForwardArgs& a) { a.dtype = static_cast<DType>(7); }, Status::invalid_argument,
       "dtype = 7 is not a valid dtype"},
      {"batch zero", [](ForwardArgs& a) { a.batch = 0; }, Status::invalid_argument,
       "batch = 0 is out of range [1, 65535]"},
      {"batch too big", [](ForwardArgs& a) { a.batch = 65536; }, Status::invalid_argument,
       "batch = 65536 is out of range"},
      {"heads_q zero", [](ForwardArgs& a) { a.heads_q = 0; }, Status::invalid_argument,
       "heads_q = 0 is out of range"},
      {"heads_q too big", [](ForwardArgs& a) { a.heads_q = 70000; }, Status::invalid_argument,
       "heads_q = 70000 is out of range"},
      {"heads_kv zero", [](ForwardArgs& a) { a.heads_kv = 0; }, Status::invalid_argument,
       "heads_kv = 0 is out of range"},
      {"heads_kv not dividing", [](ForwardArgs& a) { a.heads_kv = 3; }, Status::invalid_argument,
       "heads_q = 4 is not a multiple of heads_kv = 3"},
      {"head_dim 100", [](ForwardArgs& a) { a.head_dim = 100; }, Status::unsupported,
       "head_dim = 100 is not supported"},
      {"head_dim 264", [](ForwardArgs& a) { a.head_dim = 264; }, Status::unsupported,
       "head_dim = 264 is not supported"},
      {"head_dim 0", [](ForwardArgs& a) { a.head_dim = 0; }, Status::invalid_argument,
       "head_dim = 0 must be positive"},
      {"max_seqlen_q zero", [](ForwardArgs& a) { a.max_seqlen_q = 0; }, Status::invalid_argument,
       "max_seqlen_q = 0 is out of range [1, 16777216]"},
      {"max_seqlen_k too big", [](ForwardArgs& a) { a.max_seqlen_k = (1 << 24) + 1; },
       Status::invalid_argument, "max_seqlen_k = 16777217 is out of range"},
      {"q null", [](ForwardArgs& a) { a.q.data = nullptr; }, Status::invalid_argument,
       "q.data is null"},
      {"k null", [](ForwardArgs& a) { a.k.data = nullptr; }, Status::invalid_argument,
       "k.data is null"},
      {"v null", [](ForwardArgs& a) { a.v.data = nullptr; }, Status::invalid_argument,
       "v.data is null"},
      {"out null", [](ForwardArgs& a) { a.out.data = nullptr; }, Status::invalid_argument,
       "out.data is null"},
      {"v misaligned", [](ForwardArgs& a) { a.v.data = fake_pointer(0x30008); },
       Status::invalid_argument, "v.data = 0x30008 is not 16-byte aligned"},
      {"q.seq_stride not multiple of 8", [](ForwardArgs& a) { a.q.seq_stride = 12; },
       Status::invalid_argument, "q.seq_stride = 12 is not a multiple of 8 elements (16 bytes)"},
      {"k.head_stride negative", [](ForwardArgs& a) { a.k.head_stride = -64; },
       Status::invalid_argument, "k.head_stride = -64 is negative"},
      {"v.batch_stride odd", [](ForwardArgs& a) { a.v.batch_stride = 33; },
       Status::invalid_argument, "v.batch_stride = 33 is not a multiple of 8"},
      {"out heads overlap rows",
       [](ForwardArgs& a) {
         a.out.head_stride = kHeadDim;
         a.out.seq_stride = kHeadDim;
       },
       Status::invalid_argument, "out strides overlap"},
      {"out head stride inside head_dim", [](ForwardArgs& a) { a.out.head_stride = 32; },
       Status::invalid_argument, "out strides overlap: out.head_stride = 32"},
      {"out batches overlap", [](ForwardArgs& a) { a.out.batch_stride = 8; },
       Status::invalid_argument, "out strides overlap"},
      {"out span overflows in the outermost dimension",
       [](ForwardArgs& a) { a.out.seq_stride = kHugeStride; }, Status::invalid_argument,
       "out strides span more than 2^63 elements: out.seq_stride"},
      {"out span overflows in an inner dimension",
       [](ForwardArgs& a) { a.out.seq_stride = a.out.batch_stride = kHugeStride; },
       Status::invalid_argument, "out strides span more than 2^63 elements: out.batch_stride"},
      {"padded and varlen mixed",
       [](ForwardArgs& a) {
         a.seq_lens_q = fake_lengths(0x50000);
         a.cu_seqlens_q = fake_lengths(0x60000);
         a.cu_seqlens_k = fake_lengths(0x70000);
       },
       Status::invalid_argument, "cannot be combined"},
      {"cu_seqlens_q alone", [](ForwardArgs& a) { a.cu_seqlens_q = fake_lengths(0x60000); },
       Status::invalid_argument, "cu_seqlens_q is set but cu_seqlens_k is null"},
      {"cu_seqlens_k alone", [](ForwardArgs& a) { a.cu_seqlens_k = fake_lengths(0x60000); },
       Status::invalid_argument, "cu_seqlens_k is set but cu_seqlens_q is null"},
      {"seq_lens_k misaligned", [](ForwardArgs& a) { a.seq_lens_k = fake_lengths(0x50002); },
       Status::invalid_argument, "seq_lens_k = 0x50002 is not 4-byte aligned"},
      {"score_mod stride short",
       [](ForwardArgs& a) {
         a.score_mod = static_cast<const float*>(fake_pointer(0x80000));
         a.score_mod_batch_stride = kSeqK - 1;
       },
       Status::invalid_argument, "score_mod_batch_stride = 129 is smaller than max_seqlen_k = 130"},
      {"window_left", [](ForwardArgs& a) { a.window_left = -2; }, Status::invalid_argument,
       "window_left = -2 must be -1 (unbounded) or >= 0"},
      {"window_right", [](ForwardArgs& a) { a.window_right = -5; }, Status::invalid_argument,
       "window_right = -5 must be -1"},
      {"scale zero", [](ForwardArgs& a) { a.scale = 0.0f; }, Status::invalid_argument,
       "scale = 0 must be finite and > 0"},
      {"scale negative", [](ForwardArgs& a) { a.scale = -0.5f; }, Status::invalid_argument,
       "scale = -0.5 must be finite and > 0"},
      {"scale nan", [](ForwardArgs& a) { a.scale = std::nanf(""); }, Status::invalid_argument,
       "scale = nan must be finite"},
      {"bias infinite", [](ForwardArgs& a) { a.bias = std::numeric_limits<float>::infinity(); },
       Status::invalid_argument, "bias = inf must be finite"},
      {"sigmoid", [](ForwardArgs& a) { a.sigmoid = static_cast<SigmoidMode>(9); },
       Status::invalid_argument, "sigmoid = 9 is not a valid mode"},
  };
  return cases;
}

TEST(ForwardSpec, RejectsEachInvalidArgumentWithItsName) {
  for (const RejectCase& rule : reject_cases()) {
    SCOPED_TRACE(rule.rule);
    ForwardArgs args = valid_args();
    rule.mutate(args);
    try {
      forward_spec(args);
      ADD_FAILURE() << "accepted";
    } catch (const Error& error) {
      EXPECT_EQ(error.status(), rule.status);
      EXPECT_NE(std::string(error.what()).find(rule.message), std::string::npos)
          << "message: " << error.what();
    }
  }
}

TEST(ForwardSpec, DenseCallGivesDenseAnyLengthSpec) {
  const gen::KernelSpec spec = forward_spec(valid_args());
  EXPECT_EQ(spec.direction, gen::Direction::forward);
  EXPECT_EQ(spec.dtype, gen::DType::bf16);
  EXPECT_EQ(spec.head_dim, kHeadDim);
  EXPECT_EQ(spec.layout, gen::Layout::dense);
  EXPECT_FALSE(spec.causal);
  EXPECT_FALSE(spec.window);
  EXPECT_FALSE(spec.score_mod);
  EXPECT_EQ(spec.sigmoid, gen::SigmoidMode::fast);
  EXPECT_EQ(spec.seqlen, gen::SeqLen::anylen);
}

TEST(ForwardSpec, WholeTileLengthsSelectX128OnlyWhenDense) {
  ForwardArgs args = valid_args();
  args.max_seqlen_q = 256;
  args.max_seqlen_k = 384;
  args.q = bthd(args.q.data, 256, kHeadsQ, kHeadDim);
  args.out = bthd(args.out.data, 256, kHeadsQ, kHeadDim);
  EXPECT_EQ(forward_spec(args).seqlen, gen::SeqLen::x128);
  args.max_seqlen_k = 200;
  EXPECT_EQ(forward_spec(args).seqlen, gen::SeqLen::anylen);
  args.max_seqlen_k = 384;
  args.seq_lens_k = fake_lengths(0x50000);
  const gen::KernelSpec padded = forward_spec(args);
  EXPECT_EQ(padded.layout, gen::Layout::padded);
  EXPECT_EQ(padded.seqlen, gen::SeqLen::anylen);
}

TEST(ForwardSpec, MaskAndModeFlagsReachTheSpec) {
  ForwardArgs args = valid_args();
  args.dtype = DType::fp16;
  args.causal = true;
  args.window_right = 0;
  args.score_mod = static_cast<const float*>(fake_pointer(0x80000));
  args.score_mod_batch_stride = kSeqK;
  args.sigmoid = SigmoidMode::accurate;
  const gen::KernelSpec spec = forward_spec(args);
  EXPECT_EQ(spec.dtype, gen::DType::fp16);
  EXPECT_TRUE(spec.causal);
  EXPECT_TRUE(spec.window);
  EXPECT_TRUE(spec.score_mod);
  EXPECT_EQ(spec.sigmoid, gen::SigmoidMode::accurate);
}

TEST(ForwardSpec, VarlenIgnoresBatchStridesAndAcceptsBhtdOutput) {
  ForwardArgs args = valid_args();
  args.cu_seqlens_q = fake_lengths(0x60000);
  args.cu_seqlens_k = fake_lengths(0x70000);
  args.q.batch_stride = 3;  // unused in varlen, so not checked
  EXPECT_EQ(forward_spec(args).layout, gen::Layout::varlen);

  ForwardArgs bhtd_out = valid_args();
  bhtd_out.out = bhtd(bhtd_out.out.data, kSeqQ, kHeadsQ, kHeadDim);
  EXPECT_EQ(forward_spec(bhtd_out).layout, gen::Layout::dense);
}

TEST(ForwardSpec, SingleHeadAndBatchMayShareStrides) {
  // Dimensions of extent 1 are never stepped over, so their strides cannot overlap anything.
  ForwardArgs args = valid_args();
  args.batch = 1;
  args.heads_q = 1;
  args.heads_kv = 1;
  args.out.batch_stride = 0;
  args.out.head_stride = 0;
  EXPECT_NO_THROW(forward_spec(args));
}

TEST(StrideHelpers, BthdAndBhtd) {
  const TensorRef t = bthd(nullptr, 10, 3, 64);
  EXPECT_EQ(t.batch_stride, 10 * 3 * 64);
  EXPECT_EQ(t.seq_stride, 3 * 64);
  EXPECT_EQ(t.head_stride, 64);
  const TensorRef h = bhtd(nullptr, 10, 3, 64);
  EXPECT_EQ(h.batch_stride, 3 * 10 * 64);
  EXPECT_EQ(h.seq_stride, 64);
  EXPECT_EQ(h.head_stride, 10 * 64);
}

sigattn_forward_args valid_c_args() {
  sigattn_forward_args args;
  sigattn_forward_args_init(&args);
  const ForwardArgs cpp = valid_args();
  args.batch = cpp.batch;
  args.heads_q = cpp.heads_q;
  args.heads_kv = cpp.heads_kv;
  args.head_dim = cpp.head_dim;
  args.max_seqlen_q = cpp.max_seqlen_q;
  args.max_seqlen_k = cpp.max_seqlen_k;
  const auto tensor = [](const TensorRef& t) {
    return sigattn_tensor{t.data, t.batch_stride, t.seq_stride, t.head_stride};
  };
  args.q = tensor(cpp.q);
  args.k = tensor(cpp.k);
  args.v = tensor(cpp.v);
  args.out = tensor(cpp.out);
  return args;
}

// Stores an int that is none of a C enum's enumerators, as a C caller can, without C++ forming
// the out-of-range enum value itself.
template <class CEnum>
void store_raw(CEnum& field, int value) {
  static_assert(sizeof(CEnum) == sizeof(int));
  std::memcpy(&field, &value, sizeof(value));
}

TEST(CApi, InitSetsDefaults) {
  sigattn_forward_args args;
  std::memset(&args, 0x5a, sizeof(args));
  sigattn_forward_args_init(&args);
  EXPECT_EQ(args.dtype, SIGATTN_BF16);
  EXPECT_EQ(args.sigmoid, SIGATTN_SIGMOID_FAST);
  EXPECT_EQ(args.window_left, -1);
  EXPECT_EQ(args.window_right, -1);
  EXPECT_EQ(args.q.data, nullptr);
  EXPECT_EQ(args.seq_lens_q, nullptr);
  EXPECT_EQ(args.cu_seqlens_k, nullptr);
  EXPECT_EQ(args.score_mod, nullptr);
  EXPECT_EQ(args.causal, 0);
  EXPECT_EQ(args.has_scale, 0);
  EXPECT_EQ(args.has_bias, 0);
  EXPECT_EQ(args.trust_lengths, 0);
}

TEST(CApi, NullArgs) {
  EXPECT_EQ(sigattn_forward(nullptr, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_STREQ(sigattn_last_error(), "args is null");
}

TEST(CApi, StatusAndMessageOfInvalidCalls) {
  sigattn_forward_args args = valid_c_args();
  args.q.seq_stride = 12;
  EXPECT_EQ(sigattn_forward(&args, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sigattn_last_error()).find("q.seq_stride = 12 is not a multiple of 8"),
            std::string::npos)
      << sigattn_last_error();

  args = valid_c_args();
  args.head_dim = 100;
  EXPECT_EQ(sigattn_forward(&args, nullptr), SIGATTN_UNSUPPORTED);
  EXPECT_NE(std::string(sigattn_last_error()).find("head_dim = 100 is not supported"),
            std::string::npos);

  args = valid_c_args();
  args.has_scale = 1;
  args.scale = -1.0f;
  EXPECT_EQ(sigattn_forward(&args, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sigattn_last_error()).find("scale = -1"), std::string::npos);

  args = valid_c_args();
  store_raw(args.dtype, 3);
  EXPECT_EQ(sigattn_forward(&args, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sigattn_last_error()).find("dtype = 3"), std::string::npos);

  args = valid_c_args();
  store_raw(args.sigmoid, -4);
  EXPECT_EQ(sigattn_forward(&args, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sigattn_last_error()).find("sigmoid = -4"), std::string::npos);
}

TEST(CApi, LastErrorIsPerThreadAndEmptyBeforeAnyFailure) {
  sigattn_forward(nullptr, nullptr);
  std::string seen_on_other_thread = "unset";
  std::thread([&seen_on_other_thread] { seen_on_other_thread = sigattn_last_error(); }).join();
  EXPECT_EQ(seen_on_other_thread, "");
  EXPECT_STREQ(sigattn_last_error(), "args is null");
}

TEST(CApi, ValidCallWithoutDriverIsNotAvailable) {
  if (cuda::try_driver(nullptr) != nullptr) {
    GTEST_SKIP() << "a CUDA driver is present; this checks the behaviour without one";
  }
  const sigattn_forward_args args = valid_c_args();
  EXPECT_EQ(sigattn_forward(&args, nullptr), SIGATTN_NOT_AVAILABLE);
  EXPECT_NE(std::string(sigattn_last_error()).find("libcuda.so.1"), std::string::npos)
      << sigattn_last_error();
}

// The persistent sm90 kernels number their work tiles with int: a launch with more tiles than
// that is refused, naming the counts, before the driver is asked anything.
TEST(PersistentGrid, MoreWorkTilesThanAnIntHoldsIsUnsupported) {
  const gen::TileConfig tile{128, 128, 12, 3, gen::Family::sm90};
  try {
    persistent_grid(LoadedKernel{}, tile, 1 << 20, 65535, 65535);
    FAIL() << "no error for 2^20 blocks x 65535 heads x 65535 sequences";
  } catch (const Error& error) {
    EXPECT_EQ(error.status(), Status::unsupported);
    const std::string message = error.what();
    EXPECT_NE(message.find("sm90.m128n128w12s3"), std::string::npos) << message;
    EXPECT_NE(message.find("1048576 blocks x 65535 heads x 65535 sequences"), std::string::npos)
        << message;
  }
}

// What keeps the sm90 kernels' TMA maps from describing a tensor: each zero stride over several
// heads or sequences, named with its tensor; extent-1 dimensions and varlen batch strides are
// never stepped over, so their zero strides are not.
TEST(TmaObstacles, NameEachZeroStrideOverSeveralHeadsOrSequences) {
  ForwardArgs args = valid_args();
  const auto obstacles = [&](bool varlen) {
    return tma_obstacles(
        {{"q", args.q, args.heads_q}, {"k", args.k, args.heads_kv}, {"v", args.v, args.heads_kv}},
        args.batch, varlen);
  };
  EXPECT_EQ(obstacles(false), "");
  args.k.batch_stride = 0;
  args.v.head_stride = 0;
  EXPECT_EQ(obstacles(false),
            "k.batch_stride = 0 over 2 sequences, v.head_stride = 0 over 2 heads");
  EXPECT_EQ(obstacles(true), "v.head_stride = 0 over 2 heads");
  args.batch = 1;
  args.heads_kv = 1;
  EXPECT_EQ(obstacles(false), "");
  args.q.seq_stride = 0;
  EXPECT_EQ(obstacles(false), "q.seq_stride = 0");
}

sigattn_device described(const char* arch) { return sigattn_device{arch, "Test GPU", 100}; }

TEST(CApi, ExplainRefusesMissingArguments) {
  const sigattn_forward_args args = valid_c_args();
  const sigattn_device device = described("sm_80");
  sigattn_dispatch out{};
  EXPECT_EQ(sigattn_explain_forward_on(nullptr, &device, &out), SIGATTN_INVALID_ARGUMENT);
  EXPECT_STREQ(sigattn_last_error(), "args is null");
  EXPECT_EQ(sigattn_explain_forward_on(&args, nullptr, &out), SIGATTN_INVALID_ARGUMENT);
  EXPECT_STREQ(sigattn_last_error(), "device is null");
  EXPECT_EQ(sigattn_explain_forward_on(&args, &device, nullptr), SIGATTN_INVALID_ARGUMENT);
  EXPECT_STREQ(sigattn_last_error(), "out is null");
  const sigattn_device no_arch = described(nullptr);
  EXPECT_EQ(sigattn_explain_forward_on(&args, &no_arch, &out), SIGATTN_INVALID_ARGUMENT);
  EXPECT_STREQ(sigattn_last_error(), "device->arch is null");
  EXPECT_EQ(sigattn_explain_forward(nullptr, &out), SIGATTN_INVALID_ARGUMENT);
  EXPECT_EQ(sigattn_explain_forward(&args, nullptr), SIGATTN_INVALID_ARGUMENT);
}

TEST(CApi, ExplainValidatesTheCallAndTheArch) {
  sigattn_forward_args args = valid_c_args();
  args.q.seq_stride = 12;
  const sigattn_device device = described("sm_80");
  sigattn_dispatch out{};
  EXPECT_EQ(sigattn_explain_forward_on(&args, &device, &out), SIGATTN_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sigattn_last_error()).find("q.seq_stride = 12"), std::string::npos)
      << sigattn_last_error();
  args = valid_c_args();
  const sigattn_device volta = described("sm_70");
  EXPECT_EQ(sigattn_explain_forward_on(&args, &volta, &out), SIGATTN_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sigattn_last_error()).find("device.arch: unknown architecture 'sm_70'"),
            std::string::npos)
      << sigattn_last_error();
}

TEST(CApi, ExplainOnADescribedDeviceNeedsNoGpu) {
  testing::TempDir dir;
  set_database_path((dir / "sigattn.db").string());
  const sigattn_forward_args args = valid_c_args();
  const sigattn_device device = described("sm_80");
  sigattn_dispatch out{};
  ASSERT_EQ(sigattn_explain_forward_on(&args, &device, &out), SIGATTN_OK) << sigattn_last_error();
  // No tuning row of the test device, and shipped rows are of sm_90a: the heuristic default.
  EXPECT_STREQ(out.served_by, "heuristic");
  EXPECT_NE(std::string(out.reason), "");
  const gen::ParsedVariant parsed = gen::parse_variant(out.variant);
  ASSERT_TRUE(parsed.tile.has_value()) << out.variant;
  EXPECT_EQ(gen::to_string(*parsed.tile), out.tile);
  EXPECT_EQ(parsed.tile->family, gen::Family::sm80);

  const Dispatch cpp = explain_forward(valid_args(), DeviceDescription{"sm_80", "Test GPU", 100});
  EXPECT_EQ(cpp.variant, out.variant);
  EXPECT_EQ(cpp.reason, out.reason);
  set_database_path("");
}

TEST(CApi, ExplainOnTheCurrentDeviceWithoutDriverIsNotAvailable) {
  if (cuda::try_driver(nullptr) != nullptr) {
    GTEST_SKIP() << "a CUDA driver is present; this checks the behaviour without one";
  }
  const sigattn_forward_args args = valid_c_args();
  sigattn_dispatch out{};
  EXPECT_EQ(sigattn_explain_forward(&args, &out), SIGATTN_NOT_AVAILABLE);
}

TEST(CApi, Version) {
  EXPECT_STREQ(sigattn_version(), SIGATTN_VERSION_STRING);
  EXPECT_STREQ(sigattn_version(), version());
}

}  // namespace
}  // namespace sigattn
