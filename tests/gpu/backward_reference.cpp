// fp64 CPU and fp32 GPU gradients of sigmoid attention. The GPU program is one kernel in two
// modes: one warp per dQ row (summing over the keys the row sees) or one warp per dK/dV row
// (summing over the group's query heads and the queries that see the key); lanes split the head
// dimension, dot products are reduced with shuffles, and every sum is fp32 in index order. It is
// built on the prelude of tuner/reference (input decoding, the two sigmoid forms).
#include "backward_reference.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "runtime/cuda_driver.hpp"
#include "sigattn/fwd_params.h"
#include "tuner/reference.hpp"

namespace sigattn::test {
namespace {

constexpr const char* kBackwardSource = R"cuda(
namespace {

// A gradient-side tensor: 16-bit dO or an fp32 gradient, strides in elements.
struct Tensor {
  void* data;
  long long batch_stride, seq_stride, head_stride;
};

struct Sequence {
  int len_q, len_k;
  long long q_token0, k_token0;  // varlen: the sequence's first packed row; else 0
};

__device__ float warp_sum(float x) {
  for (int mask = 16; mask > 0; mask /= 2) x += __shfl_xor_sync(0xffffffffu, x, mask);
  return x;
}

__device__ Sequence sequence(const sigattn::FwdParams& p, int b) {
  Sequence s{p.max_seqlen_q, p.max_seqlen_k, 0, 0};
  if (p.cu_seqlens_q != nullptr) {
    s.q_token0 = p.cu_seqlens_q[b];
    s.k_token0 = p.cu_seqlens_k[b];
    s.len_q = p.cu_seqlens_q[b + 1] - p.cu_seqlens_q[b];
    s.len_k = p.cu_seqlens_k[b + 1] - p.cu_seqlens_k[b];
  } else {
    if (p.seq_lens_q != nullptr) s.len_q = p.seq_lens_q[b];
    if (p.seq_lens_k != nullptr) s.len_k = p.seq_lens_k[b];
  }
  return s;
}

// Element offset of (sequence b, row t, head h); packed varlen rows count from token0.
__device__ long long offset(long long batch_stride, long long seq_stride, long long head_stride,
                            bool varlen, long long token0, int b, int t, int h) {
  const long long row = varlen ? (token0 + t) * seq_stride : b * batch_stride + t * seq_stride;
  return row + h * head_stride;
}

// Key padding, causal and the window, around the bottom-right diagonal row + len_k - len_q.
__device__ bool visible(const sigattn::FwdParams& p, int causal, const Sequence& s, int row,
                        int key) {
  const int diagonal = row + s.len_k - s.len_q;
  if (key >= s.len_k) return false;
  if (p.window_left >= 0 && key < diagonal - p.window_left) return false;
  if (causal && key > diagonal) return false;
  if (p.window_right >= 0 && key > diagonal + p.window_right) return false;
  return true;
}

__device__ void load_row(const unsigned short* row, int head_dim, int lane, int is_fp16,
                         float (&values)[kMaxDimsPerLane]) {
#pragma unroll
  for (int e = 0; e < kMaxDimsPerLane; ++e) {
    const int d = lane + 32 * e;
    values[e] = d < head_dim ? input_value(row, d, is_fp16) : 0.0f;
  }
}

__device__ float dot(const float (&a)[kMaxDimsPerLane], const float (&b)[kMaxDimsPerLane]) {
  float sum = 0.0f;
#pragma unroll
  for (int e = 0; e < kMaxDimsPerLane; ++e) sum += a[e] * b[e];
  return warp_sum(sum);
}

__device__ void store_row(float* row, int head_dim, int lane, float factor,
                          const float (&values)[kMaxDimsPerLane]) {
#pragma unroll
  for (int e = 0; e < kMaxDimsPerLane; ++e) {
    const int d = lane + 32 * e;
    if (d < head_dim) row[d] = factor * values[e];
  }
}

}  // namespace

// key_rows = 0: row blockIdx.x * 4 + warp of dQ for query head blockIdx.y into grad_a.
// key_rows = 1: that row of dK (grad_a) and dV (grad_b) for kv head blockIdx.y.
extern "C" __global__ void __launch_bounds__(128) sigattn_reference_backward(
    const sigattn::FwdParams p, Tensor dout, Tensor grad_a, Tensor grad_b, int head_dim,
    int causal, int is_fp16, int fast_sigmoid, int key_rows) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int head = blockIdx.y;
  const int b = blockIdx.z;
  const bool varlen = p.cu_seqlens_q != nullptr;
  const Sequence s = sequence(p, b);
  const int stored = key_rows ? p.max_seqlen_k : p.max_seqlen_q;
  const int valid = key_rows ? s.len_k : s.len_q;
  // Packed rows past this sequence's length belong to the next sequence.
  if (row >= stored || (varlen && row >= valid)) return;

