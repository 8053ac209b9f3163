// Backward-pass correctness on the GPU: dQ, dK and dV against an fp64 CPU reference for every
// layout, mask, head grouping, bias, score_mod and odd head dim (including the head-dim slices of
// d > 128), zero gradients on padding, bit-identical repeats, and the fast sigmoid close to the
// accurate one.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <sigattn/sigattn.hpp>
#include <string>
#include <vector>

#include "gpu_test_env.hpp"
#include "numerics.hpp"
#include "problem.hpp"
#include "runtime/backward.hpp"
#include "runtime/cuda_driver.hpp"

namespace sigattn::test {
namespace {

struct Gradients {
  std::vector<double> dq, dk, dv;
};

// The exact gradients of O = sigma(scale Q K^T + bias + score_mod) V with respect to Q, K and V
// for upstream gradient dO, at the offsets of the problem's q and kv tensors.
Gradients cpu_backward(const Problem& p, const HostInputs& in, const std::vector<double>& dout) {
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
  Gradients g{std::vector<double>(p.q_elements(), 0.0), std::vector<double>(p.kv_elements(), 0.0),
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
        const std::int64_t qi = p.q_offset(b, i, h);
        for (int j = first; j <= last; ++j) {
          const std::int64_t kj = p.kv_offset(b, j, h / group);
          double dot = 0.0, dp = 0.0;
          for (int d = 0; d < dims; ++d) {
            dot += q[qi + d] * k[kj + d];
            dp += dout[qi + d] * v[kj + d];
          }
          double x = scale * dot + bias;
          if (p.score_mod) x += in.score_mod[b * p.score_mod_stride() + j];
          const double prob = 1.0 / (1.0 + std::exp(-x));
          const double ds = dp * prob * (1.0 - prob);
          for (int d = 0; d < dims; ++d) {
            g.dv[kj + d] += prob * dout[qi + d];
            g.dq[qi + d] += scale * ds * k[kj + d];
            g.dk[kj + d] += scale * ds * q[qi + d];
          }
        }
      }
    }
  }
  return g;
}

// Gradients round dS and P to the dtype before their products, and sum over many more terms
// than the forward; the bounds are twice the forward's.
Tolerance gradient_tolerance(DType dtype) {
  Tolerance t = tolerance_for(dtype);
  return {2.0 * t.rel_l2, 2.0 * t.max_rel};
}

struct DeviceGradients {
  cuda::DeviceBuffer dout, dq, dk, dv;
  BackwardArgs args;
};

DeviceGradients prepare(const Problem& p, DeviceInputs& device, const std::vector<double>& dout) {
  DeviceGradients g;
  std::vector<std::uint16_t> bits(dout.size());
  std::transform(dout.begin(), dout.end(), bits.begin(),
                 [&](double x) { return to_bits(p.dtype, static_cast<float>(x)); });
  const std::size_t q_bytes = p.q_elements() * sizeof(std::uint16_t);
  const std::size_t kv_bytes = p.kv_elements() * sizeof(std::uint16_t);
  g.dout = cuda::DeviceBuffer(q_bytes);
  g.dout.upload(bits.data(), q_bytes);
  g.dq = cuda::DeviceBuffer(q_bytes);
  g.dk = cuda::DeviceBuffer(kv_bytes);
  g.dv = cuda::DeviceBuffer(kv_bytes);
  g.args.inputs = device.args;
  const auto with = [](TensorRef layout, void* data) {
    layout.data = data;
    return layout;
  };
  g.args.grad_out = with(p.q_layout(), g.dout.get());
  g.args.grad_q = with(p.q_layout(), g.dq.get());
  g.args.grad_k = with(p.kv_layout(), g.dk.get());
  g.args.grad_v = with(p.kv_layout(), g.dv.get());
  return g;
}

void poison(DeviceGradients& g) {
  g.dq.fill_bytes(0xFF);
  g.dk.fill_bytes(0xFF);
  g.dv.fill_bytes(0xFF);
}

std::vector<std::uint16_t> download_bits(const cuda::DeviceBuffer& buffer) {
  std::vector<std::uint16_t> bits(buffer.size() / sizeof(std::uint16_t));
  buffer.download(bits.data(), buffer.size());
  return bits;
}

