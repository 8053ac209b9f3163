// The GPU architectures sigattn compiles for: NVRTC's name of each, the compute capability it runs
// on and its per-block limits; and the architecture a device runs, chosen from its compute
// capability alone (PTX that the driver JIT-compiles on a GPU the list does not name). Plain data
// and pure functions: the tile policy, the runtime, the CLI and the tests all ask here.
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace sigattn::policy {

// One NVRTC target. The limits are those of the CUDA C++ Programming Guide's table of compute
// capabilities (the values of CCCL's cuda::arch_traits): the opt-in shared memory of a block is
// the SM's capacity less the 1 KiB the driver reserves per block; every listed architecture has
// 64 K registers per block and at most 255 per thread.
struct Architecture {
  std::string_view name;  // "sm_100a"
  int cc_major = 0;
  int cc_minor = 0;
  // The `a` form: CUBIN for exactly this compute capability, with the instructions only it has
  // (sm_90a: wgmma, setmaxnreg). A device runs the `a` form of its compute capability where
  // there is one, so a family that needs it can join later without new tuning keys.
  bool arch_specific = false;
  int max_smem_optin = 0;  // bytes of shared memory one block may opt into
  int max_registers_per_thread = 255;
  int registers_per_block = 64 * 1024;
};

// Every architecture sigattn compiles CUBIN for, oldest first.
std::span<const Architecture> architectures();

// Whether `arch` is a PTX target ("compute_121"): NVRTC emits PTX, which the driver JIT-compiles
// for the device it loads on.
bool is_ptx_target(std::string_view arch);

// The entry `arch` names: an "sm_XY" or "sm_XYa" of the list, or "compute_XY" (PTX) of a listed
// sm_XY, whose limits it takes. nullptr for anything else.
const Architecture* find_architecture(std::string_view arch);

// "sm_80, sm_86, …, sm_121a (or compute_XY of any of them for PTX)", for messages.
std::string architecture_names();

// What a device of a compute capability runs.
struct DeviceArch {
  // NVRTC's target: the listed architecture of the compute capability (its `a` form where there
  // is one), else "compute_XY" of the newest listed architecture at or below it.
  std::string arch;
  bool jit = false;  // PTX the driver JIT-compiles: the compute capability is not listed
  std::string note;  // when jit: what runs, and why
};

// Throws std::invalid_argument below compute capability 8.0 (no bf16 mma.sync, no cp.async).
DeviceArch arch_for_device(int cc_major, int cc_minor);

}  // namespace sigattn::policy
