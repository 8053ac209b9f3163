// The shared fp32 reference program and its launches. The forward reference is one warp per
// (query row, head, sequence): lanes split the head dimension (at most 8 elements each), dot
// products are reduced with shuffles, and every sum is fp32 in key order. Inputs are decoded from
// their bits (bf16 is the high half of an fp32, fp16 goes through cvt.f32.f16), so the program
// needs no CUDA headers.
#include "tuner/reference.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string_view>
#include <utility>

#include "generator/template_store.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/kernel_params.hpp"
#include "sigattn/fwd_params.h"

namespace sigattn::tune {
namespace {

// What every reference program starts with, after fwd_params.h. kWarpsPerBlock must match
// kReferenceWarpsPerBlock.
constexpr const char* kPrelude = R"cuda(
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxDimsPerLane = 8;

__device__ float input_value(const unsigned short* data, long long index, int is_fp16) {
  const unsigned short bits = data[index];
  float value;
  if (is_fp16) {
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
  } else {
    asm("mov.b32 %0, %1;" : "=f"(value) : "r"(static_cast<unsigned int>(bits) << 16));
  }
  return value;
}

__device__ float sigmoid(float x, int fast) {
  if (fast) {
    float t;
    asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(0.5f * x));
    return 0.5f * t + 0.5f;
  }
  return 1.0f / (1.0f + expf(-x));
}

}  // namespace
)cuda";

constexpr const char* kReferenceSource = R"cuda(
extern "C" __global__ void __launch_bounds__(128) sigattn_reference_forward(
    const sigattn::FwdParams p, int head_dim, int causal, int is_fp16, int fast_sigmoid) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int head = blockIdx.y;
  const int b = blockIdx.z;
  if (row >= p.max_seqlen_q) return;

  const bool varlen = p.cu_seqlens_q != nullptr;
  int len_q = p.max_seqlen_q;
  int len_k = p.max_seqlen_k;
  long long q_start, k_start, v_start, o_start;
  if (varlen) {
    len_q = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
    len_k = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
    q_start = p.cu_seqlens_q[b] * p.q_seq_stride;
    o_start = p.cu_seqlens_q[b] * p.o_seq_stride;
    k_start = p.cu_seqlens_k[b] * p.k_seq_stride;
    v_start = p.cu_seqlens_k[b] * p.v_seq_stride;
  } else {
    if (p.seq_lens_q != nullptr) len_q = p.seq_lens_q[b];
    if (p.seq_lens_k != nullptr) len_k = p.seq_lens_k[b];
    q_start = b * p.q_batch_stride;
    o_start = b * p.o_batch_stride;
    k_start = b * p.k_batch_stride;
    v_start = b * p.v_batch_stride;
  }
  // Packed rows past this sequence's length belong to the next sequence.
  if (varlen && row >= len_q) return;

  float* out = static_cast<float*>(p.o) + o_start + row * p.o_seq_stride + head * p.o_head_stride;
  if (row >= len_q) {
    for (int d = lane; d < head_dim; d += 32) out[d] = 0.0f;
    return;
  }

  const int kv_head = head / (p.heads_q / p.heads_kv);
  const unsigned short* q_row = static_cast<const unsigned short*>(p.q) + q_start +
                                row * p.q_seq_stride + head * p.q_head_stride;
  const unsigned short* k_head = static_cast<const unsigned short*>(p.k) + k_start +
                                 kv_head * p.k_head_stride;
  const unsigned short* v_head = static_cast<const unsigned short*>(p.v) + v_start +
                                 kv_head * p.v_head_stride;

  float q_part[kMaxDimsPerLane];
  float acc[kMaxDimsPerLane];
#pragma unroll
  for (int e = 0; e < kMaxDimsPerLane; ++e) {
    const int d = lane + 32 * e;
    q_part[e] = d < head_dim ? input_value(q_row, d, is_fp16) : 0.0f;
    acc[e] = 0.0f;
  }

  // Keys j in [first, last]: padding, then causal and the window around the diagonal
  // j = row + len_k - len_q.
  const int diagonal = row + len_k - len_q;
  int first = 0;
  int last = len_k - 1;
  if (p.window_left >= 0 && diagonal - p.window_left > first) first = diagonal - p.window_left;
  if (causal && diagonal < last) last = diagonal;
  if (p.window_right >= 0 && diagonal + p.window_right < last) last = diagonal + p.window_right;

  const float bias = p.has_bias ? p.bias : -logf(static_cast<float>(len_k));
  const float* score_mod =
      p.score_mod != nullptr ? p.score_mod + b * p.score_mod_batch_stride : nullptr;
  for (int j = first; j <= last; ++j) {
    const unsigned short* k_row = k_head + j * p.k_seq_stride;
    float dot = 0.0f;
#pragma unroll
    for (int e = 0; e < kMaxDimsPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < head_dim) dot += q_part[e] * input_value(k_row, d, is_fp16);
    }
    for (int mask = 16; mask > 0; mask /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, mask);
    float x = p.scale * dot + bias;
    if (score_mod != nullptr) x += score_mod[j];
    const float prob = sigmoid(x, fast_sigmoid);
    const unsigned short* v_row = v_head + j * p.v_seq_stride;
