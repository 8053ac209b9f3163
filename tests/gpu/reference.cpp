// fp64 CPU and fp32 GPU implementations of the sigmoid-attention forward, written from the
// semantics (masks around the bottom-right diagonal, GQA head mapping, default bias -log(len_k),
// per-key score_mod, padded rows written as zeros) and sharing no code with the kernels.
#include "reference.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <stdexcept>

#include "generator/template_store.hpp"
#include "runtime/cuda_driver.hpp"
#include "sigattn/fwd_params.h"

namespace sigattn::test {
namespace {

// One warp per (query row, head, sequence); lanes split the head dimension (at most 8 elements
// each, so head_dim <= 256), dot products are reduced with shuffles, and every sum is fp32 in key
// order. Inputs are decoded from their bits: bf16 is the high half of an fp32, fp16 goes through
// cvt.f32.f16, so the program needs no CUDA headers.
constexpr const char* kReferenceSource = R"cuda(
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

__global__ void __launch_bounds__(128) sigattn_reference_forward(
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
)cuda";

constexpr const char* kReferenceKernelName = "sigattn_reference_forward";
constexpr int kWarpsPerBlock = 4;  // must match the program's kWarpsPerBlock
constexpr int kMaxHeadDim = 256;   // 32 lanes x kMaxDimsPerLane

// The reference reads its parameters through the library's FwdParams, so the program starts with
// the embedded fwd_params.h (its #pragma once is harmless in a single file).
std::string reference_program() {
  for (const gen::EmbeddedTemplate& header : gen::embedded_templates()) {
    if (std::string_view(header.name) == "sigattn/fwd_params.h") {
      return std::string(header.source) + kReferenceSource;
    }
  }
  throw std::runtime_error("the embedded templates lack sigattn/fwd_params.h");
}

// A module loaded in the current context for one reference launch.
class LoadedModule {
 public:
  explicit LoadedModule(const std::vector<char>& cubin) {
    SIGATTN_CU(cuda::driver().cuModuleLoadData(&module_, cubin.data()));
  }
  ~LoadedModule() { cuda::driver().cuModuleUnload(module_); }
  LoadedModule(const LoadedModule&) = delete;
  LoadedModule& operator=(const LoadedModule&) = delete;

  CUfunction function(const std::string& name) const {
    CUfunction function = nullptr;
    SIGATTN_CU(cuda::driver().cuModuleGetFunction(&function, module_, name.c_str()));
    return function;
  }

