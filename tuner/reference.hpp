// Plain fp32 GPU kernels the tuner and the GPU tests share, in one NVRTC program that reads the
// library's FwdParams: the sigmoid-attention forward reference (one warp per query row, written
// from the semantics and sharing no code with the tuned kernels), random-normal input fill,
// bf16/fp16 widening for comparisons, the L2 flush between timed repetitions, and two probes that
// fault and hang for testing the tuner's fault handling.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <memory>
#include <sigattn/sigattn.hpp>
#include <string>

#include "generator/kernel_spec.hpp"
#include "runtime/compiler.hpp"

namespace sigattn::tune {

// The program compiled for `arch`, once per process.
std::shared_ptr<const CompiledKernel> reference_binary(const std::string& arch);

// The name of the forward reference kernel in reference_binary().
inline constexpr const char* kReferenceForwardKernel = "sigattn_reference_forward";

// Largest head dim the forward reference handles (32 lanes x 8 elements).
inline constexpr int kReferenceMaxHeadDim = 256;

// The kernels loaded into the current context (of the current device's arch). Every launch is
// asynchronous on `stream`.
class ReferenceKernels {
 public:
  ReferenceKernels();
  ~ReferenceKernels();
  ReferenceKernels(const ReferenceKernels&) = delete;
  ReferenceKernels& operator=(const ReferenceKernels&) = delete;

  // Normal(0, 1) values rounded to dtype into `count` 16-bit elements, reproducible from `seed`.
  void fill_normal(void* data, std::int64_t count, gen::DType dtype, std::uint64_t seed,
                   CUstream stream) const;
  // `count` bf16/fp16 elements to fp32.
  void widen(const void* data, float* out, std::int64_t count, gen::DType dtype,
             CUstream stream) const;
  // Writes all of `buffer`.
  void flush(void* buffer, std::size_t bytes, CUstream stream) const;
  // O in fp32 from the inputs `args` describes, written into `out` at args.out's element offsets.
  // Its sigmoid is the one args.sigmoid selects, in the form the library documents. Throws
  // std::invalid_argument for head_dim > kReferenceMaxHeadDim.
  void forward(const ForwardArgs& args, float* out, CUstream stream) const;
  // A write to an unmapped address: the next synchronization fails and the context is lost.
  void fault(CUstream stream) const;
  // Spins until *flag (device memory) becomes non-zero.
  void hang(const int* flag, CUstream stream) const;

 private:
  CUmodule module_ = nullptr;
  CUfunction forward_ = nullptr;
  CUfunction fill_normal_ = nullptr;
  CUfunction widen_ = nullptr;
  CUfunction flush_ = nullptr;
  CUfunction fault_ = nullptr;
  CUfunction hang_ = nullptr;
};

}  // namespace sigattn::tune