  const long long token0 = key_rows ? s.k_token0 : s.q_token0;
  float* out_a = static_cast<float*>(grad_a.data) +
                 offset(grad_a.batch_stride, grad_a.seq_stride, grad_a.head_stride, varlen,
                        token0, b, row, head);
  float* out_b = key_rows ? static_cast<float*>(grad_b.data) +
                                offset(grad_b.batch_stride, grad_b.seq_stride,
                                       grad_b.head_stride, varlen, token0, b, row, head)
                          : nullptr;
  float acc_a[kMaxDimsPerLane] = {};
  float acc_b[kMaxDimsPerLane] = {};
  if (row >= valid) {
    store_row(out_a, head_dim, lane, 0.0f, acc_a);
    if (out_b != nullptr) store_row(out_b, head_dim, lane, 0.0f, acc_b);
    return;
  }

  const unsigned short* q = static_cast<const unsigned short*>(p.q);
  const unsigned short* k = static_cast<const unsigned short*>(p.k);
  const unsigned short* v = static_cast<const unsigned short*>(p.v);
  const unsigned short* d_o = static_cast<const unsigned short*>(dout.data);
  const auto q_at = [&](int t, int h) {
    return offset(p.q_batch_stride, p.q_seq_stride, p.q_head_stride, varlen, s.q_token0, b, t, h);
  };
  const auto do_at = [&](int t, int h) {
    return offset(dout.batch_stride, dout.seq_stride, dout.head_stride, varlen, s.q_token0, b, t,
                  h);
  };
  const auto k_at = [&](int t, int h) {
    return offset(p.k_batch_stride, p.k_seq_stride, p.k_head_stride, varlen, s.k_token0, b, t, h);
  };
  const auto v_at = [&](int t, int h) {
    return offset(p.v_batch_stride, p.v_seq_stride, p.v_head_stride, varlen, s.k_token0, b, t, h);
  };
  const float bias = p.has_bias ? p.bias : -logf(static_cast<float>(s.len_k));
  const float* score_mod =
      p.score_mod != nullptr ? p.score_mod + b * p.score_mod_batch_stride : nullptr;
  const int group = p.heads_q / p.heads_kv;

  float q_row[kMaxDimsPerLane], do_row[kMaxDimsPerLane];
  float k_row[kMaxDimsPerLane], v_row[kMaxDimsPerLane];
  if (!key_rows) {
    // dQ_i = scale * sum over visible keys j of dS_ij k_j.
    load_row(q + q_at(row, head), head_dim, lane, is_fp16, q_row);
    load_row(d_o + do_at(row, head), head_dim, lane, is_fp16, do_row);
    for (int key = 0; key < s.len_k; ++key) {
      if (!visible(p, causal, s, row, key)) continue;
      load_row(k + k_at(key, head / group), head_dim, lane, is_fp16, k_row);
      load_row(v + v_at(key, head / group), head_dim, lane, is_fp16, v_row);
      float x = p.scale * dot(q_row, k_row) + bias;
      if (score_mod != nullptr) x += score_mod[key];
      const float prob = sigmoid(x, fast_sigmoid);
      const float ds = dot(do_row, v_row) * prob * (1.0f - prob);
#pragma unroll
      for (int e = 0; e < kMaxDimsPerLane; ++e) acc_a[e] += ds * k_row[e];
    }
    store_row(out_a, head_dim, lane, p.scale, acc_a);
    return;
  }
  // dV_j = sum of P_ij dO_i and dK_j = scale * sum of dS_ij q_i over the group's query heads and
  // the queries that see key j.
  load_row(k + k_at(row, head), head_dim, lane, is_fp16, k_row);
  load_row(v + v_at(row, head), head_dim, lane, is_fp16, v_row);
  const float mod = score_mod != nullptr ? score_mod[row] : 0.0f;
  for (int h = head * group; h < (head + 1) * group; ++h) {
    for (int i = 0; i < s.len_q; ++i) {
      if (!visible(p, causal, s, i, row)) continue;
      load_row(q + q_at(i, h), head_dim, lane, is_fp16, q_row);
      load_row(d_o + do_at(i, h), head_dim, lane, is_fp16, do_row);
      const float prob = sigmoid(p.scale * dot(q_row, k_row) + bias + mod, fast_sigmoid);
      const float ds = dot(do_row, v_row) * prob * (1.0f - prob);
#pragma unroll
      for (int e = 0; e < kMaxDimsPerLane; ++e) {
        acc_a[e] += ds * q_row[e];
        acc_b[e] += prob * do_row[e];
      }
    }
  }
  store_row(out_a, head_dim, lane, p.scale, acc_a);
  store_row(out_b, head_dim, lane, 1.0f, acc_b);
}
)cuda";

constexpr const char* kKernelName = "sigattn_reference_backward";

// Mirrors the program's Tensor.
struct Tensor {
  void* data;
  long long batch_stride, seq_stride, head_stride;
};

Tensor tensor(const TensorRef& layout, void* data) {
  return {data, layout.batch_stride, layout.seq_stride, layout.head_stride};
}

