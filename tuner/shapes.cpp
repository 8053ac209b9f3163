// Shapes, presets, the shape string and JSON formats, and the expansion of a shape into tasks.
// The spec of a task comes from the runtime's own validation (forward_spec, backward_specs,
// check_kvcache) run on placeholder pointers, so a tuned problem key is exactly the key a call of
// that shape looks up.
#include "tuner/shapes.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sigattn/sigattn.hpp>
#include <stdexcept>

#include "cache/json_file.hpp"
#include "generator/template_store.hpp"
#include "generator/tile_policy.hpp"
#include "runtime/backward.hpp"
#include "runtime/forward.hpp"
#include "runtime/validation.hpp"

namespace sigattn::tune {
namespace {

// The kernels put heads and batch on grid.y and grid.z.
constexpr int kMaxGridExtent = 65535;
constexpr int kMaxSeqLen = 1 << 24;

// Each pass: its name in a shape string, its name in a shape file, and the kernel whose spec a
// shape's validation derives (the first of the backward's).
struct PassNames {
  Pass pass;
  std::string_view name;
  std::string_view word;
  gen::Direction first_kernel;
};
constexpr PassNames kPasses[] = {
    {Pass::forward, "fwd", "forward", gen::Direction::forward},
    {Pass::backward, "bwd", "backward", gen::Direction::dkdv},
    {Pass::decode, "dec", "decode", gen::Direction::decode},
};

const PassNames& names_of(Pass pass) {
  for (const PassNames& names : kPasses) {
    if (names.pass == pass) return names;
  }
  throw std::logic_error("a pass without names");
}

int parse_int(std::string_view text, std::string_view field, std::string_view whole) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) {
    throw std::invalid_argument(
        fmt::format("shape '{}': {} '{}' is not a decimal integer", whole, field, text));
  }
  return value;
}

