// Emits the NVRTC program for one variant: a traits struct carrying every spec axis and tile
// parameter as constexpr members, and the include of the family's kernel template. The kernel is
// requested by name expression, so no symbol is mangled by hand.
#include "generator/generator.hpp"

#include <fmt/format.h>
#include <sigattn/version.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "generator/template_store.hpp"
#include "generator/tile_policy.hpp"
#include "sigattn/decode_storage.h"
#include "sigattn/shared_storage.h"

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
    case Layout::paged:
      break;
  }
  return "";
}

// The traits member that carries the layout: the templates' Layout enum (sequence.cuh), or for
// the KV-cache kernels whether the cache is paged (a contiguous cache is the padded layout).
std::string layout_member(Direction direction, Layout layout) {
  if (direction == Direction::decode) {
    return fmt::format("  static constexpr bool kPaged = {};\n", layout == Layout::paged);
  }
  return fmt::format("  static constexpr sigattn::Layout kLayout = {};\n", layout_enum(layout));
}

}  // namespace

int smem_bytes(const KernelSpec& spec, const TileConfig& tile) {
  // The kernels take their layouts from the same functions (templates/sigattn/shared_storage.h).
  const int d = spec.head_dim;
  const bool hopper = tile.family == Family::sm90;
  const bool dynamic = tile.schedule == Schedule::dynamic;
  switch (spec.direction) {
    case Direction::forward:
      return hopper ? fwd_sm90_storage(d, tile.block_m, tile.block_n, tile.stages, dynamic).bytes
                    : fwd_sm80_storage(d, tile.block_m, tile.block_n, tile.stages).bytes;
    case Direction::dq:
      return hopper ? bwd_dq_sm90_storage(d, tile.block_m, tile.block_n, tile.stages, dynamic,
                                          dq_sm90_column_split(tile.block_m, tile.warps))
                          .bytes
                    : bwd_dq_sm80_storage(d, tile.block_m, tile.block_n, tile.stages).bytes;
    case Direction::dkdv:
      return hopper
                 ? bwd_dkdv_sm90_storage(d, tile.block_m, tile.block_n, tile.stages, tile.atomic_dq,
                                         dynamic)
                       .bytes
                 : bwd_dkdv_sm80_storage(d, tile.block_m, tile.block_n, tile.stages, tile.atomic_dq)
                       .bytes;
    case Direction::decode:
      return decode_sm80_storage(d, tile.block_m, tile.block_n, tile.stages).bytes;
  }
  return 0;
}

int grid_slices(const Variant& variant) {
  const Direction direction = variant.spec.direction;
  const bool backward = direction == Direction::dkdv || direction == Direction::dq;
  const bool sliced = backward && variant.tile.family == Family::sm80;
  return sliced ? sm80_slices(variant.spec.head_dim) : 1;
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
// struct Cfg, whose dtype, head dim and layout (layout_member) members come first and `members`
// (whole lines) after.
std::string generated_source(std::string_view variant_name, std::string_view entry, DType dtype,
                             int head_dim, std::string_view layout, std::string_view members) {
  return fmt::format(
      "// sigattn generated kernel {variant}\n"
      "// generator version {gen}, templates {templates}\n"
      "#include \"sigattn/{entry}.cuh\"\n"
      "\n"
      "namespace sigattn_generated {{\n"
      "struct Cfg {{\n"
      "  static constexpr bool kBf16 = {bf16};\n"
      "  static constexpr int kHeadDim = {head_dim};\n"
      "{layout}"
      "{members}"
      "}};\n"
      "}}  // namespace sigattn_generated\n",
      fmt::arg("variant", variant_name), fmt::arg("entry", entry),
      fmt::arg("gen", kGeneratorVersion), fmt::arg("templates", template_hash()),
      fmt::arg("bf16", dtype == DType::bf16 ? "true" : "false"), fmt::arg("head_dim", head_dim),
      fmt::arg("layout", layout), fmt::arg("members", members));
}

// The kernel's name stem, which is also its template's file name: "fwd_sm90".
std::string entry_name(const Variant& variant) {
  const bool hopper = variant.tile.family == Family::sm90;
  switch (variant.spec.direction) {
    case Direction::forward:
      return hopper ? "fwd_sm90" : "fwd_sm80";
    case Direction::dq:
      return hopper ? "bwd_dq_sm90" : "bwd_dq_sm80";
    case Direction::dkdv:
      return hopper ? "bwd_dkdv_sm90" : "bwd_dkdv_sm80";
    case Direction::decode:
      return "decode_sm80";
  }
  return "";
}

// The source hash over a generated program and the templates `included_hash` stands for.
std::string source_hash(const GeneratedKernel& kernel, std::string_view included_hash) {
  std::string hashed = fmt::format("sigattn kernel sources\n{}\n{}\n", included_hash,
                                   normalized_source(kernel.source));
  for (const auto& option : kernel.options) hashed.append(option).push_back('\n');
  hashed.append(kernel.name_expression);
  return hash_hex(hashed);
}

}  // namespace

