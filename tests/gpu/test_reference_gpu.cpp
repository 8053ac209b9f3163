// The fp32 GPU reference against the fp64 CPU reference, exact sigmoid, on problems that exercise
// every semantic both implement (layouts, lengths 0/1/full, masks, GQA, bias, score_mod, both
// dtypes' decoding, partial lanes): the large-problem checks are only as good as this agreement.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "gpu_test_env.hpp"
#include "numerics.hpp"
#include "problem.hpp"
#include "reference.hpp"

namespace sigattn::test {
namespace {

Problem dense(DType dtype, int head_dim, int batch, int len_q, int len_k, int heads_q,
              int heads_kv) {
  Problem p;
  p.dtype = dtype;
  p.head_dim = head_dim;
  p.storage = Storage::bthd;
  p.batch = batch;
  p.len_q = len_q;
  p.len_k = len_k;
  p.heads_q = heads_q;
  p.heads_kv = heads_kv;
  return p;
}

std::vector<Problem> agreement_problems() {
  std::vector<Problem> problems;
  // GQA, bottom-right causal with Lq < Lk, partial lanes (d = 40).
  Problem causal = dense(DType::bf16, 40, 2, 37, 150, 4, 2);
  causal.causal = true;
  problems.push_back(causal);
  // BHTD strides, window to the right only, fp16 decoding, d = 256 (8 dims per lane).
  Problem window = dense(DType::fp16, 256, 1, 90, 90, 2, 2);
  window.storage = Storage::bhtd;
  window.window_left = -1;
  window.window_right = 8;
  problems.push_back(window);
  // Padded lengths 0, 1 and full, causal window, MQA, score_mod.
  Problem padded = dense(DType::bf16, 64, 4, 120, 120, 4, 1);
  padded.storage = Storage::padded;
  padded.lens_q = {0, 1, 120, 60};
  padded.lens_k = {120, 0, 1, 120};
  padded.causal = true;
  padded.window_left = 16;
  padded.window_right = 16;
  padded.score_mod = true;
  problems.push_back(padded);
  // Packed sequences with an empty one inside, bias and scale overrides, fp16.
  Problem varlen = dense(DType::fp16, 128, 3, 0, 0, 8, 2);
  varlen.storage = Storage::varlen;
  varlen.lens_q = {50, 0, 77};
  varlen.lens_k = {130, 0, 77};
  varlen.bias = -2.0f;
  varlen.scale = 0.1f;
  varlen.window_left = 20;
  problems.push_back(varlen);
  return problems;
}

class GpuReference : public GpuTest, public testing::WithParamInterface<Problem> {};

// Both compute the same function exactly up to fp32 rounding: at these sizes that is below 1e-6
// relative, so 2e-5 leaves margin while any semantic difference (a key more or less, a wrong
// offset or bias) moves the result by more than 1e-3.
TEST_P(GpuReference, AgreesWithCpuFp64) {
  const Problem& problem = GetParam();
  problem.validate();
  const HostInputs inputs = make_inputs(problem, seed());
  const DeviceInputs device = upload(problem, inputs);
  const std::vector<double> cpu = cpu_reference(problem, inputs);
  const std::vector<float> gpu = gpu_reference(device.args, problem.q_elements());
  double max_abs_cpu = 0.0;
  for (double value : cpu) max_abs_cpu = std::max(max_abs_cpu, std::abs(value));
  ErrorAccumulator accumulator(max_abs_cpu, Tolerance{2e-5, 2e-5});
  for_each_output(problem,
                  [&](const Element& e) { accumulator.add(e, gpu[e.offset], cpu[e.offset]); });
  const Comparison result = accumulator.result();
  EXPECT_TRUE(result.passed) << "problem " << problem.name() << ", seed " << seed()
                             << " (SIGATTN_TEST_SEED=" << base_seed() << "): " << result.summary;
}

INSTANTIATE_TEST_SUITE_P(Semantics, GpuReference, testing::ValuesIn(agreement_problems()),
                         [](const testing::TestParamInfo<Problem>& info) {
                           return info.param.name();
                         });

}  // namespace
}  // namespace sigattn::test
