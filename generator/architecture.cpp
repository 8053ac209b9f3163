// The architecture list and the choice of architecture for a compute capability. Shared memory per
// block, opt-in: 8.0 and 8.7 have 164 KiB per SM, 8.6, 8.9 and 12.x 100 KiB, 9.0, 10.x and 11.0
// 228 KiB, each less the 1 KiB the driver reserves per block.
#include "generator/architecture.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <stdexcept>
#include <utility>

namespace sigattn::policy {
namespace {

constexpr int kKiB = 1024;

constexpr std::array<Architecture, 16> kArchitectures = {{
    {"sm_80", 8, 0, false, 163 * kKiB},    // A100
    {"sm_86", 8, 6, false, 99 * kKiB},     // RTX 30, A40, A10
    {"sm_87", 8, 7, false, 163 * kKiB},    // Jetson Orin
    {"sm_89", 8, 9, false, 99 * kKiB},     // RTX 40, L40S, L4
    {"sm_90", 9, 0, false, 227 * kKiB},    // H100, H200 (without wgmma)
    {"sm_90a", 9, 0, true, 227 * kKiB},    // H100, H200
    {"sm_100", 10, 0, false, 227 * kKiB},  // B200
    {"sm_100a", 10, 0, true, 227 * kKiB},
    {"sm_103", 10, 3, false, 227 * kKiB},  // B300
    {"sm_103a", 10, 3, true, 227 * kKiB},
    {"sm_110", 11, 0, false, 227 * kKiB},  // Jetson Thor
    {"sm_110a", 11, 0, true, 227 * kKiB},
    {"sm_120", 12, 0, false, 99 * kKiB},  // RTX 50, RTX PRO Blackwell
    {"sm_120a", 12, 0, true, 99 * kKiB},
    {"sm_121", 12, 1, false, 99 * kKiB},  // DGX Spark (GB10)
    {"sm_121a", 12, 1, true, 99 * kKiB},
}};

constexpr std::string_view kPtxPrefix = "compute_";

std::pair<int, int> capability(const Architecture& a) { return {a.cc_major, a.cc_minor}; }

}  // namespace

std::span<const Architecture> architectures() { return kArchitectures; }

bool is_ptx_target(std::string_view arch) { return arch.starts_with(kPtxPrefix); }

const Architecture* find_architecture(std::string_view arch) {
  const bool ptx = is_ptx_target(arch);
  const std::string name =
      ptx ? fmt::format("sm_{}", arch.substr(kPtxPrefix.size())) : std::string(arch);
  for (const Architecture& a : kArchitectures) {
    if (a.name == name && !(ptx && a.arch_specific)) return &a;
  }
  return nullptr;
}

std::string architecture_names() {
  std::string names;
  for (const Architecture& a : kArchitectures) {
    names += names.empty() ? std::string(a.name) : fmt::format(", {}", a.name);
  }
  return names + " (or compute_XY of any sm_XY for PTX)";
}

DeviceArch arch_for_device(int cc_major, int cc_minor) {
  if (cc_major < 8) {
    throw std::invalid_argument(fmt::format(
        "compute capability {}.{} is not supported: sigattn needs 8.0 (Ampere) or newer", cc_major,
        cc_minor));
  }
  const std::pair device{cc_major, cc_minor};
  const Architecture* exact = nullptr;
  const Architecture* below = nullptr;  // the newest portable entry at or below the device
  for (const Architecture& a : kArchitectures) {
    if (capability(a) == device && (exact == nullptr || a.arch_specific)) exact = &a;
    if (!a.arch_specific && capability(a) <= device &&
        (below == nullptr || capability(a) > capability(*below))) {
      below = &a;
    }
  }
  if (exact != nullptr) return {std::string(exact->name), false, {}};
  const Architecture& newest = kArchitectures.back();
  const std::string listed =
      device > capability(newest)
          ? fmt::format("is newer than every architecture sigattn lists (the newest is {}.{})",
                        newest.cc_major, newest.cc_minor)
          : std::string("is not one sigattn lists");
  DeviceArch chosen{fmt::format("compute_{}{}", below->cc_major, below->cc_minor), true, {}};
  chosen.note = fmt::format(
      "compute capability {}.{} {}: the portable sm80 family runs from {} PTX, which the CUDA "
      "driver JIT-compiles when a kernel first loads (slower first calls; not tested on this GPU)",
      cc_major, cc_minor, listed, chosen.arch);
  return chosen;
}

}  // namespace sigattn::policy