 private:
  CUmodule module_ = nullptr;
};

std::int64_t window_first(int diagonal, int window_left) {
  return window_left >= 0 ? std::max(0, diagonal - window_left) : 0;
}

}  // namespace

std::vector<double> cpu_reference(const Problem& problem, const HostInputs& inputs) {
  const auto decode = [&](const std::vector<std::uint16_t>& bits) {
    std::vector<double> values(bits.size());
    std::transform(bits.begin(), bits.end(), values.begin(),
                   [&](std::uint16_t b) { return double{from_bits(problem.dtype, b)}; });
    return values;
  };
  const std::vector<double> q = decode(inputs.q);
  const std::vector<double> k = decode(inputs.k);
  const std::vector<double> v = decode(inputs.v);
  const double scale = problem.effective_scale();
  const int group = problem.heads_q / problem.heads_kv;
  const int dims = problem.head_dim;

  std::vector<double> out(problem.q_elements(), 0.0);
  std::vector<double> acc(dims);
  for (int b = 0; b < problem.batch; ++b) {
    const int len_q = problem.valid_q(b);
    const int len_k = problem.valid_k(b);
    const double bias = problem.bias ? double{*problem.bias} : -std::log(double(len_k));
    for (int h = 0; h < problem.heads_q; ++h) {
      for (int i = 0; i < len_q; ++i) {
        const int diagonal = i + len_k - len_q;
        std::int64_t first = window_first(diagonal, problem.window_left);
        std::int64_t last = len_k - 1;
        if (problem.causal) last = std::min<std::int64_t>(last, diagonal);
        if (problem.window_right >= 0) {
          last = std::min<std::int64_t>(last, diagonal + problem.window_right);
        }
        const double* q_row = &q[problem.q_offset(b, i, h)];
        std::fill(acc.begin(), acc.end(), 0.0);
        for (std::int64_t j = first; j <= last; ++j) {
          const std::int64_t kv_row = problem.kv_offset(b, static_cast<int>(j), h / group);
          double dot = 0.0;
          for (int d = 0; d < dims; ++d) dot += q_row[d] * k[kv_row + d];
          double x = scale * dot + bias;
          if (problem.score_mod) x += inputs.score_mod[b * problem.score_mod_stride() + j];
          const double prob = 1.0 / (1.0 + std::exp(-x));
          for (int d = 0; d < dims; ++d) acc[d] += prob * v[kv_row + d];
        }
        std::copy(acc.begin(), acc.end(), out.begin() + problem.q_offset(b, i, h));
      }
    }
  }
  return out;
}

std::shared_ptr<const CompiledKernel> reference_kernel(const std::string& arch) {
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<const CompiledKernel>> compiled;
  std::lock_guard lock(mutex);
  auto& kernel = compiled[arch];
  if (!kernel) {
    kernel = std::make_shared<const CompiledKernel>(compile_source(
        "sigattn_reference_forward", reference_program(), kReferenceKernelName, {}, arch));
  }
  return kernel;
}

std::vector<float> gpu_reference(const ForwardArgs& args, std::int64_t out_elements) {
  if (args.head_dim > kMaxHeadDim) {
    throw std::invalid_argument(
        fmt::format("the reference kernel handles head_dim <= {}", kMaxHeadDim));
  }
  const cuda::DriverApi& api = cuda::driver();
  const cuda::DeviceInfo info = cuda::current_device_info();
  const std::shared_ptr<const CompiledKernel> kernel =
      reference_kernel(cuda::arch_for(info.cc_major, info.cc_minor));
  const LoadedModule module(kernel->cubin);
  const CUfunction function = module.function(kernel->lowered_name);

  cuda::DeviceBuffer out(out_elements * sizeof(float));
  out.fill_bytes(0xFF);  // NaN: every element the reference should write but does not shows
  FwdParams params{};
  params.q = args.q.data;
  params.k = args.k.data;
  params.v = args.v.data;
  params.o = out.get();
  params.q_batch_stride = args.q.batch_stride;
  params.q_seq_stride = args.q.seq_stride;
  params.q_head_stride = args.q.head_stride;
  params.k_batch_stride = args.k.batch_stride;
  params.k_seq_stride = args.k.seq_stride;
  params.k_head_stride = args.k.head_stride;
  params.v_batch_stride = args.v.batch_stride;
  params.v_seq_stride = args.v.seq_stride;
  params.v_head_stride = args.v.head_stride;
  params.o_batch_stride = args.out.batch_stride;
  params.o_seq_stride = args.out.seq_stride;
  params.o_head_stride = args.out.head_stride;
  params.seq_lens_q = args.seq_lens_q;
  params.seq_lens_k = args.seq_lens_k;
  params.cu_seqlens_q = args.cu_seqlens_q;
  params.cu_seqlens_k = args.cu_seqlens_k;
  params.score_mod = args.score_mod;
  params.score_mod_batch_stride = args.score_mod_batch_stride;
  params.batch = args.batch;
  params.heads_q = args.heads_q;
  params.heads_kv = args.heads_kv;
  params.max_seqlen_q = args.max_seqlen_q;
  params.max_seqlen_k = args.max_seqlen_k;
  params.scale = args.scale.value_or(1.0f / std::sqrt(static_cast<float>(args.head_dim)));
  params.bias = args.bias.value_or(0.0f);
  params.has_bias = args.bias.has_value() ? 1 : 0;
  params.window_left = args.window_left;
  params.window_right = args.window_right;
  int head_dim = args.head_dim;
  int causal = args.causal ? 1 : 0;
  int is_fp16 = args.dtype == DType::fp16 ? 1 : 0;
  int fast_sigmoid = args.sigmoid == SigmoidMode::fast ? 1 : 0;
  void* kernel_args[] = {&params, &head_dim, &causal, &is_fp16, &fast_sigmoid};

  const unsigned row_blocks =
      static_cast<unsigned>((args.max_seqlen_q + kWarpsPerBlock - 1) / kWarpsPerBlock);
  SIGATTN_CU(api.cuLaunchKernel(function, row_blocks, static_cast<unsigned>(args.heads_q),
                                static_cast<unsigned>(args.batch), kWarpsPerBlock * 32, 1, 1, 0,
                                nullptr, kernel_args, nullptr));
  SIGATTN_CU(api.cuCtxSynchronize());
  std::vector<float> host(out_elements);
  out.download(host.data(), host.size() * sizeof(float));
  return host;
}

}  // namespace sigattn::test