#pragma unroll
    for (int e = 0; e < kMaxDimsPerLane; ++e) {
      const int d = lane + 32 * e;
      if (d < head_dim) acc[e] += prob * input_value(v_row, d, is_fp16);
    }
  }
#pragma unroll
  for (int e = 0; e < kMaxDimsPerLane; ++e) {
    const int d = lane + 32 * e;
    if (d < head_dim) out[d] = acc[e];
  }
}

namespace {

__device__ unsigned long long mix64(unsigned long long x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__device__ unsigned short to_bits(float value, int is_fp16) {
  unsigned short bits;
  if (is_fp16) {
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));
  } else {
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(bits) : "f"(value));
  }
  return bits;
}

}  // namespace

// Normal(0, 1) values rounded to the dtype: Box-Muller over a counter-based hash of (seed, i), so
// any element can be drawn independently and the same seed gives the same tensor.
extern "C" __global__ void sigattn_fill_normal(unsigned short* out, long long count,
                                               unsigned long long seed, int is_fp16) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count;
       i += (long long)gridDim.x * blockDim.x) {
    const unsigned long long bits = mix64(seed ^ mix64((unsigned long long)i));
    const float u1 = ((bits >> 40) + 1.0f) * (1.0f / 16777217.0f);  // (0, 1]
    const float u2 = ((bits & 0xFFFFFFull) + 0.5f) * (1.0f / 16777216.0f);
    const float normal = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    out[i] = to_bits(normal, is_fp16);
  }
}

// bf16/fp16 elements to fp32, for comparisons on the host.
extern "C" __global__ void sigattn_widen(const unsigned short* in, float* out, long long count,
                                         int is_fp16) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count;
       i += (long long)gridDim.x * blockDim.x) {
    out[i] = input_value(in, i, is_fp16);
  }
}

// Writes every word of a buffer larger than the L2 cache, evicting what the last run left there.
extern "C" __global__ void sigattn_flush(unsigned int* buffer, long long words) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < words;
       i += (long long)gridDim.x * blockDim.x) {
    buffer[i] = (unsigned int)i;
  }
}

// Fault injection for the tuner's tests: a write to an unmapped address (the context is lost),
// and a kernel that never ends (the watchdog must fire).
extern "C" __global__ void sigattn_fault_probe(unsigned long long address) {
  *reinterpret_cast<volatile int*>(address) = 1;
}

extern "C" __global__ void sigattn_hang_probe(volatile int* never_set) {
  while (*never_set == 0) {
  }
}
)cuda";

constexpr unsigned kThreads = 256;  // of the element-wise kernels
constexpr unsigned kMaxBlocks = 4096;
// An address no allocation uses: the fault probe writes there.
constexpr unsigned long long kUnmappedAddress = 0x8;

// The program starts with the embedded fwd_params.h (its #pragma once is harmless in one file).
std::string reference_program(std::string_view kernels) {
  for (const gen::EmbeddedTemplate& header : gen::embedded_templates()) {
    if (std::string_view(header.name) == "sigattn/fwd_params.h") {
      return fmt::format("{}{}{}", header.source, kPrelude, kernels);
    }
  }
  throw std::runtime_error("the embedded templates lack sigattn/fwd_params.h");
}

