// Tile policy, the one owner of "which (KernelSpec, TileConfig) is legal, and which tile is the
// default": the named constraints (structural ones, true on every architecture, and those of a
// target's family, shared memory and register budgets), each family's search space and the
// heuristic default. The generator, the runtime, the cache and the tuner all ask here; the
// templates' static_asserts are the backstop.
#pragma once

#include <string>
#include <vector>

#include "generator/architecture.hpp"
#include "generator/kernel_spec.hpp"

namespace sigattn::policy {

// What the constraints know of an architecture: its name, compute capability and per-block
// budgets.
struct Target {
  std::string arch;        // "sm_80", "sm_90a", "sm_100a", "sm_120a", "compute_121" (PTX)
  int max_smem_optin = 0;  // bytes one CTA may use
  int max_registers_per_thread = 255;
  int registers_per_block = 64 * 1024;
  int cc_major = 0;  // of the architecture (for PTX: of the one it is written for)
};

// The limits of a listed architecture (generator/architecture.hpp): e.g. 163 KiB of shared memory
// per block on sm_80, 99 KiB on sm_86/89/120, 227 KiB on sm_90/100. Throws std::invalid_argument
// naming the listed ones for anything else.
Target target_for_arch(const std::string& arch);

// The target of a device that runs `device` (policy::arch_for_device) and lets a block opt into
// `device_max_smem_optin` bytes: the listed limits, and the device's own shared memory where it is
// smaller or where the arch is PTX for a GPU the list does not name.
Target target_for_device(const DeviceArch& device, int device_max_smem_optin);

// The kernel families a target runs, preferred first: sm90 then sm80 on sm_90a, sm80 elsewhere
// (wgmma exists on sm_90a only; mma.sync and cp.async on every listed architecture).
std::vector<gen::Family> families(const Target& target);

// A rule of the kernels themselves, whatever the architecture: what the templates' static_asserts
// also require. `check` returns empty when satisfied, else why not.
struct StructuralConstraint {
  const char* name;
  std::string (*check)(const gen::KernelSpec&, const gen::TileConfig&);
};

// A rule of running on a target: the family's architecture and the target's shared-memory and
// register budgets. Only asked of tiles that pass the structural constraints.
struct TargetConstraint {
  const char* name;
  std::string (*check)(const gen::KernelSpec&, const gen::TileConfig&, const Target&);
};

const std::vector<StructuralConstraint>& constraints();
const std::vector<TargetConstraint>& target_constraints();

// The first violated structural constraint as "name: why", or empty when the kernel can be built.
std::string structural_rejection(const gen::KernelSpec& spec, const gen::TileConfig& tile);

// The first violated constraint, structural ones first, as "name: why", or empty when the config
// is allowed on `target`.
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

// The most CTAs a decode call splits one (batch, kv head, row block)'s cache into.
inline constexpr int kMaxDecodeSplits = 1024;

// The split count of a decode call whose tile leaves it open (splits 0): enough CTAs to fill every
// SM twice, ceil(2 * sm_count / ctas_per_split) where ctas_per_split counts the (batch, kv head,
// row block) work units, but no more than the key tiles of the cache (key_tiles) or
// kMaxDecodeSplits, and at least 1. Sigmoid attention needs no normalizer, so the splits' partial
// outputs simply add.
int decode_splits(long long ctas_per_split, long long key_tiles, int sm_count);

// The split counts the tuner times for each decode tile besides 0 (the per-call choice above):
// powers of two up to this.
inline constexpr int kMaxTunedDecodeSplits = 64;

// What a decode call's tuning results are looked up by in place of the query length: its
// (batch, kv head, query row) units, batch * heads_kv * seqlen_q (at most 2^31 - 1), on which,
// with the cache capacity, the best split count depends.
int decode_lookup_units(long long batch, long long heads_kv, long long seqlen_q);

// Whether a backward call that allows atomics (deterministic = false) defaults to the one-pass
// split (atomic dQ) for `dkdv` on `target`, rather than to the two-kernel split.
bool one_pass_by_default(const gen::KernelSpec& dkdv, const Target& target);

// The specs `sigattn compile` builds for an arch: each dtype and layout, the common head dims,
// with and without masks; each with its candidate configs.
std::vector<gen::KernelSpec> default_specs();

}  // namespace sigattn::policy