// Compares one gradient over every stored row of the q side (rows) or kv side (keys); rows
// past the valid length must be exactly zero.
Comparison compare(const Problem& p, const std::vector<std::uint16_t>& out,
                   const std::vector<double>& ref, bool kv_side) {
  double max_ref = 0.0;
  for (double r : ref) max_ref = std::max(max_ref, std::abs(r));
  ErrorAccumulator acc(max_ref, gradient_tolerance(p.dtype));
  const int heads = kv_side ? p.heads_kv : p.heads_q;
  for (int b = 0; b < p.batch; ++b) {
    const int stored =
        kv_side ? (p.storage == Storage::varlen ? p.valid_k(b) : p.len_k) : p.stored_q(b);
    const int valid = kv_side ? p.valid_k(b) : p.valid_q(b);
    for (int t = 0; t < stored; ++t) {
      for (int h = 0; h < heads; ++h) {
        const std::int64_t row = kv_side ? p.kv_offset(b, t, h) : p.q_offset(b, t, h);
        for (int d = 0; d < p.head_dim; ++d) {
          acc.add(Element{row + d, b, t, h, d, t >= valid}, from_bits(p.dtype, out[row + d]),
                  ref[row + d]);
        }
      }
    }
  }
  return acc.result();
}

Problem problem(DType dtype, int head_dim, Storage storage, int batch, int heads_q, int heads_kv,
                int len_q, int len_k) {
  Problem p;
  p.dtype = dtype;
  p.head_dim = head_dim;
  p.storage = storage;
  p.batch = batch;
  p.heads_q = heads_q;
  p.heads_kv = heads_kv;
  p.len_q = len_q;
  p.len_k = len_k;
  p.sigmoid = SigmoidMode::accurate;
  return p;
}

std::vector<Problem> backward_problems() {
  std::vector<Problem> all;
  all.push_back(problem(DType::bf16, 64, Storage::bthd, 2, 4, 4, 128, 128));
  {
    Problem p = problem(DType::fp16, 128, Storage::bthd, 1, 2, 2, 200, 200);
    p.causal = true;
    all.push_back(p);
  }
  {
    Problem p = problem(DType::bf16, 40, Storage::bhtd, 1, 4, 2, 77, 150);
    p.window_left = 16;
    p.window_right = 8;
    all.push_back(p);
  }
  {
    Problem p = problem(DType::bf16, 64, Storage::padded, 3, 4, 1, 128, 128);
    p.lens_q = {0, 50, 128};
    p.lens_k = {128, 1, 90};
    p.causal = true;
    p.score_mod = true;
    all.push_back(p);
  }
  {
    Problem p = problem(DType::fp16, 96, Storage::varlen, 3, 8, 2, 0, 0);
    p.lens_q = {30, 0, 64};
    p.lens_k = {100, 0, 64};
    p.causal = true;
    p.window_left = 20;
    p.bias = -2.0f;
    p.scale = 0.1f;
    all.push_back(p);
  }
  all.push_back(problem(DType::bf16, 256, Storage::bthd, 1, 2, 1, 65, 130));
  all.push_back(problem(DType::fp16, 136, Storage::bthd, 1, 2, 2, 40, 70));
  all.push_back(problem(DType::bf16, 8, Storage::bthd, 1, 1, 1, 1, 17));
  {
    Problem p = problem(DType::bf16, 128, Storage::bthd, 1, 2, 2, 333, 517);
    p.causal = true;
    p.score_mod = true;
    all.push_back(p);
  }
  {
    Problem p = problem(DType::bf16, 64, Storage::padded, 2, 2, 2, 100, 300);
    p.lens_q = {100, 37};
    p.lens_k = {300, 299};
    p.window_right = 8;
    all.push_back(p);
  }
  {
    Problem p = problem(DType::fp16, 32, Storage::varlen, 4, 4, 1, 0, 0);
    p.lens_q = {1, 17, 1000, 64};
    p.lens_k = {5, 17, 1000, 1};
    p.score_mod = true;
    all.push_back(p);
  }
  return all;
}

