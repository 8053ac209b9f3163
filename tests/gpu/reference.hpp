// The two references the forward kernels are checked against: the exact sigmoid-attention
// semantics in fp64 on the CPU (small problems), and a plain fp32 GPU kernel, one warp per query
// row, compiled with NVRTC and reading the very device inputs the library read (large problems).
#pragma once

#include <cstdint>
#include <memory>
#include <sigattn/sigattn.hpp>
#include <string>
#include <vector>

#include "problem.hpp"
#include "runtime/compiler.hpp"

namespace sigattn::test {

// O in fp64 at the output offsets of `problem` (zeros in padding rows) from the inputs as stored
// (broadcast ones included), with the exact sigmoid 1 / (1 + e^-x) whatever problem.sigmoid says.
std::vector<double> cpu_reference(const Problem& problem, const HostInputs& inputs);

// The reference kernel compiled for `arch`, once per process.
std::shared_ptr<const CompiledKernel> reference_kernel(const std::string& arch);

// O in fp32 from the device inputs `args` describes, at args.out's element offsets
// (`out_elements` of them), in the current context on the default stream. Its sigmoid is the
// one args.sigmoid selects, in the form the library documents: fast is
// 0.5 * tanh.approx(0.5 x) + 0.5, accurate is 1 / (1 + expf(-x)).
std::vector<float> gpu_reference(const ForwardArgs& args, std::int64_t out_elements);

}  // namespace sigattn::test