// A batch or head count given explicitly: 0 would silently mean "the default", so it is refused.
int parse_count(std::string_view text, std::string_view field, std::string_view whole) {
  const int value = parse_int(text, field, whole);
  if (value < 1) {
    throw std::invalid_argument(
        fmt::format("shape '{}': {} {} must be at least 1 (leave the field out for the default)",
                    whole, field, value));
  }
  return value;
}

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t end = text.find(separator, start);
    parts.push_back(text.substr(start, end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

gen::DType parse_dtype(std::string_view text, std::string_view where) {
  if (text == "bf16") return gen::DType::bf16;
  if (text == "fp16") return gen::DType::fp16;
  throw std::invalid_argument(fmt::format("{}: dtype '{}' must be bf16 or fp16", where, text));
}

// Placeholder device addresses: forward_spec and backward_specs check alignment and null-ness
// only, on the host.
void* placeholder(int index) { return reinterpret_cast<void*>(std::uintptr_t{0x10000} * index); }

ShapeTensors placeholder_tensors(const Shape& shape) {
  ShapeTensors tensors;
  tensors.q = placeholder(1);
  tensors.k = placeholder(2);
  tensors.v = placeholder(3);
  tensors.out = tensors.grad_out = placeholder(4);
  if (shape.padding_percent > 0 || shape.pass == Pass::decode) {
    tensors.lengths = static_cast<const std::int32_t*>(placeholder(5));
  }
  if (shape.block_size > 0) tensors.block_table = static_cast<const std::int32_t*>(placeholder(9));
  tensors.grad_q = placeholder(6);
  tensors.grad_k = placeholder(7);
  tensors.grad_v = placeholder(8);
  return tensors;
}

gen::KernelSpec spec_for(const Shape& shape, gen::Direction direction) {
  try {
    const ShapeTensors tensors = placeholder_tensors(shape);
    if (direction == gen::Direction::forward) return forward_spec(forward_args(shape, tensors));
    if (direction == gen::Direction::decode) return check_kvcache(kvcache_args(shape, tensors));
    const BackwardSpecs specs = backward_specs(backward_args(shape, tensors));
    return direction == gen::Direction::dkdv ? specs.dkdv : specs.dq;
  } catch (const Error& error) {
    throw std::invalid_argument(fmt::format("shape {}: {}", to_string(shape), error.what()));
  }
}

std::vector<int> draw_lengths(const Shape& shape) {
  if (shape.padding_percent == 0) return {};
  const std::string seed_text = gen::hash_hex(to_string(shape)).substr(0, 16);
  std::mt19937_64 engine(std::stoull(seed_text, nullptr, 16));
  const int shortest = std::max(
      1, static_cast<int>(std::ceil(shape.seqlen * (100 - shape.padding_percent) / 100.0)));
  std::uniform_int_distribution<int> length(shortest, shape.seqlen);
  std::vector<int> lengths(shape.batch);
  for (int& l : lengths) l = length(engine);
  return lengths;
}

const std::set<std::string>& shape_fields() {
  static const std::set<std::string> fields = {
      "pass",    "dtype",    "head_dim", "seqlen",  "padding_percent", "batch",
      "heads_q", "heads_kv", "causal",   "sigmoid", "decode_rows",     "block_size"};
  return fields;
}

}  // namespace

Shape resolved(Shape shape) {
  const int tokens = shape.pass == Pass::decode ? kDecodeTokensPerBatch : kTokensPerBatch;
  if (shape.batch == 0 && shape.seqlen > 0) shape.batch = std::max(1, tokens / shape.seqlen);
  if (shape.heads_q == 0 && shape.head_dim > 0) {
    shape.heads_q = std::max(1, kHiddenSize / shape.head_dim);
  }
  if (shape.heads_kv == 0) shape.heads_kv = shape.heads_q;
  return shape;
}

std::optional<std::int64_t> tensor_bytes(const Shape& shape) {
  // Forward: q, k, v, out. Backward: those, dO, dQ, dK, dV. Two bytes an element. Decode: q and
  // out of decode_rows rows, the K and V caches of whole blocks.
  const bool decode = shape.pass == Pass::decode;
  const std::int64_t copies = shape.pass == Pass::backward ? 4 : 2;
  const std::int64_t cache_rows = decode && shape.block_size > 0
                                      ? std::int64_t{blocks_per_sequence(shape)} * shape.block_size
                                      : std::int64_t{shape.seqlen};
  std::int64_t bytes = 0;
  for (const bool queries : {true, false}) {
    std::int64_t product = 2 * copies;
    const std::int64_t rows = decode && queries ? shape.decode_rows : cache_rows;
    const std::int64_t heads = queries ? shape.heads_q : shape.heads_kv;
    for (const std::int64_t factor :
         {std::int64_t{shape.batch}, rows, heads, std::int64_t{shape.head_dim}}) {
      if (__builtin_mul_overflow(product, factor, &product)) return std::nullopt;
    }
    if (__builtin_add_overflow(bytes, product, &bytes)) return std::nullopt;
  }
  return bytes;
}

int blocks_per_sequence(const Shape& shape) {
  return shape.block_size > 0 ? (shape.seqlen + shape.block_size - 1) / shape.block_size : 0;
}

void validate(const Shape& shape) {
  const std::string name = to_string(shape);
  const auto fail = [&](const std::string& why) {
    throw std::invalid_argument(fmt::format("shape {}: {}", name, why));
  };
  if (!gen::head_dim_supported(shape.head_dim)) {
    fail(fmt::format("head_dim {} must be a multiple of 8 from 8 to 256", shape.head_dim));
  }
  if (shape.seqlen < 1 || shape.seqlen > kMaxSeqLen) {
    fail(fmt::format("seqlen {} must be in [1, {}]", shape.seqlen, kMaxSeqLen));
  }
  if (shape.padding_percent < 0 || shape.padding_percent > 99) {
    fail(fmt::format("padding_percent {} must be in [0, 99]", shape.padding_percent));
  }
  if (shape.batch < 1 || shape.batch > kMaxGridExtent) {
    fail(fmt::format("batch {} must be in [1, {}]", shape.batch, kMaxGridExtent));
  }
  if (shape.heads_q < 1 || shape.heads_q > kMaxGridExtent) {
    fail(fmt::format("heads_q {} must be in [1, {}]", shape.heads_q, kMaxGridExtent));
  }
  if (shape.heads_kv < 1 || shape.heads_q % shape.heads_kv != 0) {
    fail(fmt::format("heads_q {} must be a positive multiple of heads_kv {}", shape.heads_q,
                     shape.heads_kv));
  }
  if (shape.pass != Pass::decode && (shape.decode_rows != 1 || shape.block_size != 0)) {
    fail("query rows (q) and a paged cache (paged) describe decode shapes only (dec)");
  }
  if (shape.decode_rows < 1 || shape.decode_rows > shape.seqlen) {
    fail(fmt::format("query rows {} must be in [1, seqlen {}]: they sit at the end of the cache",
                     shape.decode_rows, shape.seqlen));
  }
  if (shape.block_size < 0 || shape.block_size > shape.seqlen) {
    fail(fmt::format("block size {} must be in [1, seqlen {}] (0: a contiguous cache)",
                     shape.block_size, shape.seqlen));
  }
  if (shape.pass == Pass::decode && shape.padding_percent > 0 &&
      std::ceil(shape.seqlen * (100 - shape.padding_percent) / 100.0) < shape.decode_rows) {
    fail(fmt::format("padding {}% leaves caches shorter than the {} query rows",
                     shape.padding_percent, shape.decode_rows));
  }
  if (const std::optional<std::int64_t> bytes = tensor_bytes(shape); !bytes) {
    fail(
        fmt::format("its tensors take more than 2^63 bytes, more than the {} a tuning shape may "
                    "use",
                    kMaxShapeBytes));
  } else if (*bytes > kMaxShapeBytes) {
    fail(fmt::format("its tensors take {} bytes, more than the {} a tuning shape may use", *bytes,
                     kMaxShapeBytes));
  }
  spec_for(shape, names_of(shape.pass).first_kernel);
}

std::string to_string(const Shape& shape) {
  std::string text = fmt::format("{}.{}.d{}.L{}", names_of(shape.pass).name,
                                 gen::to_string(shape.dtype), shape.head_dim, shape.seqlen);
  if (shape.padding_percent != 0) text += fmt::format(".pad{}", shape.padding_percent);
  if (shape.batch != 0) text += fmt::format(".b{}", shape.batch);
  if (shape.heads_q != 0) {
    text += shape.heads_kv == 0 || shape.heads_kv == shape.heads_q
                ? fmt::format(".h{}", shape.heads_q)
                : fmt::format(".h{}x{}", shape.heads_q, shape.heads_kv);
  }
  if (shape.decode_rows != 1) text += fmt::format(".q{}", shape.decode_rows);
  if (shape.block_size != 0) text += fmt::format(".paged{}", shape.block_size);
  if (shape.causal) text += ".causal";
  if (shape.sigmoid == gen::SigmoidMode::accurate) text += ".accurate";
  return text;
}

Shape parse_shape(std::string_view text) {
  const std::vector<std::string_view> parts = split(text, '.');
  if (parts.size() < 4) {
    throw std::invalid_argument(fmt::format(
        "shape '{}': expected PASS.DTYPE.dHEAD.LSEQ[.padP][.bBATCH][.hHEADS[xKV]][.causal]"
        "[.accurate] (dec also [.qROWS][.pagedBLOCK]), e.g. fwd.bf16.d128.L4096.pad25",
        text));
  }
  Shape shape;
  const auto pass = std::find_if(std::begin(kPasses), std::end(kPasses),
                                 [&](const PassNames& names) { return names.name == parts[0]; });
  if (pass == std::end(kPasses)) {
    throw std::invalid_argument(
        fmt::format("shape '{}': pass '{}' must be fwd, bwd or dec", text, parts[0]));
  }
  shape.pass = pass->pass;
  shape.dtype = parse_dtype(parts[1], fmt::format("shape '{}'", text));
  if (!parts[2].starts_with("d")) {
    throw std::invalid_argument(
        fmt::format("shape '{}': head dim '{}' must read dHEAD, e.g. d128", text, parts[2]));
  }
  shape.head_dim = parse_int(parts[2].substr(1), "head dim", text);
  if (!parts[3].starts_with("L")) {
    throw std::invalid_argument(
        fmt::format("shape '{}': length '{}' must read LSEQ, e.g. L4096", text, parts[3]));
  }
  shape.seqlen = parse_int(parts[3].substr(1), "length", text);
  for (std::size_t i = 4; i < parts.size(); ++i) {
    const std::string_view part = parts[i];
    if (part == "causal") {
      shape.causal = true;
    } else if (part == "accurate") {
      shape.sigmoid = gen::SigmoidMode::accurate;
    } else if (part.starts_with("paged")) {
      shape.block_size = parse_count(part.substr(5), "block size", text);
    } else if (part.starts_with("pad")) {
      shape.padding_percent = parse_int(part.substr(3), "padding", text);
    } else if (part.starts_with("q")) {
      shape.decode_rows = parse_count(part.substr(1), "query rows", text);
    } else if (part.starts_with("b")) {
      shape.batch = parse_count(part.substr(1), "batch", text);
    } else if (part.starts_with("h")) {
      const std::vector<std::string_view> heads = split(part.substr(1), 'x');
      if (heads.size() > 2) {
        throw std::invalid_argument(
            fmt::format("shape '{}': heads '{}' must read hHEADS or hHEADSxKV", text, part));
      }
      shape.heads_q = parse_count(heads[0], "heads", text);
      if (heads.size() == 2) shape.heads_kv = parse_count(heads[1], "kv heads", text);
    } else {
      throw std::invalid_argument(
          fmt::format("shape '{}': unknown field '{}' (expected padP, bBATCH, hHEADS[xKV], qROWS, "
                      "pagedBLOCK, causal or accurate)",
                      text, part));
    }
  }
  shape = resolved(shape);
  validate(shape);
  return shape;
}

std::vector<Shape> parse_shapes_json(const nlohmann::json& document) {
  if (!document.is_object() || !document.contains("shapes") || !document["shapes"].is_array()) {
    throw std::invalid_argument("a shape file must be a JSON object with a \"shapes\" array");
  }
  for (const auto& [key, value] : document.items()) {
    if (key != "shapes") {
      throw std::invalid_argument(
          fmt::format("unknown top-level field '{}' (expected shapes)", key));
    }
  }
  std::vector<Shape> shapes;
  const nlohmann::json& list = document["shapes"];
  for (std::size_t i = 0; i < list.size(); ++i) {
    const nlohmann::json& entry = list[i];
    const std::string where = fmt::format("shapes[{}]", i);
    if (!entry.is_object()) throw std::invalid_argument(where + ": must be an object");
    for (const auto& [key, value] : entry.items()) {
      if (!shape_fields().contains(key)) {
        throw std::invalid_argument(fmt::format("{}: unknown field '{}'", where, key));
      }
    }
    const auto require = [&](const char* field) -> const nlohmann::json& {
      if (!entry.contains(field)) {
        throw std::invalid_argument(fmt::format("{}: missing field '{}'", where, field));
      }
      return entry[field];
    };
    const auto text_field = [&](const char* field) {
      const nlohmann::json& value = require(field);
      if (!value.is_string()) {
        throw std::invalid_argument(fmt::format("{}.{}: must be a string", where, field));
      }
      return value.get<std::string>();
    };
    // A field left out takes `fallback` (when it is not negative); a given value must be at least
    // `lowest`.
    const auto int_field = [&](const char* field, int fallback, int lowest) {
      if (!entry.contains(field) && fallback >= 0) return fallback;
      const nlohmann::json& value = require(field);
      if (!value.is_number_integer()) {
        throw std::invalid_argument(fmt::format("{}.{}: must be an integer", where, field));
      }
      const bool too_large =
          value.is_number_unsigned() && value.get<std::uint64_t>() > std::uint64_t{kMaxSeqLen};
      const std::int64_t number = too_large ? kMaxSeqLen + 1 : value.get<std::int64_t>();
      if (number < lowest || number > kMaxSeqLen) {
        throw std::invalid_argument(fmt::format("{}.{}: {} is out of range [{}, {}]", where, field,
                                                value.dump(), lowest, kMaxSeqLen));
      }
      return static_cast<int>(number);
    };
    Shape shape;
    const std::string pass = text_field("pass");
    const auto known = std::find_if(std::begin(kPasses), std::end(kPasses),
                                    [&](const PassNames& names) { return names.word == pass; });
    if (known == std::end(kPasses)) {
      throw std::invalid_argument(
          fmt::format("{}.pass: '{}' must be forward, backward or decode", where, pass));
    }
    shape.pass = known->pass;
    shape.dtype = parse_dtype(text_field("dtype"), where + ".dtype");
    shape.head_dim = int_field("head_dim", -1, 0);
    shape.seqlen = int_field("seqlen", -1, 0);
    shape.padding_percent = int_field("padding_percent", 0, 0);
    // 0 means "the default" inside a Shape; in a file the default is asked for by leaving it out.
    shape.batch = int_field("batch", 0, 1);
    shape.heads_q = int_field("heads_q", 0, 1);
    shape.heads_kv = int_field("heads_kv", 0, 1);
    shape.decode_rows = int_field("decode_rows", 1, 1);
    shape.block_size = int_field("block_size", 0, 0);
    if (entry.contains("causal")) {
      if (!entry["causal"].is_boolean()) {
        throw std::invalid_argument(where + ".causal: must be true or false");
      }
      shape.causal = entry["causal"].get<bool>();
    }
    if (entry.contains("sigmoid")) {
      const std::string sigmoid = text_field("sigmoid");
      if (sigmoid != "fast" && sigmoid != "accurate") {
        throw std::invalid_argument(
            fmt::format("{}.sigmoid: '{}' must be fast or accurate", where, sigmoid));
      }
      shape.sigmoid = sigmoid == "fast" ? gen::SigmoidMode::fast : gen::SigmoidMode::accurate;
    }
    shape = resolved(shape);
    try {
      validate(shape);
    } catch (const std::invalid_argument& error) {
      throw std::invalid_argument(fmt::format("{}: {}", where, error.what()));
    }
    shapes.push_back(shape);
  }
  if (shapes.empty()) throw std::invalid_argument("the \"shapes\" array is empty");
  return shapes;
}

std::vector<Shape> read_shapes_file(const std::filesystem::path& path) {
  const nlohmann::json document = cache::read_strict_json_file(path, "shape file");
  try {
    return parse_shapes_json(document);
  } catch (const std::invalid_argument& error) {
    throw std::invalid_argument(fmt::format("shape file {}: {}", path.string(), error.what()));
  }
}

void to_json(nlohmann::json& j, const Shape& shape) {
  j = {{"pass", names_of(shape.pass).word},
       {"dtype", gen::to_string(shape.dtype)},
       {"head_dim", shape.head_dim},
       {"seqlen", shape.seqlen},
       {"padding_percent", shape.padding_percent},
       {"batch", shape.batch},
       {"heads_q", shape.heads_q},
       {"heads_kv", shape.heads_kv},
       {"causal", shape.causal},
       {"sigmoid", shape.sigmoid == gen::SigmoidMode::fast ? "fast" : "accurate"}};
  if (shape.pass == Pass::decode) {
    j["decode_rows"] = shape.decode_rows;
    j["block_size"] = shape.block_size;
  }
}

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = {"quick", "paper", "decode"};
  return names;
}

