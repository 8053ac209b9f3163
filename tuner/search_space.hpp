// The sm80 forward family's search space: each tunable parameter with its values, the named
// constraints that prune it before anything compiles, and the heuristic default config used when
// nothing better is known.
#pragma once

#include <string>
#include <vector>

#include "generator/kernel_spec.hpp"

namespace sigattn::tune {

struct Target {
  std::string arch;        // "sm_80", "sm_86", "sm_89", "sm_90a"
  int max_smem_optin = 0;  // bytes one CTA may use
};

// The opt-in shared-memory limit of an architecture (sm_80: 163 KiB; sm_86/89: 99 KiB;
// sm_90: 227 KiB).
Target target_for_arch(const std::string& arch);

struct Constraint {
  const char* name;
  // Empty when satisfied, else why not.
  std::string (*check)(const gen::KernelSpec&, const gen::TileConfig&, const Target&);
};

const std::vector<Constraint>& constraints();

// The first violated constraint's explanation, or empty when the config is allowed.
std::string rejection(const gen::KernelSpec& spec, const gen::TileConfig& tile,
                      const Target& target);

// Every allowed config of the parameter grid, in a fixed order.
std::vector<gen::TileConfig> candidates(const gen::KernelSpec& spec, const Target& target);

struct DefaultChoice {
  gen::TileConfig tile;
  std::string reason;
};

// The heuristic default: one pure function that says why it chooses what it chooses.
// atomic_dq = true asks for the one-pass backward split (dkdv specs only; the fast mode of a
// non-deterministic backward call): the same preferences with dQ added atomically. The default
// stays the deterministic two-kernel split.
DefaultChoice default_tile(const gen::KernelSpec& spec, const Target& target,
                           bool atomic_dq = false);

// Whether a backward call that allows atomics (deterministic = false) defaults to the one-pass
// split (atomic dQ) for `dkdv` on `target`, rather than to the two-kernel split.
bool one_pass_by_default(const gen::KernelSpec& dkdv, const Target& target);

// The specs `sigattn compile` builds for an arch: each dtype and layout, the common head dims,
// with and without masks; each with its candidate configs.
std::vector<gen::KernelSpec> default_specs();

}  // namespace sigattn::tune
