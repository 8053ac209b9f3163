// Canonical variant strings and JSON for KernelSpec and TileConfig. The string fields appear in a
// fixed order:
// direction.dtype.dHEAD.layout.mask.scoremod.sigmoid.seqlen[/family.mMnNwWsS[.suffix]].
#include "generator/kernel_spec.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <vector>

namespace sigattn::gen {
namespace {

std::vector<std::string_view> split(std::string_view text, char sep) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    std::size_t end = text.find(sep, start);
    parts.push_back(text.substr(start, end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

[[noreturn]] void bad(std::string_view what, std::string_view got, std::string_view expected) {
  throw std::invalid_argument(
      fmt::format("bad {} '{}' in variant: expected {}", what, got, expected));
}

int parse_int(std::string_view digits, std::string_view what) {
  int value = 0;
  auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (digits.empty() || err != std::errc() || end != digits.data() + digits.size()) {
    bad(what, digits, "a decimal number");
  }
  return value;
}

std::string_view mask_name(const KernelSpec& spec) {
  if (spec.causal && spec.window) return "causal+window";
  if (spec.causal) return "causal";
  if (spec.window) return "window";
  return "nomask";
}

}  // namespace

bool head_dim_supported(int head_dim) {
  return head_dim >= 8 && head_dim <= 256 && head_dim % 8 == 0;
}

std::string_view to_string(DType dtype) { return dtype == DType::bf16 ? "bf16" : "fp16"; }

std::string_view to_string(Layout layout) {
  switch (layout) {
    case Layout::dense:
      return "dense";
    case Layout::padded:
      return "padded";
    case Layout::varlen:
      return "varlen";
    case Layout::paged:
      return "paged";
  }
  return "?";
}

std::string_view to_string(Family family) { return family == Family::sm90 ? "sm90" : "sm80"; }

std::string_view to_string(Direction direction) {
  switch (direction) {
    case Direction::forward:
      return "fwd";
    case Direction::dkdv:
      return "dkdv";
    case Direction::dq:
      return "dq";
    case Direction::decode:
      return "decode";
  }
  return "?";
}

std::string_view to_string(Schedule schedule) {
  return schedule == Schedule::dynamic ? "dynamic" : "strided";
}

std::string to_string(const KernelSpec& spec) {
  return fmt::format("{}.{}.d{}.{}.{}.{}.{}.{}", to_string(spec.direction), to_string(spec.dtype),
                     spec.head_dim, to_string(spec.layout), mask_name(spec),
                     spec.score_mod ? "smod" : "nosmod",
                     spec.sigmoid == SigmoidMode::fast ? "fast" : "accurate",
                     spec.seqlen == SeqLen::anylen ? "anylen" : "x128");
}

std::string to_string(const TileConfig& tile) {
  const std::string splits = tile.splits != 0 ? fmt::format(".splits{}", tile.splits) : "";
  return fmt::format("{}.m{}n{}w{}s{}{}{}{}", to_string(tile.family), tile.block_m, tile.block_n,
                     tile.warps, tile.stages, tile.atomic_dq ? ".atomicdq" : "",
                     tile.schedule == Schedule::dynamic ? ".dynamic" : "", splits);
}

std::string to_string(const Variant& variant) {
  return fmt::format("{}/{}", to_string(variant.spec), to_string(variant.tile));
}

KernelSpec parse_spec(std::string_view text) {
  auto f = split(text, '.');
  if (f.size() != 8) {
    bad("spec", text,
        "8 dot-separated fields: DIRECTION.DTYPE.dHEAD.LAYOUT.MASK.SCOREMOD.SIGMOID.SEQLEN, e.g. "
        "fwd.bf16.d128.dense.nomask.nosmod.fast.anylen");
  }
  KernelSpec spec;
  if (f[0] == "fwd") {
    spec.direction = Direction::forward;
  } else if (f[0] == "dkdv") {
    spec.direction = Direction::dkdv;
  } else if (f[0] == "dq") {
    spec.direction = Direction::dq;
  } else if (f[0] == "decode") {
    spec.direction = Direction::decode;
  } else {
    bad("direction", f[0], "fwd, dkdv, dq or decode");
  }
  if (f[1] == "bf16") {
    spec.dtype = DType::bf16;
  } else if (f[1] == "fp16") {
    spec.dtype = DType::fp16;
  } else {
    bad("dtype", f[1], "bf16 or fp16");
  }
  if (f[2].size() < 2 || f[2][0] != 'd') bad("head dim", f[2], "dN, e.g. d128");
  spec.head_dim = parse_int(f[2].substr(1), "head dim");
  if (!head_dim_supported(spec.head_dim)) bad("head dim", f[2], "a multiple of 8 from d8 to d256");
  if (f[3] == "dense") {
    spec.layout = Layout::dense;
  } else if (f[3] == "padded") {
    spec.layout = Layout::padded;
  } else if (f[3] == "varlen") {
    spec.layout = Layout::varlen;
  } else if (f[3] == "paged") {
    spec.layout = Layout::paged;
  } else {
    bad("layout", f[3], "dense, padded, varlen or paged");
  }
  if (f[4] == "nomask") {
  } else if (f[4] == "causal") {
    spec.causal = true;
  } else if (f[4] == "window") {
    spec.window = true;
  } else if (f[4] == "causal+window") {
    spec.causal = spec.window = true;
  } else {
    bad("mask", f[4], "nomask, causal, window or causal+window");
  }
  if (f[5] == "smod") {
    spec.score_mod = true;
  } else if (f[5] != "nosmod") {
    bad("score_mod", f[5], "smod or nosmod");
  }
  if (f[6] == "fast") {
    spec.sigmoid = SigmoidMode::fast;
  } else if (f[6] == "accurate") {
    spec.sigmoid = SigmoidMode::accurate;
  } else {
    bad("sigmoid", f[6], "fast or accurate");
  }
  if (f[7] == "anylen") {
    spec.seqlen = SeqLen::anylen;
  } else if (f[7] == "x128") {
    spec.seqlen = SeqLen::x128;
  } else {
    bad("seqlen", f[7], "anylen or x128");
  }
  if (spec.seqlen == SeqLen::x128 && spec.layout != Layout::dense) {
    bad("seqlen", f[7], "anylen: x128 applies to the dense layout only");
  }
  const bool decode = spec.direction == Direction::decode;
  if (decode && spec.layout != Layout::padded && spec.layout != Layout::paged) {
    bad("layout", f[3], "padded (a contiguous cache) or paged for decode");
  }
  if (!decode && spec.layout == Layout::paged) {
    bad("layout", f[3], "dense, padded or varlen: paged applies to decode only");
  }
  return spec;
}

Schedule parse_schedule(std::string_view text) {
  if (text == "strided") return Schedule::strided;
  if (text == "dynamic") return Schedule::dynamic;
  bad("schedule", text, "strided or dynamic");
}

Family parse_family(std::string_view text) {
  if (text == "sm80") return Family::sm80;
  if (text == "sm90") return Family::sm90;
  bad("family", text, "sm80 or sm90");
}

TileConfig parse_tile(std::string_view text) {
  // FAMILY.mMnNwWsS[.atomicdq][.dynamic][.splitsN]
  auto fields = split(text, '.');
  if (fields.size() < 2 || fields.size() > 5) {
    bad("tile", text,
        "FAMILY.mBLOCKMnBLOCKNwWARPSsSTAGES[.atomicdq][.dynamic][.splitsN], e.g. sm80.m128n64w4s2");
  }
  TileConfig tile;
  tile.family = parse_family(fields[0]);
  std::string_view sizes = fields[1];
  static constexpr std::array<char, 4> kKeys = {'m', 'n', 'w', 's'};
  std::array<int, 4> values{};
  std::size_t pos = 0;
  for (std::size_t i = 0; i < kKeys.size(); ++i) {
    if (pos >= sizes.size() || sizes[pos] != kKeys[i]) {
      bad("tile", text, "mBLOCKMnBLOCKNwWARPSsSTAGES after the family, e.g. sm80.m128n64w4s2");
    }
    std::size_t end = pos + 1;
    while (end < sizes.size() && sizes[end] >= '0' && sizes[end] <= '9') ++end;
    values[i] = parse_int(sizes.substr(pos + 1, end - pos - 1), "tile");
    pos = end;
  }
  if (pos != sizes.size()) {
    bad("tile", text, "nothing after the stage count but .atomicdq, .dynamic and .splitsN");
  }
  tile.block_m = values[0];
  tile.block_n = values[1];
  tile.warps = values[2];
  tile.stages = values[3];
  // The suffixes, each at most once and in this order.
  std::size_t next = 2;
  if (next < fields.size() && fields[next] == "atomicdq") {
    tile.atomic_dq = true;
    ++next;
  }
  if (next < fields.size() && fields[next] == "dynamic") {
    tile.schedule = Schedule::dynamic;
    ++next;
  }
  constexpr std::string_view kSplits = "splits";
  if (next < fields.size() && fields[next].starts_with(kSplits)) {
    tile.splits = parse_int(fields[next].substr(kSplits.size()), "split count");
    if (tile.splits < 1) bad("split count", fields[next], "splitsN with N >= 1");
    ++next;
  }
  if (next != fields.size()) {
    bad("tile", text, "the suffixes .atomicdq, .dynamic and .splitsN, in that order");
  }
  return tile;
}

ParsedVariant parse_variant(std::string_view text) {
  ParsedVariant parsed;
  std::size_t slash = text.find('/');
  parsed.spec = parse_spec(text.substr(0, slash));
  if (slash == std::string_view::npos) return parsed;
  parsed.tile = parse_tile(text.substr(slash + 1));
  return parsed;
}

void to_json(nlohmann::json& j, const TileConfig& tile) {
  j = nlohmann::json{{"family", to_string(tile.family)},
                     {"block_m", tile.block_m},
                     {"block_n", tile.block_n},
                     {"warps", tile.warps},
                     {"stages", tile.stages}};
  if (tile.atomic_dq) j["atomic_dq"] = true;
  if (tile.schedule != Schedule::strided) j["schedule"] = to_string(tile.schedule);
  if (tile.splits != 0) j["splits"] = tile.splits;
}

void from_json(const nlohmann::json& j, TileConfig& tile) {
  static constexpr std::array<std::string_view, 8> kFields = {
      "family", "block_m", "block_n", "warps", "stages", "atomic_dq", "schedule", "splits"};
  for (const auto& [key, value] : j.items()) {
    if (std::find(kFields.begin(), kFields.end(), key) == kFields.end()) {
      throw std::invalid_argument(fmt::format("unknown tile field '{}'", key));
    }
  }
  tile.family = parse_family(j.at("family").get<std::string>());
  tile.block_m = j.at("block_m").get<int>();
  tile.block_n = j.at("block_n").get<int>();
  tile.warps = j.at("warps").get<int>();
  tile.stages = j.at("stages").get<int>();
  tile.atomic_dq = j.value("atomic_dq", false);
  tile.schedule = parse_schedule(j.value("schedule", std::string("strided")));
  tile.splits = j.value("splits", 0);
}

void to_json(nlohmann::json& j, const KernelSpec& spec) { j = to_string(spec); }

void from_json(const nlohmann::json& j, KernelSpec& spec) {
  spec = parse_spec(j.get<std::string>());
}

}  // namespace sigattn::gen
