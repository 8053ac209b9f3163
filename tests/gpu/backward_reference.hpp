// The two references the backward kernels are checked against, written from the gradient
// formulas (dV = P^T dO, dP = dO V^T, dS = dP * P (1 - P), dQ = scale dS K, dK = scale dS^T Q,
// dK/dV summed over a GQA group) and sharing no code with the kernels: fp64 on the CPU for small
// problems, and a plain fp32 GPU kernel, one warp per gradient row, for large ones.
#pragma once

#include <cstdint>
#include <sigattn/sigattn.hpp>
#include <vector>

#include "problem.hpp"

namespace sigattn::test {

template <class T>
struct GradientSet {
  std::vector<T> dq, dk, dv;  // at Problem::q_offset (dq) and kv_offset (dk, dv)
};

// Exact gradients in fp64 for upstream gradient `dout` (at Problem::q_offset) and the inputs as
// stored (broadcast ones included), with the exact sigmoid 1 / (1 + e^-x) whatever
// problem.sigmoid says. Rows of padding are zero.
GradientSet<double> cpu_backward_reference(const Problem& problem, const HostInputs& inputs,
                                           const std::vector<double>& dout);

// Gradients in fp32 from the device tensors `args` describes (args.inputs and args.grad_out are
// read), at the element offsets of args.grad_q (`q_elements` of them) and args.grad_k /
// args.grad_v (`kv_elements`), in the current context on the default stream. The sigmoid is the
// one args.inputs.sigmoid selects, in the form the library documents (fast:
// 0.5 * tanh.approx(0.5 x) + 0.5; accurate: 1 / (1 + expf(-x))), with dS = dP * P * (1 - P).
// Stored rows past a sequence's length are zero; elements outside every row stay NaN.
GradientSet<float> gpu_backward_reference(const BackwardArgs& args, std::int64_t q_elements,
                                          std::int64_t kv_elements);

}  // namespace sigattn::test