std::vector<float> download_floats(const cuda::DeviceBuffer& buffer) {
  std::vector<float> host(buffer.size() / sizeof(float));
  buffer.download(host.data(), buffer.size());
  return host;
}

}  // namespace

GradientSet<double> cpu_backward_reference(const Problem& p, const HostInputs& in,
                                           const std::vector<double>& dout) {
  const auto decode = [&](const std::vector<std::uint16_t>& bits) {
    std::vector<double> values(bits.size());
    std::transform(bits.begin(), bits.end(), values.begin(),
                   [&](std::uint16_t b) { return double{from_bits(p.dtype, b)}; });
    return values;
  };
  const std::vector<double> q = decode(in.q), k = decode(in.k), v = decode(in.v);
  const double scale = p.effective_scale();
  const int group = p.heads_q / p.heads_kv;
  const int dims = p.head_dim;
  GradientSet<double> g{std::vector<double>(p.q_elements(), 0.0),
                        std::vector<double>(p.kv_elements(), 0.0),
                        std::vector<double>(p.kv_elements(), 0.0)};
  for (int b = 0; b < p.batch; ++b) {
    const int len_q = p.valid_q(b), len_k = p.valid_k(b);
    const double bias = p.bias ? double{*p.bias} : -std::log(double(len_k));
    for (int h = 0; h < p.heads_q; ++h) {
      for (int i = 0; i < len_q; ++i) {
        const int diagonal = i + len_k - len_q;
        int first = p.window_left >= 0 ? std::max(0, diagonal - p.window_left) : 0;
        int last = len_k - 1;
        if (p.causal) last = std::min(last, diagonal);
        if (p.window_right >= 0) last = std::min(last, diagonal + p.window_right);
        // Inputs at their stored offsets (shared where broadcast); dO and the gradients full.
        const std::int64_t qi = p.q_offset(b, i, h), q_in = p.q_input_offset(b, i, h);
        for (int j = first; j <= last; ++j) {
          const std::int64_t kj = p.kv_offset(b, j, h / group);
          const std::int64_t kv_in = p.kv_input_offset(b, j, h / group);
          double dot = 0.0, dp = 0.0;
          for (int d = 0; d < dims; ++d) {
            dot += q[q_in + d] * k[kv_in + d];
            dp += dout[qi + d] * v[kv_in + d];
          }
          double x = scale * dot + bias;
          if (p.score_mod) x += in.score_mod[b * p.score_mod_stride() + j];
          const double prob = 1.0 / (1.0 + std::exp(-x));
          const double ds = dp * prob * (1.0 - prob);
          for (int d = 0; d < dims; ++d) {
            g.dv[kj + d] += prob * dout[qi + d];
            g.dq[qi + d] += scale * ds * k[kv_in + d];
            g.dk[kj + d] += scale * ds * q[q_in + d];
          }
        }
      }
    }
  }
  return g;
}

GradientSet<float> gpu_backward_reference(const BackwardArgs& args, std::int64_t q_elements,
                                          std::int64_t kv_elements) {
  const ForwardArgs& in = args.inputs;
  if (in.head_dim > tune::kReferenceMaxHeadDim) {
    throw std::invalid_argument(
        fmt::format("the backward reference handles head_dim <= {}", tune::kReferenceMaxHeadDim));
  }
  const tune::ReferenceModule module(kKernelName, kBackwardSource);
  const CUfunction function = module.function(kKernelName);

  // NaN everywhere first: an element the reference should write but does not shows.
  cuda::DeviceBuffer dq(q_elements * sizeof(float)), dk(kv_elements * sizeof(float)),
      dv(kv_elements * sizeof(float));
  for (cuda::DeviceBuffer* buffer : {&dq, &dk, &dv}) buffer->fill_bytes(0xFF);

  FwdParams params = tune::reference_params(in);
  Tensor dout = tensor(args.grad_out, args.grad_out.data);
  int head_dim = in.head_dim;
  int causal = in.causal ? 1 : 0;
  int is_fp16 = in.dtype == DType::fp16 ? 1 : 0;
  int fast_sigmoid = in.sigmoid == SigmoidMode::fast ? 1 : 0;
  const auto launch = [&](Tensor grad_a, Tensor grad_b, int key_rows) {
    void* kernel_args[] = {&params, &dout,    &grad_a,       &grad_b,  &head_dim,
                           &causal, &is_fp16, &fast_sigmoid, &key_rows};
    tune::launch_reference_rows(function, key_rows ? in.max_seqlen_k : in.max_seqlen_q,
                                key_rows ? in.heads_kv : in.heads_q, in.batch, kernel_args,
                                nullptr);
  };
  launch(tensor(args.grad_q, dq.get()), tensor(args.grad_q, nullptr), 0);
  launch(tensor(args.grad_k, dk.get()), tensor(args.grad_v, dv.get()), 1);
  SIGATTN_CU(cuda::driver().cuCtxSynchronize());
  return {download_floats(dq), download_floats(dk), download_floats(dv)};
}

}  // namespace sigattn::test