class BackwardGpu : public GpuTest, public testing::WithParamInterface<Problem> {};

TEST_P(BackwardGpu, MatchesCpuFp64AndZeroesPadding) {
  const Problem& p = GetParam();
  const std::uint64_t test_seed = seed();
  HostInputs inputs = make_inputs(p, test_seed);
  std::mt19937_64 rng(test_seed ^ 0x9e3779b97f4a7c15ull);
  std::normal_distribution<float> normal;
  std::vector<double> dout(p.q_elements());
  for (double& x : dout) x = from_bits(p.dtype, to_bits(p.dtype, normal(rng)));

  DeviceInputs device = upload(p, inputs);
  DeviceGradients grads = prepare(p, device, dout);
  poison(grads);
  backward(grads.args, nullptr);
  SIGATTN_CU(cuda::driver().cuCtxSynchronize());
  const Gradients ref = cpu_backward(p, inputs, dout);
  const auto dq = download_bits(grads.dq), dk = download_bits(grads.dk),
             dv = download_bits(grads.dv);
  for (const auto& [name, out, expected, kv] :
       {std::tuple{"dQ", &dq, &ref.dq, false}, std::tuple{"dK", &dk, &ref.dk, true},
        std::tuple{"dV", &dv, &ref.dv, true}}) {
    const Comparison c = compare(p, *out, *expected, kv);
    EXPECT_TRUE(c.passed) << name << " of " << p.name() << " (seed " << test_seed
                          << "): " << c.summary;
  }

  // Determinism: a second run gives the same bits.
  poison(grads);
  backward(grads.args, nullptr);
  SIGATTN_CU(cuda::driver().cuCtxSynchronize());
  EXPECT_EQ(download_bits(grads.dq), dq) << "dQ differs between two runs";
  EXPECT_EQ(download_bits(grads.dk), dk) << "dK differs between two runs";
  EXPECT_EQ(download_bits(grads.dv), dv) << "dV differs between two runs";

  // The fast sigmoid stays close to the accurate one.
  grads.args.inputs.sigmoid = SigmoidMode::fast;
  poison(grads);
  backward(grads.args, nullptr);
  SIGATTN_CU(cuda::driver().cuCtxSynchronize());
  for (const auto& [name, buffer, accurate] :
       {std::tuple{"dQ", &grads.dq, &dq}, std::tuple{"dK", &grads.dk, &dk},
        std::tuple{"dV", &grads.dv, &dv}}) {
    const auto fast = download_bits(*buffer);
    double err = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < fast.size(); ++i) {
      const double a = from_bits(p.dtype, (*accurate)[i]), f = from_bits(p.dtype, fast[i]);
      ASSERT_TRUE(std::isfinite(f)) << name << " (fast sigmoid) not finite at " << i;
      err += (a - f) * (a - f);
      norm += a * a;
    }
    EXPECT_LE(std::sqrt(err / std::max(norm, 1e-30)), 5e-2) << name << " fast vs accurate";
  }
}

INSTANTIATE_TEST_SUITE_P(Semantics, BackwardGpu, testing::ValuesIn(backward_problems()),
                         [](const testing::TestParamInfo<Problem>& info) {
                           return info.param.name();
                         });

class BackwardValidation : public GpuTest {};

TEST_F(BackwardValidation, OverlappingGradientIsRejectedBeforeAnyWrite) {
  Problem p = problem(DType::bf16, 64, Storage::bthd, 1, 2, 2, 64, 64);
  HostInputs inputs = make_inputs(p, seed());
  DeviceInputs device = upload(p, inputs);
  DeviceGradients grads = prepare(p, device, std::vector<double>(p.q_elements(), 1.0));
  poison(grads);
  grads.args.grad_k.seq_stride = 8;  // rows would overlap
  try {
    backward(grads.args, nullptr);
    ADD_FAILURE() << "accepted overlapping grad_k";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("grad_k"), std::string::npos) << e.what();
  }
  for (auto bits : download_bits(grads.dq)) ASSERT_EQ(bits, 0xFFFF);
}

}  // namespace
}  // namespace sigattn::test