std::vector<Shape> preset_shapes(std::string_view name) {
  std::vector<Shape> shapes;
  const auto add = [&](Pass pass, gen::DType dtype, int head_dim, int seqlen, int padding) {
    Shape shape;
    shape.pass = pass;
    shape.dtype = dtype;
    shape.head_dim = head_dim;
    shape.seqlen = seqlen;
    shape.padding_percent = padding;
    shapes.push_back(resolved(shape));
  };
  if (name == "quick") {
    add(Pass::forward, gen::DType::bf16, 128, 4096, 0);
    add(Pass::forward, gen::DType::bf16, 64, 1024, 0);
    add(Pass::forward, gen::DType::bf16, 128, 2048, 25);
    add(Pass::backward, gen::DType::bf16, 128, 4096, 0);
    return shapes;
  }
  if (name == "paper") {
    for (const Pass pass : {Pass::forward, Pass::backward}) {
      for (const gen::DType dtype : {gen::DType::bf16, gen::DType::fp16}) {
        for (const int head_dim : {64, 128}) {
          for (const int seqlen : {512, 1024, 2048, 4096, 8192, 16384}) {
            for (const int padding : {0, 25, 50}) add(pass, dtype, head_dim, seqlen, padding);
          }
        }
      }
    }
    return shapes;
  }
  if (name == "decode") {
    for (const int block_size : {0, 16, 256}) {
      for (const int batch : {1, 16, 64}) {
        for (const int seqlen : {1024, 4096, 16384, 65536, 131072}) {
          Shape shape;
          shape.pass = Pass::decode;
          shape.seqlen = seqlen;
          shape.batch = batch;
          shape.heads_q = 32;
          shape.heads_kv = 8;
          shape.causal = true;
          shape.block_size = block_size;
          const std::optional<std::int64_t> bytes = tensor_bytes(shape);
          if (bytes && *bytes <= kMaxShapeBytes) shapes.push_back(resolved(shape));
        }
      }
    }
    return shapes;
  }
  throw std::invalid_argument(
      fmt::format("unknown preset '{}' (known: {})", name, fmt::join(preset_names(), ", ")));
}