std::string entry_template(const Variant& variant) {
  return fmt::format("sigattn/{}.cuh", entry_name(variant));
}

std::string kernel_source_hash(const Variant& variant) {
  return source_hash(generate(variant), included_sources_hash(entry_template(variant)));
}

std::string kernel_source_hash(const Variant& variant,
                               const std::vector<EmbeddedTemplate>& templates) {
  return source_hash(generate(variant), included_sources_hash(entry_template(variant), templates));
}

GeneratedKernel generate(const Variant& variant) {
  if (const std::string why = policy::structural_rejection(variant.spec, variant.tile);
      !why.empty()) {
    throw std::invalid_argument(why);
  }
  const KernelSpec& spec = variant.spec;
  const TileConfig& tile = variant.tile;

  GeneratedKernel out;
  out.variant = variant;
  out.variant_name = to_string(variant);
  out.threads = tile.warps * 32;
  out.smem_bytes = smem_bytes(spec, tile);
  const std::string entry = entry_name(variant);
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
      "{schedule}"
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
      // Only the sm90 kernels have a schedule to choose (the dK/dV kernel is persistent in the
      // dynamic one).
      fmt::arg("schedule", tile.family != Family::sm90
                               ? ""
                               : fmt::format("  static constexpr bool kDynamicSchedule = {};\n",
                                             tile.schedule == Schedule::dynamic)),
      fmt::arg("smem", out.smem_bytes));
  // The split count is a launch parameter: every count runs the program of splits 0, compiled once.
  Variant program = variant;
  program.tile.splits = 0;
  out.source = generated_source(to_string(program), entry, spec.dtype, spec.head_dim,
                                layout_member(spec.direction, spec.layout), members);
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
      out.variant_name, "bwd_dq_convert", key.dtype, key.head_dim,
      layout_member(key.direction, key.layout),
      fmt::format(
          "  static constexpr int kRowsPerCta = {};\n  static constexpr int kThreads = {};\n",
          kDqConvertRowsPerCta, kDqConvertThreads));
  out.content_hash = content_hash(out);
  return out;
}

namespace {

// A KV-cache helper kernel of `spec`'s dtype and head dim, `threads` per CTA, with no tile:
// `name` (the kernel's stem and template) and its variant name.
GeneratedKernel generate_cache_helper(const KernelSpec& spec, std::string_view name,
                                      std::string variant_name, int threads) {
  if (spec.direction != Direction::decode) {
    throw std::invalid_argument(
        fmt::format("{} belongs to decode, not to {}", name, to_string(spec.direction)));
  }
  if (const std::string why = policy::structural_rejection(spec, TileConfig{}); !why.empty()) {
    throw std::invalid_argument(why);
  }
  GeneratedKernel out;
  out.variant = Variant{spec, TileConfig{}};
  out.variant_name = std::move(variant_name);
  out.threads = threads;
  out.smem_bytes = 0;
  out.name_expression = fmt::format("sigattn::{}_kernel<sigattn_generated::Cfg>", name);
  out.options = {"-std=c++17", "--fmad=true"};
  out.source = generated_source(out.variant_name, name, spec.dtype, spec.head_dim,
                                layout_member(spec.direction, spec.layout),
                                fmt::format("  static constexpr int kThreads = {};\n", threads));
  out.content_hash = content_hash(out);
  return out;
}

}  // namespace

GeneratedKernel generate_kv_append(const KernelSpec& spec) {
  return generate_cache_helper(spec, "kv_append",
                               fmt::format("kvappend.{}.d{}.{}", to_string(spec.dtype),
                                           spec.head_dim, to_string(spec.layout)),
                               kCacheHelperThreads);
}

GeneratedKernel generate_decode_reduce(const KernelSpec& spec) {
  if (spec.direction != Direction::decode) {
    throw std::invalid_argument(
        fmt::format("decode_reduce belongs to decode, not to {}", to_string(spec.direction)));
  }
  // The sum reads the fp32 partials and writes the output: the cache's layout does not reach it.
  KernelSpec key;
  key.direction = Direction::decode;
  key.dtype = spec.dtype;
  key.head_dim = spec.head_dim;
  key.layout = Layout::padded;
  return generate_cache_helper(
      key, "decode_reduce", fmt::format("decodereduce.{}.d{}", to_string(key.dtype), key.head_dim),
      kCacheHelperThreads);
}

}  // namespace sigattn::gen
