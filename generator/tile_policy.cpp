// The tile policy: each family's search space and its constraints, named predicates checked
// before anything compiles (the structural ones also by the generator); the heuristic default
// walks a short preference list and reports why it took the config it took.
#include "generator/tile_policy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <stdexcept>

#include "generator/generator.hpp"
#include "sigattn/shared_storage.h"

namespace sigattn::policy {
namespace {

using gen::KernelSpec;
using gen::TileConfig;

// Parameter grids. Forward and dq: block_m query rows per CTA, block_n keys per main-loop step.
// dkdv: block_n keys per CTA, block_m query rows per step. decode: block_m (query, group head)
// rows per CTA, block_n cache keys per step shared out among the warps. warps per CTA; stages of
// the shared-memory pipeline.
struct Grid {
  std::vector<int> block_m, block_n, warps, stages;
};
const Grid& grid_for(gen::Direction direction) {
  static const Grid rows_split = {{64, 128}, {32, 64, 128}, {4, 8}, {2, 3}};
  static const Grid keys_split = {{16, 32, 64}, {64, 128}, {4, 8}, {2, 3}};
  static const Grid decode = {{16, 32, 64}, {32, 64, 128}, {2, 4, 8}, {2, 3, 4}};
  if (direction == gen::Direction::decode) return decode;
  return direction == gen::Direction::dkdv ? keys_split : rows_split;
}

// Structural constraints: the tiles each kernel is written for, whatever the architecture. The
// sm90 register rules are among them, since setmaxnreg fixes what a consumer warpgroup gets.

// The tile grid every kernel needs: warps the sm80 kernels split rows over evenly, whole m16/k16
// mma tiles, and a pipeline of 2 to 4 stages. The sm90 warp counts are wgmma_shape's.
std::string tile_shape(const KernelSpec&, const TileConfig& t) {
  if (t.family == gen::Family::sm80 && t.warps != 1 && t.warps != 2 && t.warps != 4 &&
      t.warps != 8) {
    return fmt::format("warps {} must be 1, 2, 4 or 8", t.warps);
  }
  if (t.block_m <= 0 || t.block_m % 16 != 0) {
    return fmt::format("block_m {} must be a positive multiple of 16", t.block_m);
  }
  if (t.block_n <= 0 || t.block_n % 16 != 0) {
    return fmt::format("block_n {} must be a positive multiple of 16", t.block_n);
  }
  if (t.stages < 2 || t.stages > 4) return fmt::format("stages {} must be 2, 3 or 4", t.stages);
  return {};
}

std::string supported_head_dim(const KernelSpec& s, const TileConfig&) {
  if (gen::head_dim_supported(s.head_dim)) return {};
  return fmt::format("head_dim {} is not supported: use a multiple of 8 from 8 to 256", s.head_dim);
}

// Padded and varlen sequences end inside tiles, so only the dense layout drops the bounds checks.
std::string x128_layout(const KernelSpec& s, const TileConfig&) {
  if (s.seqlen != gen::SeqLen::x128 || s.layout == gen::Layout::dense) return {};
  return fmt::format("x128 lengths apply to the dense layout only, not {}",
                     gen::to_string(s.layout));
}

std::string mma_rows(const KernelSpec& s, const TileConfig& t) {
  if (t.family == gen::Family::sm90) return {};
  if (s.direction == gen::Direction::decode) {
    // Each warp computes S for 16 keys of a step (one n16 pair of mma tiles): with 32, ptxas
    // spilled m16n64w2 at d=128 and d=256 (every mask, score_mod and the paged cache on).
    if (t.block_n == 16 * t.warps) return {};
    return fmt::format("block_n {} is not 16 keys x {} warps", t.block_n, t.warps);
  }
  const bool keys = s.direction == gen::Direction::dkdv;
  const int split = keys ? t.block_n : t.block_m;
  if (split % (16 * t.warps) == 0) return {};
  return fmt::format("{} {} is not a multiple of 16 rows x {} warps", keys ? "block_n" : "block_m",
                     split, t.warps);
}

std::string work_split(const KernelSpec& s, const TileConfig& t) {
  if (t.atomic_dq && s.direction != gen::Direction::dkdv) {
    return fmt::format("the atomic dQ split applies to dkdv kernels, not {}",
                       gen::to_string(s.direction));
  }
  if (t.splits != 0 && s.direction != gen::Direction::decode) {
    return fmt::format("the split count applies to decode kernels, not {}",
                       gen::to_string(s.direction));
  }
  if (t.splits < 0 || t.splits > kMaxDecodeSplits) {
    return fmt::format("splits {} is out of range [0, {}] (0: chosen per call)", t.splits,
                       kMaxDecodeSplits);
  }
  return {};
}

// The KV-cache layouts belong to the decode kernel: a paged cache, or a contiguous one (padded).
std::string cache_layout(const KernelSpec& s, const TileConfig&) {
  const bool decode = s.direction == gen::Direction::decode;
  if (decode && s.layout != gen::Layout::padded && s.layout != gen::Layout::paged) {
    return fmt::format("decode reads a contiguous (padded) or paged cache, not {}",
                       gen::to_string(s.layout));
  }
  if (!decode && s.layout == gen::Layout::paged) {
    return fmt::format("the paged layout is a KV cache, which only decode kernels read, not {}",
                       gen::to_string(s.direction));
  }
  return {};
}

// The decode kernel is written with mma.sync and cp.async, which every supported GPU runs.
std::string decode_family(const KernelSpec& s, const TileConfig& t) {
  if (s.direction != gen::Direction::decode || t.family == gen::Family::sm80) return {};
  return fmt::format("decode kernels are of family sm80 (sm_80 and later), not {}",
                     gen::to_string(t.family));
}

// The dynamic schedule belongs to the sm90 fwd, dq and dkdv kernels (the dkdv kernel is persistent
// only in that schedule).
std::string schedule_kernel(const KernelSpec& s, const TileConfig& t) {
  if (t.schedule == gen::Schedule::strided) return {};
  if (t.family == gen::Family::sm90 && s.direction != gen::Direction::decode) return {};
  return fmt::format(
      "the {} schedule applies to the sm90 fwd, dq and dkdv kernels, not {} of family {}",
      gen::to_string(t.schedule), gen::to_string(s.direction), gen::to_string(t.family));
}

std::string x128_divides(const KernelSpec& s, const TileConfig& t) {
  if (s.seqlen != gen::SeqLen::x128 || (128 % t.block_m == 0 && 128 % t.block_n == 0)) return {};
  return fmt::format("x128 lengths need block_m {} and block_n {} to divide 128", t.block_m,
                     t.block_n);
}

// The sm90 family: kernels with head dims in wgmma k-steps of 16 and at least one 64-element TMA
// box (128 bytes, the swizzle span) wide; the last box may be partial (d=80: one whole box and 16
// columns of the next, which TMA fills with zeros and no wgmma reads). Which tiles fit a head dim
// is sm90_registers' rule.
std::string sm90_kernel(const KernelSpec& s, const TileConfig& t) {
  if (t.family != gen::Family::sm90) return {};
  if (s.head_dim % 16 != 0 || s.head_dim < 64) {
    return fmt::format("family sm90 needs head_dim a multiple of 16 from 64 to 256, not {}",
                       s.head_dim);
  }
  return {};
}

// sm90 CTAs: a producer warpgroup plus one consumer warpgroup per 64 rows of wgmma's M, query
// rows in the forward (block_m, up to 3); in dK/dV two consumer warpgroups, of 64 keys each
// (block_n 128) or both on the same 64 keys, one per gradient (block_n 64, the gradient split of
// templates/sigattn/shared_storage.h); in dQ one or two of 64 rows each, or above head dim 128 the
// column split: two on the same 64 rows (block_m 64 on 12 warps), S in one and dP in the other,
// dQ's columns split between them. The other block is the N of S = Q K^T (forward: at most
// 256; the column split: 32 or 64) or of S^T = K Q^T (dK/dV: 64 or 128).
std::string wgmma_shape(const KernelSpec& s, const TileConfig& t) {
  if (t.family != gen::Family::sm90) return {};
  if (s.direction == gen::Direction::dkdv) {
    if (t.block_n != 128 && t.block_n != 64) {
      return fmt::format(
          "block_n {} is not 128 (two 64-key warpgroups taking turns) or 64 (two warpgroups on "
          "the same keys, one per gradient)",
          t.block_n);
    }
    if (t.warps != 12) {
      return fmt::format("warps {} is not 12 (a producer warpgroup plus 2 consumer warpgroups)",
                         t.warps);
    }
    if (t.block_m != 64 && t.block_m != 128) {
      return fmt::format("block_m {} is not 64 or 128 query rows per step", t.block_m);
    }
    if (t.atomic_dq && dkdv_sm90_gradient_split(t.block_n)) {
      return "the one-pass split needs block_n 128 (its dQ reads both warpgroups' dS^T keys)";
    }
    if (t.atomic_dq && (t.block_m > t.block_n || s.head_dim * t.block_m / t.block_n % 64 != 0)) {
      return fmt::format(
          "the one-pass split needs 64 dQ rows and whole 64-column blocks per warpgroup, "
          "which block_m {} and block_n {} at head_dim {} do not give",
          t.block_m, t.block_n, s.head_dim);
    }
    return {};
  }
  if (s.direction == gen::Direction::dq && t.block_m != 64 && t.block_m != 128) {
    return fmt::format("block_m {} is not 64 or 128 (one or two 64-row dQ warpgroups)", t.block_m);
  }
  if (s.direction == gen::Direction::dq && dq_sm90_column_split(t.block_m, t.warps)) {
    if (s.head_dim <= 128) {
      return fmt::format(
          "the column split (block_m 64 on 12 warps) needs head_dim above 128 (a 64-column block "
          "of dQ or more per warpgroup beyond the first two), not {}",
          s.head_dim);
    }
    if (t.block_n != 32 && t.block_n != 64) {
      return fmt::format("the column split's block_n {} is not 32 or 64", t.block_n);
    }
    return {};
  }
  if (t.block_m != 64 && t.block_m != 128 && t.block_m != 192) {
    return fmt::format("block_m {} is not 64, 128 or 192 (one to three 64-row warpgroups)",
                       t.block_m);
  }
  if (t.warps != 4 + t.block_m / 16) {
    return fmt::format("warps {} is not {} (a producer warpgroup plus {} consumer warpgroups)",
                       t.warps, 4 + t.block_m / 16, t.block_m / 64);
  }
  if (t.block_n > 256) return fmt::format("block_n {} exceeds wgmma's N of 256", t.block_n);
  return {};
}

// Registers per consumer thread after setmaxnreg (templates/sigattn/*_sm90.cuh): forward, 232 for
// one or two consumer warpgroups and 152 for three up to head_dim 128, 240 and 160 above (the
// producer keeps 40 or 24); dK/dV, 240; dQ, 232. Forward: the O (head_dim / 2) and S (block_n / 2)
// fp32 accumulators and the bf16 P fragments (block_n / 4) must leave 64 for addresses and masks:
// ptxas spilled d=256 m128n64w12 with 176 of 232 (every mask, score_mod, varlen) and not with 240.
// dK/dV: dK and dV (head_dim / 2 each) and S^T and dP^T (block_m / 2 each) at most 192, which
// leaves 48 for the P^T and dS^T fragments, the dQ part's accumulators and addresses; in the
// gradient split (block_n 64) one gradient and one score tile, head_dim / 2 + block_m / 2, at most
// 192 likewise. dQ: dQ (head_dim / 2), S and dP (block_n / 2 each) and the dS fragments
// (block_n / 4) must leave 64, and above head dim 128 the measured limits below; in the column
// split each warpgroup's part of that (no tile of it spilled at d=144 to 256 with every mask,
// score_mod and the accurate sigmoid).
std::string sm90_registers(const KernelSpec& s, const TileConfig& t) {
  if (t.family != gen::Family::sm90) return {};
  if (s.direction == gen::Direction::dkdv) {
    if (dkdv_sm90_gradient_split(t.block_n)) {
      if (s.head_dim / 2 + t.block_m / 2 <= 192) return {};
      return fmt::format("dK or dV and S^T or dP^T take {} registers per thread, above 192",
                         s.head_dim / 2 + t.block_m / 2);
    }
    if (s.head_dim + t.block_m <= 192) return {};
    return fmt::format("dK, dV, S^T and dP^T take {} registers per thread, above 192",
                       s.head_dim + t.block_m);
  }
  if (s.direction == gen::Direction::dq && dq_sm90_column_split(t.block_m, t.warps)) {
    // The first warpgroup's columns and S; the second's columns, dP and the dS fragments.
    const int left = dq_sm90_left_columns(s.head_dim);
    const int needed =
        std::max(left / 2 + t.block_n / 2, (s.head_dim - left) / 2 + t.block_n / 2 + t.block_n / 4);
    if (needed + 64 <= 232) return {};
    return fmt::format(
        "a column split warpgroup holds {} registers per thread, leaving less than 64 of 232",
        needed);
  }
  if (s.direction == gen::Direction::dq) {
    const int needed = s.head_dim / 2 + t.block_n + t.block_n / 4;
    if (needed + 64 > 232) {
      return fmt::format(
          "dQ, S, dP and the dS fragments take {} registers per thread, leaving less than 64 of "
          "232",
          needed);
    }
    // Above head dim 128 ptxas spills before that count where masks, score_mod and the accurate
    // sigmoid add their state: 64-key steps at d=144 (16 bytes, padded causal with score_mod;
    // 44 at d=160), 32-key steps above d=192 (d=208 16 to 24 bytes, d=256 up to 228, with one
    // consumer warpgroup and with two, and with 256 registers for one).
    const int widest = t.block_n > 32 ? 128 : 192;
    if (s.head_dim <= widest) return {};
    return fmt::format("ptxas spills dQ above head_dim {} in {}-key steps", widest, t.block_n);
  }
  const int consumers = t.block_m / 64;
  const bool wide = s.head_dim > 128;
  const int available = consumers == 3 ? (wide ? 160 : 152) : (wide ? 240 : 232);
  if (consumers == 1 && t.block_n > 64) {
    return fmt::format("one consumer warpgroup with {}-key steps: ptxas spilled m64n128w8 at d=64",
                       t.block_n);
  }
  const int needed = s.head_dim / 2 + t.block_n / 2 + t.block_n / 4;
  if (needed + 64 <= available) return {};
  return fmt::format(
      "{} accumulator and P registers per thread leave less than 64 of the {} a "
      "consumer warpgroup of {} gets",
      needed, available, gen::to_string(t));
}

// Target constraints: the family's architecture and the target's shared memory; and the sm80
// accumulator budget, which prunes the search rather than the kernels: beyond it ptxas spills,
// and the kernel still builds and runs, slower.

bool runs(const Target& target, gen::Family family) {
  const std::vector<gen::Family> runnable = families(target);
  return std::find(runnable.begin(), runnable.end(), family) != runnable.end();
}

std::string family_arch(const KernelSpec&, const TileConfig& t, const Target& target) {
  if (runs(target, t.family)) return {};
  return fmt::format("family {} needs sm_90a (wgmma, TMA), not {}", gen::to_string(t.family),
                     target.arch);
}

std::string shared_memory(const KernelSpec& s, const TileConfig& t, const Target& target) {
  int bytes = gen::smem_bytes(s, t);
  if (bytes <= target.max_smem_optin) return {};
  return fmt::format("needs {} bytes of shared memory, {} allows {}", bytes, target.arch,
                     target.max_smem_optin);
}

// Registers per thread ptxas may give an sm80 kernel: __launch_bounds__(threads, 1) lets one CTA
// take the block's register file, up to the per-thread limit (255 wherever 8 warps share 64 K).
int register_cap(const TileConfig& t, const Target& target) {
  return std::min(target.max_registers_per_thread, target.registers_per_block / (32 * t.warps));
}

// Of those, the registers that fragments, addresses and masks need besides the fp32 accumulators
// (O, S and the like): with more accumulators than 255 less these, ptxas spilled m128n64w4 at
// d=128 and m128n128w4 at d=40/64.
constexpr int kRegistersBesideAccumulators = 95;

// fp32 accumulators per thread of each kernel.
int accumulators(const KernelSpec& s, const TileConfig& t) {
  switch (s.direction) {
    case gen::Direction::decode: {
      // S of the warp's keys counts twice (its sigmoid, masks and packing keep as many values
      // live), then the warp's n8 tiles of O, for every m16 tile of rows.
      const int o_tiles = (s.head_dim / 8 + t.warps - 1) / t.warps;
      return t.block_m / 16 * (t.block_n / t.warps + o_tiles * 4);
    }
    case gen::Direction::forward:  // O and S
      return t.block_m / (16 * t.warps) * (s.head_dim + t.block_n) / 2;
    case gen::Direction::dq: {  // dQ (one head-dim slice of at most 128), S and dP
      const int slices = (s.head_dim + 127) / 128;
      const int slice_width = ((s.head_dim + 15) / 16 + slices - 1) / slices * 16;
      return t.block_m / (16 * t.warps) * (slice_width / 2 + t.block_n);
    }
    case gen::Direction::dkdv: {  // dK and dV (one head-dim slice of at most 128), S and dP
      const int slices = (s.head_dim + 127) / 128;
      const int slice_width = ((s.head_dim + 15) / 16 + slices - 1) / slices * 16;
      const int key_tiles = t.block_n / (16 * t.warps);
      const int two_kernel = key_tiles * (slice_width + t.block_m);
      if (!t.atomic_dq) return two_kernel;
      // The one-pass split adds this warp's part of the step's dQ tile (block_m x slice, the
      // query m16 tiles split over warps first, column pairs round-robin over the rest; see
      // templates/sigattn/bwd_atomic_dq_sm80.cuh).
      const int q_tiles = t.block_m / 16;
      int row_warps = t.warps;
      while (q_tiles % row_warps != 0) row_warps /= 2;
      const int col_warps = t.warps / row_warps;
      return two_kernel +
             q_tiles / row_warps * ((slice_width / 16 + col_warps - 1) / col_warps) * 8;
    }
  }
  return 0;
}

// The backward kernels at head dims above 128 keep the slice offsets live: ptxas spilled dkdv
// d192 m64n128w8 at exactly the forward's budget, so they get a smaller one.
// The one-pass dkdv kernel's dQ accumulators are live only once S and dP are packed, so they
// cost less than their count: ptxas kept dkdv d128 m32n128w8 (176 counted) without spills, and
// spilled d96 m64n128w8 (184) and d136 m64n128w8 (168, wide).
// Blackwell's ptxas (compute capability 10 and up) keeps more registers than sm_80's beside the
// accumulators of the dK/dV kernel on the varlen layout. Its register use there follows the
// count less closely, so two measured limits, on sm_100a and sm_120a: at most 144 accumulators
// at any head dim (it spilled 4 to 24 bytes of d128 m32n64w4, 160 counted, 254-255 registers
// where sm_80 takes 246, and with both masks and score_mod of d128 m32n128w8), and above d = 128
// at most 32 queries per step (it spilled d160 m64n64w4 and m64n128w8, 144 counted, with both
// masks and score_mod; d256 m32n64w4, 160 counted, kept 252 registers).
bool blackwell_varlen_dkdv(const KernelSpec& s, const Target& target) {
  return target.cc_major >= 10 && s.direction == gen::Direction::dkdv &&
         s.layout == gen::Layout::varlen;
}

// Decode, counted as above: ptxas spilled m64n64w2 at d=64 (192) and used 240 to 255 registers
// from 128 to 160 (m64n32w2 at d=64, m32n32w2 at d=256); 112 of 255 leaves a margin.
constexpr int kDecodeRegistersBesideAccumulators = 143;

int accumulator_budget(const KernelSpec& s, const TileConfig& t, const Target& target) {
  if (s.direction == gen::Direction::decode) {
    return register_cap(t, target) - kDecodeRegistersBesideAccumulators;
  }
  const bool wide_backward = s.direction != gen::Direction::forward && s.head_dim > 128;
  const int budget = register_cap(t, target) - kRegistersBesideAccumulators;
  return (wide_backward || blackwell_varlen_dkdv(s, target) ? budget - 16 : budget) +
         (t.atomic_dq ? 16 : 0);
}

std::string register_budget(const KernelSpec& s, const TileConfig& t, const Target& target) {
  if (t.family == gen::Family::sm90) return {};
  if (blackwell_varlen_dkdv(s, target) && s.head_dim > 128 && t.block_m > 32) {
    return fmt::format("{}-query steps of the varlen dK/dV kernel above d=128 spill on {}",
                       t.block_m, target.arch);
  }
  const int count = accumulators(s, t);
  const int budget = accumulator_budget(s, t, target);
  if (count <= budget) return {};
  return fmt::format("{} fp32 accumulators per thread exceed the budget of {}", count, budget);
}

// The schedule of the persistent sm90 forward and dq kernels when no measurement says otherwise.
// bench/schedule_model.py (132 CTAs; a tile costs its K/V steps plus one for fill and epilogue)
// leaves the mean CTA's work at 0.77 to 0.86 of the busiest one's in the strided schedule on
// heavy-tailed packed batches (it also deals out the empty row blocks of short sequences) and at
// 0.84 to 0.93 on causal L = 2048 to 8192, against 0.975 to 0.996 in the dynamic schedule, which
// hands out only row blocks with valid rows, each sequence's longest first, to whichever CTA is
// free. On dense unmasked shapes every tile costs the same and both are bound alike by the last
// partial round (0.97): strided stays there, without the counter's atomics and keeping the
// tunings measured with it.
gen::Schedule default_schedule(const KernelSpec& spec) {
  const bool uniform = spec.layout == gen::Layout::dense && !spec.causal && !spec.window;
  return uniform ? gen::Schedule::strided : gen::Schedule::dynamic;
}

std::string schedule_reason(const KernelSpec& spec) {
  return default_schedule(spec) == gen::Schedule::dynamic
             ? ", dynamic schedule (valid row blocks only, longest first)"
             : "";
}

}  // namespace

Target target_for_arch(const std::string& arch) {
  const Architecture* listed = find_architecture(arch);
  if (listed == nullptr) {
    throw std::invalid_argument(
        fmt::format("unknown architecture '{}': expected one of {}", arch, architecture_names()));
  }
  return {arch, listed->max_smem_optin, listed->max_registers_per_thread,
          listed->registers_per_block, listed->cc_major};
}

Target target_for_device(const DeviceArch& device, int device_max_smem_optin) {
  Target target = target_for_arch(device.arch);
  target.max_smem_optin =
      device.jit ? device_max_smem_optin : std::min(target.max_smem_optin, device_max_smem_optin);
  return target;
}

std::vector<gen::Family> families(const Target& target) {
  if (target.arch == "sm_90a") return {gen::Family::sm90, gen::Family::sm80};
  return {gen::Family::sm80};
}

const std::vector<StructuralConstraint>& constraints() {
  // tile_shape first: the others divide by the warps and step in whole mma tiles.
  static const std::vector<StructuralConstraint> all = {
      {"tile_shape", tile_shape},     {"head_dim", supported_head_dim},
      {"x128_layout", x128_layout},   {"work_split", work_split},
      {"cache_layout", cache_layout}, {"decode_family", decode_family},
      {"schedule", schedule_kernel},  {"mma_rows", mma_rows},
      {"x128_divides", x128_divides}, {"sm90_kernel", sm90_kernel},
      {"wgmma_shape", wgmma_shape},   {"sm90_registers", sm90_registers},
  };
  return all;
}

const std::vector<TargetConstraint>& target_constraints() {
  static const std::vector<TargetConstraint> all = {
      {"family_arch", family_arch},
      {"shared_memory", shared_memory},
      {"register_budget", register_budget},
  };
  return all;
}

std::string structural_rejection(const KernelSpec& spec, const TileConfig& tile) {
  for (const auto& c : constraints()) {
    std::string why = c.check(spec, tile);
    if (!why.empty()) return fmt::format("{}: {}", c.name, why);
  }
  return {};
}

std::string rejection(const KernelSpec& spec, const TileConfig& tile, const Target& target) {
  if (std::string why = structural_rejection(spec, tile); !why.empty()) return why;
  for (const auto& c : target_constraints()) {
    std::string why = c.check(spec, tile, target);
    if (!why.empty()) return fmt::format("{}: {}", c.name, why);
  }
  return {};
}

std::vector<TileConfig> candidates(const KernelSpec& spec, const Target& target) {
  std::vector<TileConfig> out;
  const Grid& grid = grid_for(spec.direction);
  // dkdv: every two-kernel tile, then every one-pass (atomic dQ) tile.
  for (bool atomic_dq : {false, true}) {
    if (atomic_dq && spec.direction != gen::Direction::dkdv) break;
    for (int m : grid.block_m) {
      for (int n : grid.block_n) {
        for (int w : grid.warps) {
          for (int s : grid.stages) {
            TileConfig tile{m, n, w, s, gen::Family::sm80, atomic_dq};
            if (rejection(spec, tile, target).empty()) out.push_back(tile);
          }
        }
      }
    }
  }
  // The Hopper family after the portable tiles: 64-row consumer warpgroups plus the producer
  // warpgroup. Forward: 1 to 3 of 64 query rows, 64 or 128 keys per step. dK/dV: 2 of 64 keys,
  // 64 or 128 query rows per step, both work splits. The persistent forward and dq: every tile in
  // both schedules.
  constexpr gen::Schedule kSchedules[] = {gen::Schedule::strided, gen::Schedule::dynamic};
  // Above head dim 192 also 32-key steps in 3 and 4 stages: 64-key steps leave shared memory for
  // only two, and a consumer holds two (S of tile j + 1, PV of tile j), so with two no load runs
  // ahead. (48-key steps would fit three stages too, but ptxas spilled d=256 m128n48w12 in the
  // dynamic schedule with a window and score_mod.)
  if (spec.direction == gen::Direction::forward && runs(target, gen::Family::sm90)) {
    const std::vector<int> steps =
        spec.head_dim > 192 ? std::vector<int>{64, 128, 32} : std::vector<int>{64, 128};
    for (gen::Schedule schedule : kSchedules) {
      for (int m : {64, 128, 192}) {
        for (int n : steps) {
          for (int s : {2, 3, 4}) {
            if (s == 4 && n != 32) continue;
            TileConfig tile{m, n, 4 + m / 16, s, gen::Family::sm90};
            tile.schedule = schedule;
            if (rejection(spec, tile, target).empty()) out.push_back(tile);
          }
        }
      }
    }
  }
  // dQ: 64-key steps up to head dim 128, 32-key steps from 144 to 192 (the only ones that fit
  // the registers there; up to 128, 64-key steps fit, and wgmma's N of 64 reads the Q and dO
  // operands from shared memory half as often per key as an N of 32). Above 128 also the column
  // split (two warpgroups on 64 rows, 12 warps), in 64- and 32-key steps.
  if (spec.direction == gen::Direction::dq && runs(target, gen::Family::sm90)) {
    for (gen::Schedule schedule : kSchedules) {
      for (int n : {64, 32}) {
        if ((n == 32) != (spec.head_dim > 128)) continue;
        for (int m : {64, 128}) {
          for (int s : {2, 3}) {
            TileConfig tile{m, n, 4 + m / 16, s, gen::Family::sm90};
            tile.schedule = schedule;
            if (rejection(spec, tile, target).empty()) out.push_back(tile);
          }
        }
      }
      for (int n : {64, 32}) {
        for (int s : {2, 3}) {
          TileConfig tile{64, n, 12, s, gen::Family::sm90};
          tile.schedule = schedule;
          if (rejection(spec, tile, target).empty()) out.push_back(tile);
        }
      }
    }
  }
  // dK/dV: two warpgroups of 64 keys in both work splits, then two warpgroups on the same 64
  // keys, one per gradient; one CTA per key block, then persistent (the dynamic schedule).
  if (spec.direction == gen::Direction::dkdv && runs(target, gen::Family::sm90)) {
    for (gen::Schedule schedule : kSchedules) {
      for (int n : {128, 64}) {
        for (bool atomic_dq : {false, true}) {
          for (int m : {64, 128}) {
            for (int s : {2, 3}) {
              TileConfig tile{m, n, 12, s, gen::Family::sm90, atomic_dq};
              tile.schedule = schedule;
              if (rejection(spec, tile, target).empty()) out.push_back(tile);
            }
          }
        }
      }
    }
  }
  // Decode: each tile with the split count left to each call, then with fixed counts (the same
  // program: the count is a launch parameter).
  if (spec.direction == gen::Direction::decode) {
    const std::size_t open_tiles = out.size();
    for (int splits = 1; splits <= kMaxTunedDecodeSplits; splits *= 2) {
      for (std::size_t i = 0; i < open_tiles; ++i) {
        TileConfig tile = out[i];
        tile.splits = splits;
        out.push_back(tile);
      }
    }
  }
  return out;
}

int decode_splits(long long ctas_per_split, long long key_tiles, int sm_count) {
  const long long wanted = (2LL * sm_count + ctas_per_split - 1) / std::max(1LL, ctas_per_split);
  const long long bound = std::min<long long>(key_tiles, kMaxDecodeSplits);
  return static_cast<int>(std::max(1LL, std::min(wanted, bound)));
}

int decode_lookup_units(long long batch, long long heads_kv, long long seqlen_q) {
  const long long units = std::max(1LL, batch) * std::max(1LL, heads_kv) * std::max(1LL, seqlen_q);
  return static_cast<int>(std::min<long long>(units, std::numeric_limits<std::int32_t>::max()));
}

bool one_pass_by_default(const KernelSpec& dkdv, const Target& target) {
  // On sm_90a at d=128 the Hopper dQ kernel makes the two-kernel split the faster one at every
  // length (H200, bf16: 417-443 TFLOPS against 378-403 for L = 512..16384): the one-pass dK/dV
  // kernel's dQ turn waits for both warpgroups' dS^T and adds dQ with atomics. At d=64 the two
  // are level (the one-pass 5 % ahead at L = 4096). At the other head dims of the Hopper
  // backward its one-pass kernel has no tile (whole 64-column dQ parts per warpgroup need d=128),
  // and the portable family's one-pass kernel would be the slower default: the portable backward
  // ran d=96 at 200 TFLOPS on an H200, where the d=128 Hopper split runs 455.
  if (!runs(target, gen::Family::sm90) || dkdv.head_dim == 64) return true;
  return default_tile(dkdv, target).tile.family != gen::Family::sm90;
}

DefaultChoice default_tile(const KernelSpec& spec, const Target& target, bool atomic_dq) {
  // Preferences, best first, by head dim. Small heads take 128 query rows on 4 warps (two m16
  // tiles per warp), which halves K/V shared-memory reads per query row against one tile per
  // warp. From d=72 on, two m-tiles' O accumulators (head_dim floats) plus S crowd the 255
  // registers (ptxas spilled m128n64w4 at d=128 with every mask on), so 8 warps take one m-tile
  // each. Smaller K/V steps come next when shared memory is short (99 KiB on sm_86/89/120/121).
  struct Preference {
    TileConfig tile;
    const char* why;
  };
  static const std::vector<Preference> small_heads = {
      {{128, 64, 4, 2}, "d<=64: 128 query rows on 4 warps (two m16 tiles each), 64-key steps"},
      {{128, 32, 4, 2}, "d<=64: 128 query rows on 4 warps, 32-key steps (less shared memory)"},
      {{64, 32, 4, 2}, "d<=64: 64 query rows on 4 warps, 32-key steps (least shared memory)"},
  };
  static const std::vector<Preference> large_heads = {
      {{128, 64, 8, 2}, "d>64: 128 query rows on 8 warps (one m16 tile each), 64-key steps"},
      {{128, 32, 8, 2}, "d>64: 128 query rows on 8 warps, 32-key steps (fewer S registers)"},
      {{64, 32, 4, 2}, "d>64: 64 query rows on 4 warps, 32-key steps (least shared memory)"},
  };
  // dQ holds S and dP besides its accumulator: one m-tile per warp throughout.
  static const std::vector<Preference> dq = {
      {{128, 64, 8, 2}, "dq: 128 query rows on 8 warps (one m16 tile each), 64-key steps"},
      {{128, 32, 8, 2}, "dq: 128 query rows on 8 warps, 32-key steps (fewer S/dP registers)"},
      {{64, 32, 4, 2}, "dq: 64 query rows on 4 warps, 32-key steps (least shared memory)"},
  };
  // dK/dV hold two accumulators of a head-dim slice (at most 128 wide) plus S and dP.
  static const std::vector<Preference> dkdv = {
      {{64, 128, 8, 2}, "dkdv: 128 keys on 8 warps (one m16 tile each), 64-query steps"},
      {{32, 128, 8, 2}, "dkdv: 128 keys on 8 warps, 32-query steps (fewer S/dP registers)"},
      {{32, 64, 4, 2}, "dkdv: 64 keys on 4 warps, 32-query steps (less shared memory)"},
      {{16, 64, 4, 2}, "dkdv: 64 keys on 4 warps, 16-query steps (least shared memory)"},
  };
  // Hopper (sm_90a), forward, head dims the sm90_kernel constraint allows: the wgmma/TMA family.
  // Two consumer warpgroups share each K/V tile (half the shared-memory traffic per row of one),
  // 128-key steps while the O, S and P registers fit (d <= 128), else 64-key steps. Three stages
  // first: a consumer holds two (QK^T of tile j+1 and PV of tile j in flight), so only the third
  // lets TMA run ahead (measured on an H200, d=128 L=4096: 0.83 ms against 1.09 ms with two).
  static const std::vector<Preference> hopper = {
      {{128, 128, 12, 3, gen::Family::sm90},
       "sm_90a: wgmma/TMA family, 2 consumer warpgroups x 64 rows, 128-key steps, 3 stages"},
      {{128, 128, 12, 2, gen::Family::sm90},
       "sm_90a: wgmma/TMA family, 2 consumer warpgroups x 64 rows, 128-key steps, 2 stages "
       "(less shared memory)"},
      {{128, 64, 12, 3, gen::Family::sm90},
       "sm_90a: wgmma/TMA family, 2 consumer warpgroups x 64 rows, 64-key steps, 3 stages"},
      {{128, 64, 12, 2, gen::Family::sm90},
       "sm_90a: wgmma/TMA family, 2 consumer warpgroups x 64 rows, 64-key steps (fewer "
       "registers, less shared memory)"},
      {{64, 64, 8, 2, gen::Family::sm90},
       "sm_90a: wgmma/TMA family, 1 consumer warpgroup x 64 rows (240 registers for wide "
       "heads), 64-key steps"},
  };
  // Hopper dK/dV at head dims 64 to 128: two consumer warpgroups share each Q/dO tile. 128-query
  // steps where dK, dV, S^T and dP^T fit the registers (d=64): the S^T and dP^T wgmmas then read
  // each K/V operand once per 128 queries, and the one-pass split needs them there for whole
  // 64-column dQ parts. 64-query steps otherwise (d=80 to 128): head dims 80, 96 and 112 are
  // stored as two 64-column blocks like 128, so they take its shared memory and its tile, the
  // one tuned best at d=128 (data/h200.json). Above d=128 dK and dV of 64 keys no longer fit one
  // warpgroup's registers: two warpgroups share 64 keys, one accumulating dV and one dK
  // (head_dim / 2 registers each; FlashAttention-3 likewise spreads a key block's dK and dV over
  // more warpgroups at d=192 and 256), 64-query steps, three stages where they fit (d <= 192: a
  // consumer holds two, the third lets TMA run ahead), else two (from d=208 on, Q and dO tiles
  // of 64 KiB per stage).
  static const std::vector<Preference> hopper_dkdv = {
      {{128, 128, 12, 2, gen::Family::sm90},
       "sm_90a: wgmma/TMA dK/dV, 2 consumer warpgroups x 64 keys, 128-query steps"},
      {{64, 128, 12, 2, gen::Family::sm90},
       "sm_90a: wgmma/TMA dK/dV, 2 consumer warpgroups x 64 keys, 64-query steps"},
      {{64, 64, 12, 3, gen::Family::sm90},
       "sm_90a: wgmma/TMA dK/dV, 2 consumer warpgroups on 64 keys (dV in one, dK in the other), "
       "64-query steps, 3 stages"},
      {{64, 64, 12, 2, gen::Family::sm90},
       "sm_90a: wgmma/TMA dK/dV, 2 consumer warpgroups on 64 keys (dV in one, dK in the other), "
       "64-query steps, 2 stages (less shared memory)"},
  };
  // Hopper dQ at head dims 64 to 128: two consumer warpgroups share each K/V tile, 64-key steps
  // (S, dP and the dS fragments beside dQ fit 232 registers up to block_n 64 at d=128), three
  // stages so that TMA runs ahead of the two a consumer holds. d=80 to 112 take d=128's tile
  // for the reason dK/dV do. Above d=128, S, dP and the dS fragments of 64 keys beside dQ
  // exceed the registers: 32-key steps up to d=192; above, the portable family's dQ kernel
  // (sm90_registers). The column split (both consumer warpgroups on the same 64 rows, each
  // holding part of dQ's columns) fits there, but is a tuner candidate only until a GPU has run
  // it against the reference.
  static const std::vector<Preference> hopper_dq = {
      {{128, 64, 12, 3, gen::Family::sm90},
       "sm_90a: wgmma/TMA dQ, 2 consumer warpgroups x 64 rows, 64-key steps, 3 stages"},
      {{128, 64, 12, 2, gen::Family::sm90},
       "sm_90a: wgmma/TMA dQ, 2 consumer warpgroups x 64 rows, 64-key steps, 2 stages"},
      {{128, 32, 12, 3, gen::Family::sm90},
       "sm_90a: wgmma/TMA dQ, 2 consumer warpgroups x 64 rows, 32-key steps (fewer S and dP "
       "registers), 3 stages"},
      {{128, 32, 12, 2, gen::Family::sm90},
       "sm_90a: wgmma/TMA dQ, 2 consumer warpgroups x 64 rows, 32-key steps, 2 stages"},
  };
  // Decode reads every K/V tile once for all rows of a GQA group (heads_q / heads_kv query heads
  // times the query rows), 16 of them for decode steps up to GQA 16:1. The kernel is bound by HBM,
  // so the tile's job is bytes in flight: 64-key steps of 16 keys per warp and three stages keep
  // two tiles loading while one is used, and two such CTAs fit an SM's shared memory at d=128.
  // The split count is chosen per call (decode_splits).
  static const std::vector<Preference> decode = {
      {{16, 64, 4, 3}, "decode: 16 rows, 64-key steps on 4 warps (16 keys each), 3 stages"},
      {{16, 64, 4, 2}, "decode: 16 rows, 64-key steps on 4 warps, 2 stages (less shared memory)"},
      {{16, 32, 2, 2}, "decode: 16 rows, 32-key steps on 2 warps, 2 stages (least shared memory)"},
  };
  if (spec.direction == gen::Direction::forward && runs(target, gen::Family::sm90)) {
    for (const auto& p : hopper) {
      TileConfig tile = p.tile;
      tile.schedule = default_schedule(spec);
      if (rejection(spec, tile, target).empty()) {
        return {tile, fmt::format("heuristic for {} on {}: {}{}", gen::to_string(spec), target.arch,
                                  p.why, schedule_reason(spec))};
      }
    }
  }
  if (spec.direction == gen::Direction::dq && runs(target, gen::Family::sm90)) {
    for (const auto& p : hopper_dq) {
      TileConfig tile = p.tile;
      tile.atomic_dq = atomic_dq;  // rejected: the atomic dQ split is a dK/dV one
      tile.schedule = default_schedule(spec);
      if (rejection(spec, tile, target).empty()) {
        return {tile, fmt::format("heuristic for {} on {}: {}{}", gen::to_string(spec), target.arch,
                                  p.why, schedule_reason(spec))};
      }
    }
  }
  if (spec.direction == gen::Direction::dkdv && runs(target, gen::Family::sm90)) {
    for (const auto& p : hopper_dkdv) {
      TileConfig tile = p.tile;
      tile.atomic_dq = atomic_dq;
      if (rejection(spec, tile, target).empty()) {
        return {tile, fmt::format("heuristic for {} on {}: {}{}", gen::to_string(spec), target.arch,
                                  p.why, atomic_dq ? ", dQ added atomically" : "")};
      }
    }
  }
  const auto& preferences = spec.direction == gen::Direction::dq       ? dq
                            : spec.direction == gen::Direction::dkdv   ? dkdv
                            : spec.direction == gen::Direction::decode ? decode
                            : spec.head_dim <= 64                      ? small_heads
                                                                       : large_heads;
  std::string skipped;
  for (const auto& p : preferences) {
    TileConfig tile = p.tile;
    tile.atomic_dq = atomic_dq;
    std::string why = rejection(spec, tile, target);
    if (why.empty()) {
      std::string reason =
          fmt::format("heuristic for {} on {}: {}{}", gen::to_string(spec), target.arch, p.why,
                      atomic_dq ? ", dQ added atomically" : "");
      if (!skipped.empty()) reason += fmt::format(" (skipped: {})", skipped);
      return {tile, reason};
    }
    if (!skipped.empty()) skipped += "; ";
    skipped += fmt::format("{} -> {}", gen::to_string(tile), why);
  }
  throw std::invalid_argument(
      fmt::format("no tile config fits {} on {}: {}", gen::to_string(spec), target.arch, skipped));
}

std::vector<KernelSpec> default_specs() {
  std::vector<KernelSpec> specs;
  for (auto direction : {gen::Direction::forward, gen::Direction::dkdv, gen::Direction::dq}) {
    for (auto dtype : {gen::DType::bf16, gen::DType::fp16}) {
      for (int head_dim : {64, 128}) {
        for (auto layout : {gen::Layout::dense, gen::Layout::padded, gen::Layout::varlen}) {
          for (bool causal : {false, true}) {
            KernelSpec spec;
            spec.direction = direction;
            spec.dtype = dtype;
            spec.head_dim = head_dim;
            spec.layout = layout;
            spec.causal = causal;
            specs.push_back(spec);
          }
        }
      }
    }
  }
  return specs;
}

}  // namespace sigattn::policy