std::string Task::name() const {
  if (shape.pass != Pass::backward) return to_string(shape);
  return fmt::format("{} {}", to_string(shape), gen::to_string(direction));
}

double Task::flops() const {
  if (shape.pass == Pass::decode) {
    // Row i of decode_rows sits at position len - decode_rows + i and sees the keys up to it
    // under a causal mask, every key otherwise.
    const double rows = shape.decode_rows;
    const double hidden = shape.causal ? rows * (rows - 1) / 2.0 : 0.0;
    double pairs = 0.0;
    for (int b = 0; b < shape.batch; ++b) {
      const double length = lengths.empty() ? shape.seqlen : lengths[b];
      pairs += rows * length - hidden;
    }
    return 4.0 * shape.heads_q * shape.head_dim * pairs;
  }
  double pairs = 0.0;
  if (lengths.empty()) {
    pairs = double(shape.batch) * shape.seqlen * shape.seqlen;
  } else {
    for (const int length : lengths) pairs += double(length) * length;
  }
  double forward = 4.0 * shape.heads_q * shape.head_dim * pairs;
  if (shape.causal) forward /= 2.0;
  return shape.pass == Pass::forward ? forward : 2.5 * forward;
}

namespace {

// The fields a forward and a KV-cache call of a shape share: sizes, mask and sigmoid.
template <class Args>
void set_problem(Args& args, const Shape& shape) {
  args.dtype = shape.dtype == gen::DType::bf16 ? DType::bf16 : DType::fp16;
  args.batch = shape.batch;
  args.heads_q = shape.heads_q;
  args.heads_kv = shape.heads_kv;
  args.head_dim = shape.head_dim;
  args.causal = shape.causal;
  args.sigmoid =
      shape.sigmoid == gen::SigmoidMode::fast ? SigmoidMode::fast : SigmoidMode::accurate;
}

}  // namespace

