// Plain fp32 GPU kernels the tuner and the GPU tests share, in one NVRTC program that reads the
// library's FwdParams: the sigmoid-attention forward reference (one warp per query row, written
// from the semantics and sharing no code with the tuned kernels), random-normal input fill,
// bf16/fp16 widening for comparisons, the L2 flush between timed repetitions, and two probes that
// fault and hang for testing the tuner's fault handling. Also what any fp32 reference program
// (the GPU tests' backward one too) is built from: a shared prelude, compilation, loading, the
// kernel parameters and the one-warp-per-row launch.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <memory>
#include <sigattn/sigattn.hpp>
#include <string>
#include <string_view>

#include "generator/kernel_spec.hpp"
#include "runtime/compiler.hpp"

namespace sigattn {
struct FwdParams;  // sigattn/fwd_params.h, on the templates include path
}  // namespace sigattn

namespace sigattn::tune {

// A reference program is the embedded fwd_params.h, a prelude the reference kernels share
// (kWarpsPerBlock, kMaxDimsPerLane = 8 head-dim elements a lane, input_value(data, index, is_fp16)
// decoding bf16/fp16 bits, sigmoid(x, fast) in the two forms the library documents), then
// `kernels`; `name` is its name and name expression. Compiled once per process for each name and
// arch.
std::shared_ptr<const CompiledKernel> compile_reference_program(const std::string& name,
                                                                std::string_view kernels,
                                                                const std::string& arch);

// The program of ReferenceKernels compiled for `arch`, once per process.
std::shared_ptr<const CompiledKernel> reference_binary(const std::string& arch);

// The name of the forward reference kernel in reference_binary().
inline constexpr const char* kReferenceForwardKernel = "sigattn_reference_forward";

// Largest head dim the reference kernels handle (32 lanes x kMaxDimsPerLane elements).
inline constexpr int kReferenceMaxHeadDim = 256;

// Warps of a block of the reference kernels that give each warp one row (the prelude's
// kWarpsPerBlock).
inline constexpr int kReferenceWarpsPerBlock = 4;

// The FwdParams a reference kernel reads for `args`: the library's own, o = args.out.data.
FwdParams reference_params(const ForwardArgs& args);

// Launches a one-warp-per-row kernel over `rows` rows (blockIdx.x * kReferenceWarpsPerBlock +
// warp), `heads` (blockIdx.y) and `batch` (blockIdx.z), asynchronously on `stream`.
void launch_reference_rows(CUfunction function, int rows, int heads, int batch, void** args,
                           CUstream stream);

// A reference program compiled for the current device and loaded into the current context.
class ReferenceModule {
 public:
  ReferenceModule(const std::string& name, std::string_view kernels);
  ~ReferenceModule();
  ReferenceModule(const ReferenceModule&) = delete;
  ReferenceModule& operator=(const ReferenceModule&) = delete;

  CUfunction function(const char* name) const;

 private:
  CUmodule module_ = nullptr;
};

// The kernels loaded into the current context (of the current device's arch). Every launch is
// asynchronous on `stream`.
class ReferenceKernels {
 public:
  ReferenceKernels();
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
  ReferenceModule module_;
  CUfunction forward_ = nullptr;
  CUfunction fill_normal_ = nullptr;
  CUfunction widen_ = nullptr;
  CUfunction flush_ = nullptr;
  CUfunction fault_ = nullptr;
  CUfunction hang_ = nullptr;
};

}  // namespace sigattn::tune
