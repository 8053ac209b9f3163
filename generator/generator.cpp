// Emits the NVRTC program for one variant: a traits struct carrying every spec axis and tile
// parameter as constexpr members, and the include of the family's kernel template. The kernel is
// requested by name expression, so no symbol is mangled by hand.
#include "generator/generator.hpp"

#include <fmt/format.h>
#include <sigattn/version.h>

#include <stdexcept>

#include "generator/template_store.hpp"

namespace sigattn::gen {
namespace {

std::string_view layout_enum(Layout layout) {
  switch (layout) {
    case Layout::dense:
      return "sigattn::Layout::kDense";
    case Layout::padded:
      return "sigattn::Layout::kPadded";
    case Layout::varlen:
      return "sigattn::Layout::kVarlen";
  }
  return "";
}

// The sm90 kernels that split query rows (forward, dq): a producer warpgroup plus one consumer
// warpgroup per 64 rows of block_m.
void check_row_warpgroups(const TileConfig& tile, std::string_view kernel) {
  if (tile.warps != 4 + tile.block_m / 16) {
    throw std::invalid_argument(
        fmt::format("sm90 {}tile warps = {} must be {}: a producer warpgroup plus one consumer "
                    "warpgroup per 64 rows of block_m = {}",
                    kernel, tile.warps, 4 + tile.block_m / 16, tile.block_m));
  }
}

// The sm90 family has a forward, a dK/dV and a dQ kernel. Forward: one producer warpgroup plus
// block_m / 64 consumer warpgroups of 64 query rows (wgmma's M), K/V steps that are a valid wgmma
// N. dK/dV: a producer plus two consumer warpgroups of 64 keys (block_n = 128), 64 or 128 query
// rows per step, head dims of whole 64-element TMA boxes whose dK, dV, S^T and dP^T fit the
// registers. dQ: like the forward with one or two consumer warpgroups, at head dims 64 and 128,
// with K/V steps whose S, dP and dS fragments fit beside dQ.
void check_sm90_dq(const Variant& variant) {
  const KernelSpec& spec = variant.spec;
  const TileConfig& tile = variant.tile;
  if (spec.head_dim != 64 && spec.head_dim != 128) {
    throw std::invalid_argument(
        fmt::format("family sm90 has a dq kernel for head_dim 64 and 128, not {}", spec.head_dim));
  }
  if (tile.atomic_dq) {
    throw std::invalid_argument("the atomic dQ work split has no dq kernel in family sm90");
  }
  if (tile.block_m != 64 && tile.block_m != 128) {
    throw std::invalid_argument(
        fmt::format("sm90 dq tile block_m = {} must be 64 or 128", tile.block_m));
  }
  check_row_warpgroups(tile, "dq ");
  if (tile.block_n < 16 || tile.block_n % 16 != 0 ||
      spec.head_dim / 2 + tile.block_n + tile.block_n / 4 + 64 > 232) {
    throw std::invalid_argument(
        fmt::format("sm90 dq tile block_n = {} at head_dim {}: a multiple of 16 whose S, dP and "
                    "dS registers fit beside dQ's",
                    tile.block_n, spec.head_dim));
  }
}

void check_sm90_dkdv(const Variant& variant) {
  const KernelSpec& spec = variant.spec;
  const TileConfig& tile = variant.tile;
  if (spec.head_dim != 64 && spec.head_dim != 128) {
    throw std::invalid_argument(fmt::format(
        "family sm90 has a dkdv kernel for head_dim 64 and 128, not {}", spec.head_dim));
  }
  if (tile.block_n != 128) {
    throw std::invalid_argument(
        fmt::format("sm90 dkdv tile block_n = {} must be 128 (two 64-key warpgroups taking turns)",
                    tile.block_n));
  }
  if (tile.warps != 4 + tile.block_n / 16) {
    throw std::invalid_argument(
        fmt::format("sm90 dkdv tile warps = {} must be {}: a producer warpgroup plus one "
                    "consumer warpgroup per 64 keys of block_n = {}",
                    tile.warps, 4 + tile.block_n / 16, tile.block_n));
  }
  if (tile.block_m != 64 && tile.block_m != 128) {
    throw std::invalid_argument(
        fmt::format("sm90 dkdv tile block_m = {} must be 64 or 128", tile.block_m));
  }
  if (spec.head_dim + tile.block_m > 192) {
    throw std::invalid_argument(
        fmt::format("sm90 dkdv tile block_m = {} at head_dim {}: the dK, dV, S^T and dP^T "
                    "accumulators exceed the registers",
                    tile.block_m, spec.head_dim));
  }
  if (tile.atomic_dq &&
      (tile.block_m > tile.block_n || spec.head_dim * tile.block_m / tile.block_n % 64 != 0)) {
    throw std::invalid_argument(
        fmt::format("sm90 dkdv tile {} at head_dim {}: the one-pass split gives each consumer "
                    "warpgroup 64 query rows and whole 64-column blocks of dQ",
                    to_string(tile), spec.head_dim));
  }
}

void check_sm90_variant(const Variant& variant) {
  const KernelSpec& spec = variant.spec;
  const TileConfig& tile = variant.tile;
  if (tile.stages < 2 || tile.stages > 4) {
    throw std::invalid_argument(fmt::format("tile stages = {} must be 2, 3 or 4", tile.stages));
  }
  if (spec.seqlen == SeqLen::x128 && (128 % tile.block_m != 0 || 128 % tile.block_n != 0)) {
    throw std::invalid_argument(
        fmt::format("seqlen x128 needs block_m and block_n dividing 128, got {}", to_string(tile)));
  }
  if (spec.direction == Direction::dkdv) {
    check_sm90_dkdv(variant);
    return;
  }
  if (spec.direction == Direction::dq) {
    check_sm90_dq(variant);
    return;
  }
  if (spec.direction != Direction::forward) {
    throw std::invalid_argument(
        fmt::format("family sm90 has no {} kernel", to_string(spec.direction)));
  }
  if (spec.head_dim % 16 != 0 || spec.head_dim < 64) {
    throw std::invalid_argument(
        fmt::format("family sm90 needs head_dim a multiple of 16 (wgmma k-steps) from 64 (one "
                    "128-byte TMA box) to 256, got {}",
                    spec.head_dim));
  }
  if (tile.atomic_dq) {
    throw std::invalid_argument("the atomic dQ work split has no fwd kernel in family sm90");
  }
  if (tile.block_m != 64 && tile.block_m != 128 && tile.block_m != 192) {
    throw std::invalid_argument(
        fmt::format("sm90 tile block_m = {} must be 64, 128 or 192", tile.block_m));
  }
  check_row_warpgroups(tile, "");
  if (tile.block_n < 16 || tile.block_n > 256 || tile.block_n % 16 != 0) {
    throw std::invalid_argument(fmt::format(
        "sm90 tile block_n = {} must be a multiple of 16 from 16 to 256", tile.block_n));
  }
}

void check_variant(const Variant& variant) {
  const KernelSpec& spec = variant.spec;
  const TileConfig& tile = variant.tile;
  if (!head_dim_supported(spec.head_dim)) {
    throw std::invalid_argument(fmt::format(
        "head_dim {} is not supported: use a multiple of 8 from 8 to 256", spec.head_dim));
  }
  if (spec.seqlen == SeqLen::x128 && spec.layout != Layout::dense) {
    throw std::invalid_argument("seqlen x128 applies to the dense layout only");
  }
  if (tile.family == Family::sm90) {
    check_sm90_variant(variant);
    return;
  }
  if (tile.family != Family::sm80) {
    throw std::invalid_argument(fmt::format("family {} has no {} kernel", to_string(tile.family),
                                            to_string(spec.direction)));
  }
  if (tile.atomic_dq && spec.direction != Direction::dkdv) {
    throw std::invalid_argument(
        fmt::format("the atomic dQ work split has no {} kernel in family {}",
                    to_string(spec.direction), to_string(tile.family)));
  }
  if (tile.warps != 1 && tile.warps != 2 && tile.warps != 4 && tile.warps != 8) {
    throw std::invalid_argument(fmt::format("tile warps = {} must be 1, 2, 4 or 8", tile.warps));
  }
  // The dimension the warps split: query rows (forward, dq) or keys (dkdv).
  const bool keys_split = spec.direction == Direction::dkdv;
  const int split = keys_split ? tile.block_n : tile.block_m;
  const int stepped = keys_split ? tile.block_m : tile.block_n;
  if (split <= 0 || split % (16 * tile.warps) != 0) {
    throw std::invalid_argument(
        fmt::format("tile {} = {} must be a positive multiple of 16 * warps = {}",
                    keys_split ? "block_n" : "block_m", split, 16 * tile.warps));
  }
  if (stepped <= 0 || stepped % 16 != 0) {
    throw std::invalid_argument(fmt::format("tile {} = {} must be a positive multiple of 16",
                                            keys_split ? "block_m" : "block_n", stepped));
  }
  if (tile.stages < 2 || tile.stages > 4) {
    throw std::invalid_argument(fmt::format("tile stages = {} must be 2, 3 or 4", tile.stages));
  }
  if (spec.seqlen == SeqLen::x128 && (128 % tile.block_m != 0 || 128 % tile.block_n != 0)) {
    throw std::invalid_argument(
        fmt::format("seqlen x128 needs block_m and block_n dividing 128, got {}", to_string(tile)));
  }
}

}  // namespace

int smem_bytes(const KernelSpec& spec, const TileConfig& tile) {
  if (tile.family == Family::sm90) {
    // Mirrors FwdSm90Shape, BwdDqSm90Shape and BwdDkdvSm90Shape (templates/sigattn/*_sm90.cuh):
    // 1024 bytes of alignment slack, tiles in column blocks of 64 elements with 128-byte rows, 128
    // bytes for mbarriers. Forward: Q and each K/V stage. dQ: Q, dO and each K/V stage. dK/dV: K,
    // V, each Q/dO stage and, in the one-pass split, two dS^T buffers.
    const int slabs = (spec.head_dim + 63) / 64;
    if (spec.direction == Direction::dkdv) {
      const int ds_bytes = tile.atomic_dq ? 2 * 2 * tile.block_n * tile.block_m : 0;
      return 1024 + slabs * 128 * (2 * tile.block_n + 2 * tile.stages * tile.block_m) + ds_bytes +
             128;
    }
    const int row_tiles = spec.direction == Direction::dq ? 2 : 1;
    return 1024 + slabs * 128 * (row_tiles * tile.block_m + 2 * tile.stages * tile.block_n) + 128;
  }
  // Mirrors the Shape structs of templates/sigattn/*_sm80.cuh, which static_assert equality.
  const int padded_dim = (spec.head_dim + 15) / 16 * 16;
  switch (spec.direction) {
    case Direction::forward: {
      const int stride = padded_dim + 8;
      return 2 * (tile.block_m * stride + 2 * tile.stages * tile.block_n * stride);
    }
    case Direction::dq: {
      const int slices = (spec.head_dim + 127) / 128;
      const int slice_width = (padded_dim / 16 + slices - 1) / slices * 16;
      const int stride = slices * slice_width + 8;
      return 2 * (2 * tile.block_m * stride + 2 * tile.stages * tile.block_n * stride);
    }
    case Direction::dkdv: {
      const int slices = (spec.head_dim + 127) / 128;
      const int slice_width = (padded_dim / 16 + slices - 1) / slices * 16;
      const int stride = slices * slice_width + 8;
      // The one-pass split stages dS^T, block_n keys x (block_m + 8) queries.
      const int ds_elems = tile.atomic_dq ? tile.block_n * (tile.block_m + 8) : 0;
      return 2 * (2 * tile.block_n * stride + 2 * tile.stages * tile.block_m * stride + ds_elems);
    }
  }
  return 0;
}

int grid_slices(const KernelSpec& spec) {
  return spec.direction == Direction::forward ? 1 : (spec.head_dim + 127) / 128;
}

namespace {

// The content hash over everything that makes the binary: versions, templates, source, options
// and name expression.
std::string content_hash(const GeneratedKernel& kernel) {
  std::string hashed = fmt::format("sigattn {} generator {}\n{}\n{}\n", SIGATTN_VERSION_STRING,
                                   kGeneratorVersion, template_hash(), kernel.source);
  for (const auto& option : kernel.options) hashed.append(option).push_back('\n');
  hashed.append(kernel.name_expression);
  return hash_hex(hashed);
}

// The program of a variant: where it comes from, the include of its entry template, and the traits
// struct Cfg, whose dtype, head dim and layout members come first and `members` (whole lines)
// after.
std::string generated_source(std::string_view variant_name, std::string_view entry, DType dtype,
                             int head_dim, Layout layout, std::string_view members) {
  return fmt::format(
      "// sigattn generated kernel {variant}\n"
      "// generator version {gen}, templates {templates}\n"
      "#include \"sigattn/{entry}.cuh\"\n"
      "\n"
      "namespace sigattn_generated {{\n"
      "struct Cfg {{\n"
      "  static constexpr bool kBf16 = {bf16};\n"
      "  static constexpr int kHeadDim = {head_dim};\n"
      "  static constexpr sigattn::Layout kLayout = {layout};\n"
      "{members}"
      "}};\n"
      "}}  // namespace sigattn_generated\n",
      fmt::arg("variant", variant_name), fmt::arg("entry", entry),
      fmt::arg("gen", kGeneratorVersion), fmt::arg("templates", template_hash()),
      fmt::arg("bf16", dtype == DType::bf16 ? "true" : "false"), fmt::arg("head_dim", head_dim),
      fmt::arg("layout", layout_enum(layout)), fmt::arg("members", members));
}

}  // namespace

GeneratedKernel generate(const Variant& variant) {
  check_variant(variant);
  const KernelSpec& spec = variant.spec;
  const TileConfig& tile = variant.tile;

  GeneratedKernel out;
  out.variant = variant;
  out.variant_name = to_string(variant);
  out.threads = tile.warps * 32;
  out.smem_bytes = smem_bytes(spec, tile);
  const bool hopper = tile.family == Family::sm90;
  const std::string_view entry =
      spec.direction == Direction::forward ? (hopper ? "fwd_sm90" : "fwd_sm80")
      : spec.direction == Direction::dq    ? (hopper ? "bwd_dq_sm90" : "bwd_dq_sm80")
      : hopper                             ? "bwd_dkdv_sm90"
                                           : "bwd_dkdv_sm80";
  out.name_expression = fmt::format("sigattn::{}_kernel<sigattn_generated::Cfg>", entry);
  out.options = {"-std=c++17", "--fmad=true"};
  const std::string members = fmt::format(
      "  static constexpr bool kCausal = {causal};\n"
      "  static constexpr bool kWindow = {window};\n"
      "  static constexpr bool kScoreMod = {score_mod};\n"
      "  static constexpr bool kAccurateSigmoid = {accurate};\n"
      "  static constexpr bool kSeqLenX128 = {x128};\n"
      "  static constexpr int kBlockM = {block_m};\n"
      "  static constexpr int kBlockN = {block_n};\n"
      "  static constexpr int kWarps = {warps};\n"
      "  static constexpr int kStages = {stages};\n"
      "{work_split}"
      "  static constexpr int kSmemBytes = {smem};\n",
      fmt::arg("causal", spec.causal ? "true" : "false"),
      fmt::arg("window", spec.window ? "true" : "false"),
      fmt::arg("score_mod", spec.score_mod ? "true" : "false"),
      fmt::arg("accurate", spec.sigmoid == SigmoidMode::accurate ? "true" : "false"),
      fmt::arg("x128", spec.seqlen == SeqLen::x128 ? "true" : "false"),
      fmt::arg("block_m", tile.block_m), fmt::arg("block_n", tile.block_n),
      fmt::arg("warps", tile.warps), fmt::arg("stages", tile.stages),
      // Only the dK/dV kernel has a work split to choose.
      fmt::arg("work_split",
               spec.direction != Direction::dkdv
                   ? ""
                   : fmt::format("  static constexpr bool kAtomicDq = {};\n", tile.atomic_dq)),
      fmt::arg("smem", out.smem_bytes));
  out.source =
      generated_source(out.variant_name, entry, spec.dtype, spec.head_dim, spec.layout, members);
  out.content_hash = content_hash(out);
  return out;
}

GeneratedKernel generate_dq_convert(const KernelSpec& spec) {
  if (spec.direction == Direction::forward) {
    throw std::invalid_argument("the dQ conversion belongs to the backward pass, not to fwd");
  }
  if (!head_dim_supported(spec.head_dim)) {
    throw std::invalid_argument(fmt::format(
        "head_dim {} is not supported: use a multiple of 8 from 8 to 256", spec.head_dim));
  }
  // Masks, score_mod, sigmoid and tiles do not reach the conversion: one kernel serves them all.
  KernelSpec key;
  key.direction = Direction::dq;
  key.dtype = spec.dtype;
  key.head_dim = spec.head_dim;
  key.layout = spec.layout;

  GeneratedKernel out;
  out.variant = Variant{key, TileConfig{}};
  out.variant_name =
      fmt::format("dqconvert.{}.d{}.{}", to_string(key.dtype), key.head_dim, to_string(key.layout));
  out.threads = kDqConvertThreads;
  out.smem_bytes = 0;
  out.name_expression = "sigattn::bwd_dq_convert_kernel<sigattn_generated::Cfg>";
  out.options = {"-std=c++17", "--fmad=true"};
  out.source = generated_source(
      out.variant_name, "bwd_dq_convert", key.dtype, key.head_dim, key.layout,
      fmt::format(
          "  static constexpr int kRowsPerCta = {};\n  static constexpr int kThreads = {};\n",
          kDqConvertRowsPerCta, kDqConvertThreads));
  out.content_hash = content_hash(out);
  return out;
}

}  // namespace sigattn::gen