ForwardArgs forward_args(const Shape& shape, const ShapeTensors& tensors) {
  ForwardArgs args;
  set_problem(args, shape);
  args.max_seqlen_q = shape.seqlen;
  args.max_seqlen_k = shape.seqlen;
  args.q = bthd(tensors.q, shape.seqlen, shape.heads_q, shape.head_dim);
  args.k = bthd(tensors.k, shape.seqlen, shape.heads_kv, shape.head_dim);
  args.v = bthd(tensors.v, shape.seqlen, shape.heads_kv, shape.head_dim);
  args.out = bthd(tensors.out, shape.seqlen, shape.heads_q, shape.head_dim);
  args.seq_lens_q = tensors.lengths;
  args.seq_lens_k = tensors.lengths;
  return args;
}

KvCacheArgs kvcache_args(const Shape& shape, const ShapeTensors& tensors) {
  KvCacheArgs args;
  set_problem(args, shape);
  args.seqlen_q = shape.decode_rows;
  args.q = bthd(tensors.q, shape.decode_rows, shape.heads_q, shape.head_dim);
  args.out = bthd(tensors.out, shape.decode_rows, shape.heads_q, shape.head_dim);
  if (shape.block_size > 0) {
    args.k_cache = bthd(tensors.k, shape.block_size, shape.heads_kv, shape.head_dim);
    args.v_cache = bthd(tensors.v, shape.block_size, shape.heads_kv, shape.head_dim);
    args.block_table = tensors.block_table;
    args.max_blocks = blocks_per_sequence(shape);
    args.block_table_batch_stride = args.max_blocks;
    args.num_blocks = shape.batch * args.max_blocks;
    args.block_size = shape.block_size;
  } else {
    args.k_cache = bthd(tensors.k, shape.seqlen, shape.heads_kv, shape.head_dim);
    args.v_cache = bthd(tensors.v, shape.seqlen, shape.heads_kv, shape.head_dim);
    args.max_cache_len = shape.seqlen;
  }
  args.cache_seqlens = tensors.lengths;
  // The lengths were written by the tuner and are valid; checking them synchronizes every call.
  args.trust_lengths = true;
  return args;
}

