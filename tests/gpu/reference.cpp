// fp64 CPU and fp32 GPU implementations of the sigmoid-attention forward, written from the
// semantics (masks around the bottom-right diagonal, GQA head mapping, default bias -log(len_k),
// per-key score_mod, padded rows written as zeros) and sharing no code with the kernels. The fp32
// GPU kernel lives in tuner/reference, which the tuner verifies its candidates with.
#include "reference.hpp"

#include <algorithm>
#include <cmath>

#include "runtime/cuda_driver.hpp"
#include "tuner/reference.hpp"

namespace sigattn::test {
namespace {

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
        const double* q_row = &q[problem.q_input_offset(b, i, h)];
        std::fill(acc.begin(), acc.end(), 0.0);
        for (std::int64_t j = first; j <= last; ++j) {
          const std::int64_t kv_row = problem.kv_input_offset(b, static_cast<int>(j), h / group);
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
  return tune::reference_binary(arch);
}

std::vector<float> gpu_reference(const ForwardArgs& args, std::int64_t out_elements) {
  const tune::ReferenceKernels kernels;
  cuda::DeviceBuffer out(out_elements * sizeof(float));
  out.fill_bytes(0xFF);  // NaN: every element the reference should write but does not shows
  kernels.forward(args, static_cast<float*>(out.get()), nullptr);
  SIGATTN_CU(cuda::driver().cuCtxSynchronize());
  std::vector<float> host(out_elements);
  out.download(host.data(), host.size() * sizeof(float));
  return host;
}

}  // namespace sigattn::test
