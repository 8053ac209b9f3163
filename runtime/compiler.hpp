// NVRTC straight to CUBIN for one architecture, or to PTX for a compute_XY one. The log is read
// before the result is checked; a failure throws CompileError with the variant, arch, options and
// log. The ptxas report (registers, spills) is parsed from the log.
#pragma once

#include <string>
#include <vector>

#include "generator/generator.hpp"

namespace sigattn {

struct CompiledKernel {
  std::string variant_name;
  std::string arch;          // e.g. "sm_90a"
  std::string lowered_name;  // mangled kernel symbol
  // The CUBIN; for a compute_XY arch the PTX text with its NUL, which the driver JIT-compiles.
  std::vector<char> cubin;
  std::string log;
  int registers = 0;
  int spill_store_bytes = 0;
  int spill_load_bytes = 0;
  int stack_frame_bytes = 0;
  double compile_ms = 0.0;
  bool spills() const noexcept { return spill_store_bytes > 0 || spill_load_bytes > 0; }
};

// Whether `arch` is one sigattn compiles for: a listed sm_XY or sm_XYa, or compute_XY of a listed
// sm_XY (policy::find_architecture).
bool arch_supported(const std::string& arch);

CompiledKernel compile(const gen::GeneratedKernel& kernel, const std::string& arch);

// Compiles an arbitrary single-file program (used for reference kernels in tests and the tuner).
CompiledKernel compile_source(const std::string& name, const std::string& source,
                              const std::string& name_expression,
                              const std::vector<std::string>& options, const std::string& arch);

}  // namespace sigattn