ForwardArgs decode_reference_args(const Shape& shape, const ShapeTensors& tensors) {
  ForwardArgs args = forward_args(shape, tensors);
  args.max_seqlen_q = shape.decode_rows;
  args.q = bthd(tensors.q, shape.decode_rows, shape.heads_q, shape.head_dim);
  args.out = bthd(tensors.out, shape.decode_rows, shape.heads_q, shape.head_dim);
  args.seq_lens_q = nullptr;
  return args;
}

BackwardArgs backward_args(const Shape& shape, const ShapeTensors& tensors) {
  BackwardArgs args;
  args.inputs = forward_args(shape, tensors);
  args.grad_out = bthd(tensors.grad_out, shape.seqlen, shape.heads_q, shape.head_dim);
  args.grad_q = bthd(tensors.grad_q, shape.seqlen, shape.heads_q, shape.head_dim);
  args.grad_k = bthd(tensors.grad_k, shape.seqlen, shape.heads_kv, shape.head_dim);
  args.grad_v = bthd(tensors.grad_v, shape.seqlen, shape.heads_kv, shape.head_dim);
  return args;
}

Task make_task(const Shape& shape, gen::Direction direction, std::vector<int> lengths) {
  Task task;
  task.shape = shape;
  task.direction = direction;
  task.spec = spec_for(shape, direction);
  task.problem =
      direction == gen::Direction::decode
          ? cache::problem_key(
                task.spec,
                policy::decode_lookup_units(shape.batch, shape.heads_kv, shape.decode_rows),
                shape.block_size > 0 ? blocks_per_sequence(shape) * shape.block_size : shape.seqlen)
          : cache::problem_key(task.spec, shape.seqlen, shape.seqlen);
  task.lengths = std::move(lengths);
  return task;
}