unsigned blocks_for(std::int64_t count) {
  return static_cast<unsigned>(
      std::clamp<std::int64_t>((count + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

void launch(CUfunction function, unsigned blocks, void** args, CUstream stream) {
  SIGATTN_CU(cuda::driver().cuLaunchKernel(function, blocks, 1, 1, kThreads, 1, 1, 0, stream, args,
                                           nullptr));
}

}  // namespace

std::shared_ptr<const CompiledKernel> compile_reference_program(const std::string& name,
                                                                std::string_view kernels,
                                                                const std::string& arch) {
  static std::mutex mutex;
  static std::map<std::pair<std::string, std::string>, std::shared_ptr<const CompiledKernel>>
      compiled;
  std::lock_guard lock(mutex);
  auto& kernel = compiled[{name, arch}];
  if (!kernel) {
    kernel = std::make_shared<const CompiledKernel>(
        compile_source(name, reference_program(kernels), name, {}, arch));
  }
  return kernel;
}

std::shared_ptr<const CompiledKernel> reference_binary(const std::string& arch) {
  return compile_reference_program(kReferenceForwardKernel, kReferenceSource, arch);
}

FwdParams reference_params(const ForwardArgs& args) {
  return forward_params(args,
                        args.cu_seqlens_q != nullptr ? gen::Layout::varlen : gen::Layout::dense);
}

void launch_reference_rows(CUfunction function, int rows, int heads, int batch, void** args,
                           CUstream stream) {
  SIGATTN_CU(cuda::driver().cuLaunchKernel(
      function,
      static_cast<unsigned>((rows + kReferenceWarpsPerBlock - 1) / kReferenceWarpsPerBlock),
      static_cast<unsigned>(heads), static_cast<unsigned>(batch), kReferenceWarpsPerBlock * 32, 1,
      1, 0, stream, args, nullptr));
}

ReferenceModule::ReferenceModule(const std::string& name, std::string_view kernels) {
  const cuda::DeviceInfo info = cuda::current_device_info();
  const std::shared_ptr<const CompiledKernel> binary =
      compile_reference_program(name, kernels, cuda::arch_for(info.cc_major, info.cc_minor));
  SIGATTN_CU(cuda::driver().cuModuleLoadData(&module_, binary->cubin.data()));
}

ReferenceModule::~ReferenceModule() {
  // Unloading fails after a lost context; nothing can be done about it then.
  cuda::driver().cuModuleUnload(module_);
}

CUfunction ReferenceModule::function(const char* name) const {
  CUfunction function = nullptr;
  SIGATTN_CU(cuda::driver().cuModuleGetFunction(&function, module_, name));
  return function;
}

ReferenceKernels::ReferenceKernels()
    : module_(kReferenceForwardKernel, kReferenceSource),
      forward_(module_.function(kReferenceForwardKernel)),
      fill_normal_(module_.function("sigattn_fill_normal")),
      widen_(module_.function("sigattn_widen")),
      flush_(module_.function("sigattn_flush")),
      fault_(module_.function("sigattn_fault_probe")),
      hang_(module_.function("sigattn_hang_probe")) {}

void ReferenceKernels::fill_normal(void* data, std::int64_t count, gen::DType dtype,
                                   std::uint64_t seed, CUstream stream) const {
  long long n = count;
  unsigned long long s = seed;
  int is_fp16 = dtype == gen::DType::fp16 ? 1 : 0;
  void* args[] = {&data, &n, &s, &is_fp16};
  launch(fill_normal_, blocks_for(count), args, stream);
}

void ReferenceKernels::widen(const void* data, float* out, std::int64_t count, gen::DType dtype,
                             CUstream stream) const {
  long long n = count;
  int is_fp16 = dtype == gen::DType::fp16 ? 1 : 0;
  void* args[] = {&data, &out, &n, &is_fp16};
  launch(widen_, blocks_for(count), args, stream);
}

void ReferenceKernels::flush(void* buffer, std::size_t bytes, CUstream stream) const {
  long long words = static_cast<long long>(bytes / sizeof(unsigned int));
  void* args[] = {&buffer, &words};
  launch(flush_, blocks_for(words), args, stream);
}

void ReferenceKernels::fault(CUstream stream) const {
  unsigned long long address = kUnmappedAddress;
  void* args[] = {&address};
  SIGATTN_CU(cuda::driver().cuLaunchKernel(fault_, 1, 1, 1, 1, 1, 1, 0, stream, args, nullptr));
}

void ReferenceKernels::hang(const int* flag, CUstream stream) const {
  void* args[] = {&flag};
  SIGATTN_CU(cuda::driver().cuLaunchKernel(hang_, 1, 1, 1, 1, 1, 1, 0, stream, args, nullptr));
}

void ReferenceKernels::forward(const ForwardArgs& args, float* out, CUstream stream) const {
  if (args.head_dim > kReferenceMaxHeadDim) {
    throw std::invalid_argument(
        fmt::format("the reference kernel handles head_dim <= {}", kReferenceMaxHeadDim));
  }
  FwdParams params = reference_params(args);
  params.o = out;
  int head_dim = args.head_dim;
  int causal = args.causal ? 1 : 0;
  int is_fp16 = args.dtype == DType::fp16 ? 1 : 0;
  int fast_sigmoid = args.sigmoid == SigmoidMode::fast ? 1 : 0;
  void* kernel_args[] = {&params, &head_dim, &causal, &is_fp16, &fast_sigmoid};
  launch_reference_rows(forward_, args.max_seqlen_q, args.heads_q, args.batch, kernel_args, stream);
}

}  // namespace sigattn::tune
