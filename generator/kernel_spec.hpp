// KernelSpec (what a kernel computes) and TileConfig (how it is tiled), and the canonical variant
// string that names both: "fwd.bf16.d128.dense.causal.nosmod.fast.anylen/sm80.m128n64w4s2"
// ("dkdv.…" and "dq.…" for the backward kernels, "decode.…" for attention against a KV cache).
// The string is used in logs, errors, CLI output and database rows; parse(format(x)) == x.
#pragma once

#include <compare>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace sigattn::gen {

// forward: O; dkdv and dq: the two kernels of the backward pass (dK/dV per key block, dQ per
// query block); decode: O of a few query rows against a KV cache (one CTA per batch, kv head and
// split of the cache).
enum class Direction { forward, dkdv, dq, decode };
enum class DType { bf16, fp16 };
// dense: [B, L, H, D] all valid; padded: dense storage with per-sequence valid lengths;
// varlen: packed [total, H, D] tokens with cu_seqlens prefix sums; paged (decode only): a KV
// cache of fixed-size blocks that a block table maps each sequence's positions to. A contiguous
// KV cache is the padded layout: [B, max_len, H, D] with the cache lengths.
enum class Layout { dense, padded, varlen, paged };
enum class SigmoidMode { fast, accurate };
// anylen: any lengths; x128: every length is a multiple of 128 (no bounds checks on tiles).
enum class SeqLen { anylen, x128 };
// sm80: mma.sync and cp.async (Ampere and later); sm90: wgmma and TMA (Hopper, sm_90a only).
enum class Family { sm80, sm90 };
// How a persistent kernel's CTAs share the work tiles. strided: CTA i takes tiles i, i + grid,
// i + 2 grid, ... of every (row block, head, sequence) up to max_seqlen. dynamic: CTAs take the
// next tile from a global counter, over only the row blocks that hold valid rows, each
// sequence's longest tiles first. The sm90 dK/dV kernel launches one CTA per key block in the
// strided schedule and is persistent in the dynamic one (key blocks for row blocks).
enum class Schedule { strided, dynamic };

struct KernelSpec {
  Direction direction = Direction::forward;
  DType dtype = DType::bf16;
  int head_dim = 128;
  Layout layout = Layout::dense;
  bool causal = false;
  bool window = false;
  bool score_mod = false;
  SigmoidMode sigmoid = SigmoidMode::fast;
  SeqLen seqlen = SeqLen::anylen;

  auto operator<=>(const KernelSpec&) const = default;
};

// How a kernel is built: its family and the family's tunable parameters. Canonical string
// "sm80.m128n64w4s2" ("….atomicdq" for the one-pass backward split, "….dynamic" for the
// dynamic schedule, "….splits8" for a decode tile with a fixed split count).
// In the forward and dq kernels a CTA owns block_m query rows and steps over keys block_n at a
// time; in the dkdv kernel a CTA owns block_n keys and steps over queries block_m at a time; in
// the decode kernel a CTA owns block_m rows of (query, head of the GQA group) pairs and steps over
// its share of the cache block_n keys at a time, each warp taking block_n / warps of them.
struct TileConfig {
  int block_m = 128;  // query rows; a multiple of 16 * warps (forward, dq) or of 16 (dkdv)
  int block_n = 64;   // keys; a multiple of 16 (forward, dq) or of 16 * warps (dkdv)
  int warps = 4;      // warps per CTA, each owning an equal share of the CTA's rows
  int stages = 2;     // K/V shared-memory pipeline depth, 2..4
  Family family = Family::sm80;
  // The backward work split (dkdv kernels only). false: a separate dq kernel computes dQ, and two
  // runs give bit-identical gradients. true: the dkdv kernel also adds its share of dQ into an
  // fp32 buffer with atomics, one pass over S and dP instead of two (not bit-reproducible).
  bool atomic_dq = false;
  // The sm90 forward, dq and dkdv kernels' schedule (see Schedule); strided elsewhere.
  Schedule schedule = Schedule::strided;
  // The split-KV count (decode kernels only): CTAs per (batch, kv head, row block), each over an
  // equal share of the cache's key tiles, their partial outputs added in fp32 by a second kernel.
  // 0 leaves it to the heuristic of each call (policy::decode_splits). The kernel is the same for
  // every count, so the generated program does not depend on it.
  int splits = 0;

  auto operator<=>(const TileConfig&) const = default;
};

struct Variant {
  KernelSpec spec;
  TileConfig tile;

  auto operator<=>(const Variant&) const = default;
};

// Head dims the generator accepts: multiples of 8 from 8 to 256.
bool head_dim_supported(int head_dim);

std::string to_string(const KernelSpec& spec);
std::string to_string(const TileConfig& tile);
std::string to_string(const Variant& variant);
std::string_view to_string(DType dtype);
std::string_view to_string(Layout layout);
std::string_view to_string(Family family);
std::string_view to_string(Direction direction);
std::string_view to_string(Schedule schedule);

// Parse the canonical strings; throw std::invalid_argument naming the bad field.
KernelSpec parse_spec(std::string_view text);
TileConfig parse_tile(std::string_view text);
Family parse_family(std::string_view text);
Schedule parse_schedule(std::string_view text);
// "SPEC" or "SPEC/TILE"; a missing tile part leaves the optional empty.
struct ParsedVariant {
  KernelSpec spec;
  std::optional<TileConfig> tile;
};
ParsedVariant parse_variant(std::string_view text);

void to_json(nlohmann::json& j, const TileConfig& tile);
void from_json(const nlohmann::json& j, TileConfig& tile);
void to_json(nlohmann::json& j, const KernelSpec& spec);
void from_json(const nlohmann::json& j, KernelSpec& spec);

}  // namespace sigattn::gen