std::vector<Task> tasks_for(const Shape& shape) {
  validate(shape);
  const std::vector<int> lengths = draw_lengths(shape);
  if (shape.pass == Pass::forward) return {make_task(shape, gen::Direction::forward, lengths)};
  if (shape.pass == Pass::decode) return {make_task(shape, gen::Direction::decode, lengths)};
  return {make_task(shape, gen::Direction::dkdv, lengths),
          make_task(shape, gen::Direction::dq, lengths)};
}

namespace {

std::optional<Task> decode_task_for_problem(const gen::KernelSpec& spec,
                                            const cache::ProblemKey& problem) {
  if (spec.window || spec.score_mod) return std::nullopt;
  Shape shape;
  shape.pass = Pass::decode;
  shape.dtype = spec.dtype;
  shape.head_dim = spec.head_dim;
  shape.heads_kv = 8;
  shape.heads_q = 4 * shape.heads_kv;
  shape.batch = std::max(1, problem.seqlen_q_bucket / shape.heads_kv);
  shape.seqlen = problem.seqlen_k_bucket;
  shape.block_size = spec.layout == gen::Layout::paged ? 16 : 0;
  shape.causal = spec.causal;
  shape.sigmoid = spec.sigmoid;
  try {
    std::vector<Task> tasks = tasks_for(resolved(shape));
    if (tasks.front().problem == problem) return std::move(tasks.front());
  } catch (const std::invalid_argument&) {
  }
  return std::nullopt;
}

}  // namespace

std::optional<Task> task_for_problem(const cache::ProblemKey& problem) {
  gen::KernelSpec spec;
  try {
    spec = gen::parse_spec(problem.spec);
  } catch (const std::invalid_argument&) {
    return std::nullopt;
  }
  if (spec.direction == gen::Direction::decode) return decode_task_for_problem(spec, problem);
  Shape shape;
  shape.pass = spec.direction == gen::Direction::forward ? Pass::forward : Pass::backward;
  shape.dtype = spec.dtype;
  shape.head_dim = spec.head_dim;
  shape.padding_percent = spec.layout == gen::Layout::padded ? 25 : 0;
  shape.causal = spec.causal;
  shape.sigmoid = spec.sigmoid;
  // The bucket itself gives whole 128-row tiles where it can (x128); one less gives any length.
  for (const int seqlen : {problem.seqlen_q_bucket, problem.seqlen_q_bucket - 1}) {
    shape.seqlen = seqlen;
    std::vector<Task> tasks;
    try {
      tasks = tasks_for(resolved(shape));
    } catch (const std::invalid_argument&) {
      continue;
    }
    for (Task& task : tasks) {
      if (task.problem == problem) return std::move(task);
    }
  }
  return std::nullopt;
}

void to_json(nlohmann::json& j, const Task& task) {
  j = {{"shape", task.shape},
       {"direction", gen::to_string(task.direction)},
       {"lengths", task.lengths}};
}

Task task_from_json(const nlohmann::json& j) {
  std::vector<Shape> shapes = parse_shapes_json({{"shapes", {j.at("shape")}}});
  const std::string direction = j.at("direction").get<std::string>();
  gen::Direction parsed = gen::Direction::forward;
  if (direction == "dkdv") {
    parsed = gen::Direction::dkdv;
  } else if (direction == "dq") {
    parsed = gen::Direction::dq;
  } else if (direction == "decode") {
    parsed = gen::Direction::decode;
  } else if (direction != gen::to_string(gen::Direction::forward)) {
    throw std::invalid_argument(fmt::format("unknown task direction '{}'", direction));
  }
  return make_task(shapes.front(), parsed, j.at("lengths").get<std::vector<int>>());
}

}  // namespace sigattn::tune
