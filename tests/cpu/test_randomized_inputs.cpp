// Seeded, reproducible random inputs for what users hand in: variant and spec strings, shape
// strings, tuning documents and shape files (as text and as JSON trees), and the arguments of the
// C ABI. Each mutated input must give a valid result that survives a round trip, or a clear error
// (a message naming what is wrong), never a crash, a hang or a sanitizer report; a sanitizer
// build runs these too. SIGATTN_RANDOM_SEED and SIGATTN_RANDOM_INPUTS change the seed and the
// number of inputs per parser; a failure prints the seed and the input.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sigattn/sigattn.h>

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <sigattn/sigattn.hpp>
#include <string>
#include <vector>

#include "cache/json_file.hpp"
#include "cache/json_io.hpp"
#include "generator/kernel_spec.hpp"
#include "tuner/shapes.hpp"

namespace sigattn {
namespace {

using nlohmann::json;

std::uint64_t setting(const char* name, std::uint64_t fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::stoull(value) : fallback;
}

const std::uint64_t kSeed = setting("SIGATTN_RANDOM_SEED", 20261207);
const int kInputs = static_cast<int>(setting("SIGATTN_RANDOM_INPUTS", 3000));

// Pieces that make parsers take unusual paths: separators, field prefixes, numbers at and past
// the limits, keywords of other fields.
const std::vector<std::string> kTokens = {".",
                                          "/",
                                          "x",
                                          "d",
                                          "L",
                                          "b",
                                          "h",
                                          "pad",
                                          "sm80",
                                          "sm90",
                                          "m",
                                          "n",
                                          "w",
                                          "s",
                                          "0",
                                          "-1",
                                          "8",
                                          "65535",
                                          "65536",
                                          "16777216",
                                          "2147483647",
                                          "2147483648",
                                          "99999999999999999999",
                                          "1e3",
                                          "nan",
                                          "causal",
                                          "accurate",
                                          "atomicdq",
                                          "fwd",
                                          "bwd",
                                          "dkdv",
                                          "dq",
                                          "bf16",
                                          "fp16",
                                          "dense",
                                          "padded",
                                          "varlen",
                                          "x128",
                                          "anylen",
                                          "nomask",
                                          "smod",
                                          "\xff",
                                          std::string(1, '\0'),
                                          " ",
                                          "+8",
                                          "0x10"};

class Mutator {
 public:
  explicit Mutator(std::uint64_t seed) : engine_(seed) {}

  int below(int bound) { return std::uniform_int_distribution<int>(0, bound - 1)(engine_); }
  bool chance(int percent) { return below(100) < percent; }
  std::mt19937_64& engine() { return engine_; }

  // One to four edits: replace, insert or delete characters, insert a token, duplicate or drop
  // a range.
  std::string mutate(std::string text) {
    const int edits = 1 + below(4);
    for (int e = 0; e < edits; ++e) {
      const std::size_t size = text.size();
      const std::size_t at = size == 0 ? 0 : static_cast<std::size_t>(below(int(size) + 1));
      switch (below(6)) {
        case 0:
          if (at < size) text[at] = static_cast<char>(below(256));
          break;
        case 1:
          text.insert(at, 1, static_cast<char>(32 + below(95)));
          break;
        case 2:
          text.erase(at, static_cast<std::size_t>(below(4) + 1));
          break;
        case 3:
          text.insert(at, kTokens[below(int(kTokens.size()))]);
          break;
        case 4:
          if (at < size) text.insert(at, text.substr(at, static_cast<std::size_t>(below(12) + 1)));
          break;
        default:
          text.erase(at);
          break;
      }
    }
    return text;
  }

  // A value of any JSON type, with numbers at and past the limits readers check.
  json random_value() {
    switch (below(10)) {
      case 0:
        return nullptr;
      case 1:
        return chance(50);
      case 2:
        return std::numeric_limits<std::int64_t>::min() + below(3);
      case 3:
        return std::numeric_limits<std::uint64_t>::max() - static_cast<std::uint64_t>(below(3));
      case 4:
        return below(2000) - 1000;
      case 5:
        return std::uniform_real_distribution<double>(-1e6, 1e6)(engine_);
      case 6:
        return kTokens[below(int(kTokens.size()))];
      case 7:
        return json::array({below(10), "x"});
      case 8:
        return json::object({{kTokens[below(int(kTokens.size()))], below(10)}});
      default:
        return std::string(static_cast<std::size_t>(below(300)), 'y');
    }
  }

  // Replaces, removes or adds one member somewhere in the tree.
  void mutate_tree(json& node) {
    if ((node.is_object() || node.is_array()) && !node.empty() && chance(75)) {
      auto it = node.begin();
      std::advance(it, below(int(node.size())));
      if (chance(85)) return mutate_tree(*it);
      if (node.is_object()) {
        node.erase(it.key());
      } else {
        node.erase(static_cast<std::size_t>(std::distance(node.begin(), it)));
      }
      return;
    }
    if (node.is_object() && chance(30)) {
      node[kTokens[below(int(kTokens.size()))]] = random_value();
      return;
    }
    node = random_value();
  }

 private:
  std::mt19937_64 engine_;
};

// Runs `check` on `inputs` random inputs and fails with the seed and input of the first problem.
// `check` returns an empty string for a valid result or a clear error, else what went wrong.
void for_random_inputs(const std::string& what,
                       const std::function<std::string(Mutator&, std::string& input)>& check) {
  Mutator mutator(kSeed ^ std::hash<std::string>{}(what));
  int problems = 0;
  for (int i = 0; i < kInputs && problems < 5; ++i) {
    std::string input;
    std::string problem;
    try {
      problem = check(mutator, input);
    } catch (const std::exception& error) {
      problem = std::string("unexpected exception: ") + error.what();
    }
    if (!problem.empty()) {
      ++problems;
      ADD_FAILURE() << what << ", seed " << kSeed << ", input " << i << ": " << problem
                    << "\ninput: "
                    << json(input).dump(-1, ' ', true, json::error_handler_t::replace);
    }
  }
}

// An error a user can act on: the expected exception type, with a message.
template <class Call>
std::string clear_error_or(Call&& call) {
  try {
    return call();
  } catch (const Error& error) {
    return std::strlen(error.what()) > 0 ? "" : "sigattn::Error without a message";
  } catch (const std::invalid_argument& error) {
    return std::strlen(error.what()) > 0 ? "" : "invalid_argument without a message";
  }
}

TEST(RandomizedInputs, VariantStrings) {
  const std::vector<std::string> seeds = {
      "fwd.bf16.d128.dense.causal.nosmod.fast.anylen/sm80.m128n64w4s2",
      "dkdv.fp16.d64.padded.causal+window.smod.accurate.anylen/sm90.m64n128w12s2.atomicdq",
      "dq.bf16.d256.varlen.window.nosmod.fast.anylen", "fwd.fp16.d8.dense.nomask.nosmod.fast.x128"};
  for_random_inputs("variant", [&](Mutator& m, std::string& input) {
    input = m.mutate(seeds[m.below(int(seeds.size()))]);
    return clear_error_or([&]() -> std::string {
      const gen::ParsedVariant parsed = gen::parse_variant(input);
      if (gen::parse_spec(gen::to_string(parsed.spec)) != parsed.spec) return "spec round trip";
      if (parsed.tile && gen::parse_tile(gen::to_string(*parsed.tile)) != *parsed.tile) {
        return "tile round trip";
      }
      return {};
    });
  });
}

TEST(RandomizedInputs, ShapeStrings) {
  const std::vector<std::string> seeds = {"fwd.bf16.d128.L4096.pad25.b4.h16x4.causal.accurate",
                                          "bwd.fp16.d64.L512", "fwd.bf16.d256.L16777216.b1.h1",
                                          "bwd.bf16.d128.L4096.b65535.h65535"};
  for_random_inputs("shape", [&](Mutator& m, std::string& input) {
    input = m.mutate(seeds[m.below(int(seeds.size()))]);
    return clear_error_or([&]() -> std::string {
      const tune::Shape shape = tune::parse_shape(input);
      if (tune::parse_shape(tune::to_string(shape)) != shape) return "round trip";
      const std::optional<std::int64_t> bytes = tune::tensor_bytes(shape);
      if (!bytes || *bytes > tune::kMaxShapeBytes) return "an oversized shape was accepted";
      return {};
    });
  });
}

json valid_tuning_document() {
  std::ifstream in(std::string(SIGATTN_TEST_DATA_DIR) + "/tuning/valid.json");
  return json::parse(in);
}

// A document that was read must write and read back to the same rows.
std::string tuning_round_trip(const cache::TuningDocument& document) {
  const cache::TuningDocument again =
      cache::parse_tuning_document(cache::to_json(document), "round trip");
  return again.results.size() == document.results.size() &&
                 again.candidates.size() == document.candidates.size()
             ? ""
             : "round trip changed the rows";
}

TEST(RandomizedInputs, TuningDocumentText) {
  const std::string text = valid_tuning_document().dump(1);
  for_random_inputs("tuning text", [&](Mutator& m, std::string& input) {
    input = m.mutate(text);
    return clear_error_or([&] {
      return tuning_round_trip(
          cache::parse_tuning_document(cache::parse_strict_json(input, "fuzz"), "fuzz"));
    });
  });
}

TEST(RandomizedInputs, TuningDocumentTrees) {
  const json document = valid_tuning_document();
  for_random_inputs("tuning tree", [&](Mutator& m, std::string& input) {
    json mutated = document;
    for (int edits = 1 + m.below(3); edits > 0; --edits) m.mutate_tree(mutated);
    input = mutated.dump(-1, ' ', false, json::error_handler_t::replace);
    return clear_error_or(
        [&] { return tuning_round_trip(cache::parse_tuning_document(mutated, "fuzz")); });
  });
}

TEST(RandomizedInputs, ShapeFileTrees) {
  const json document = {{"shapes",
                          {{{"pass", "backward"},
                            {"dtype", "fp16"},
                            {"head_dim", 64},
                            {"seqlen", 2048},
                            {"padding_percent", 50},
                            {"causal", true}},
                           {{"pass", "forward"},
                            {"dtype", "bf16"},
                            {"head_dim", 128},
                            {"seqlen", 1000},
                            {"batch", 2},
                            {"heads_q", 8},
                            {"heads_kv", 2},
                            {"sigmoid", "accurate"}}}}};
  for_random_inputs("shape file", [&](Mutator& m, std::string& input) {
    json mutated = document;
    for (int edits = 1 + m.below(3); edits > 0; --edits) m.mutate_tree(mutated);
    input = mutated.dump(-1, ' ', false, json::error_handler_t::replace);
    return clear_error_or([&]() -> std::string {
      for (const tune::Shape& shape : tune::parse_shapes_json(mutated)) {
        if (tune::parse_shapes_json({{"shapes", {shape}}}).front() != shape) return "round trip";
      }
      return {};
    });
  });
}

// A C caller's argument struct: fields set to extreme or random values, pointers fake (never
// dereferenced: validation rejects them, or the call ends before any launch for want of a
// driver, or at the driver's pointer check), enums as any int.
struct CArgsMutator {
  Mutator& m;

  std::int32_t int32() {
    static const std::int32_t kValues[] = {0,
                                           1,
                                           -1,
                                           7,
                                           8,
                                           64,
                                           128,
                                           256,
                                           4096,
                                           65535,
                                           65536,
                                           1 << 24,
                                           (1 << 24) + 1,
                                           std::numeric_limits<std::int32_t>::max(),
                                           std::numeric_limits<std::int32_t>::min()};
    return m.chance(70) ? kValues[m.below(int(std::size(kValues)))] : m.below(1 << 20) - 1000;
  }
  std::int64_t stride() {
    static const std::int64_t kValues[] = {0,
                                           8,
                                           64,
                                           -8,
                                           12,
                                           1 << 20,
                                           std::numeric_limits<std::int64_t>::max() - 7,
                                           std::numeric_limits<std::int64_t>::min(),
                                           std::int64_t{1} << 40};
    return m.chance(70) ? kValues[m.below(int(std::size(kValues)))] : 8 * std::int64_t{int32()};
  }
  void* pointer() {
    static const std::uintptr_t kValues[] = {0, 0x10000, 0x10008, 0x10002, ~std::uintptr_t{15}};
    return reinterpret_cast<void*>(kValues[m.below(int(std::size(kValues)))]);
  }
  template <class CEnum>
  void enumeration(CEnum& field) {
    const int value = m.chance(50) ? m.below(2) : int32();
    std::memcpy(&field, &value, sizeof(value));
  }
  void tensor(sigattn_tensor& t) {
    switch (m.below(4)) {
      case 0:
        t.data = pointer();
        break;
      case 1:
        t.batch_stride = stride();
        break;
      case 2:
        t.seq_stride = stride();
        break;
      default:
        t.head_stride = stride();
        break;
    }
  }
  void forward(sigattn_forward_args& a) {
    switch (m.below(16)) {
      case 0:
        enumeration(a.dtype);
        break;
      case 1:
        a.batch = int32();
        break;
      case 2:
        a.heads_q = int32();
        break;
      case 3:
        a.heads_kv = int32();
        break;
      case 4:
        a.head_dim = int32();
        break;
      case 5:
        a.max_seqlen_q = int32();
        break;
      case 6:
        a.max_seqlen_k = int32();
        break;
      case 7:
        tensor(m.chance(50) ? a.q : a.out);
        break;
      case 8:
        tensor(m.chance(50) ? a.k : a.v);
        break;
      case 9:
        (m.chance(50) ? a.seq_lens_q : a.seq_lens_k) = static_cast<const int32_t*>(pointer());
        break;
      case 10:
        (m.chance(50) ? a.cu_seqlens_q : a.cu_seqlens_k) = static_cast<const int32_t*>(pointer());
        break;
      case 11:
        a.score_mod = static_cast<const float*>(pointer());
        a.score_mod_batch_stride = stride();
        break;
      case 12:
        a.window_left = int32();
        a.window_right = int32();
        break;
      case 13:
        a.has_scale = 1;
        a.scale = std::bit_cast<float>(static_cast<std::uint32_t>(m.engine()()));
        break;
      case 14:
        a.has_bias = 1;
        a.bias = std::bit_cast<float>(static_cast<std::uint32_t>(m.engine()()));
        break;
      default:
        enumeration(a.sigmoid);
        a.causal = int32();
        break;
    }
  }
};

sigattn_forward_args valid_c_forward_args() {
  sigattn_forward_args args;
  sigattn_forward_args_init(&args);
  args.batch = 2;
  args.heads_q = 4;
  args.heads_kv = 2;
  args.head_dim = 64;
  args.max_seqlen_q = args.max_seqlen_k = 128;
  const auto tensor = [](std::uintptr_t address, int heads) {
    const TensorRef t = bthd(reinterpret_cast<void*>(address), 128, heads, 64);
    return sigattn_tensor{t.data, t.batch_stride, t.seq_stride, t.head_stride};
  };
  args.q = tensor(0x100000, 4);
  args.k = tensor(0x200000, 2);
  args.v = tensor(0x300000, 2);
  args.out = tensor(0x400000, 4);
  return args;
}

std::string describe(const sigattn_tensor& t) {
  return fmt::format("{{{}, {}, {}, {}}}", t.data, t.batch_stride, t.seq_stride, t.head_stride);
}

std::string describe(const sigattn_forward_args& a) {
  int dtype = 0;
  int sigmoid = 0;
  std::memcpy(&dtype, &a.dtype, sizeof(dtype));
  std::memcpy(&sigmoid, &a.sigmoid, sizeof(sigmoid));
  return fmt::format(
      "dtype {}, batch {}, heads {}x{}, head_dim {}, seqlen {}x{}, q {}, k {}, v {}, out {}, "
      "seq_lens {} {}, cu_seqlens {} {}, score_mod {} stride {}, causal {}, window {} {}, "
      "scale {} {}, bias {} {}, sigmoid {}",
      dtype, a.batch, a.heads_q, a.heads_kv, a.head_dim, a.max_seqlen_q, a.max_seqlen_k,
      describe(a.q), describe(a.k), describe(a.v), describe(a.out),
      static_cast<const void*>(a.seq_lens_q), static_cast<const void*>(a.seq_lens_k),
      static_cast<const void*>(a.cu_seqlens_q), static_cast<const void*>(a.cu_seqlens_k),
      static_cast<const void*>(a.score_mod), a.score_mod_batch_stride, a.causal, a.window_left,
      a.window_right, a.has_scale, a.scale, a.has_bias, a.bias, sigmoid);
}

// Every status a call returns is one of the ABI's, and a failure has a message; fake pointers
// never reach a kernel, so no call succeeds.
std::string check_c_status(sigattn_status status) {
  if (status == SIGATTN_OK) return "a call with fake pointers succeeded";
  if (status < SIGATTN_INVALID_ARGUMENT || status > SIGATTN_INTERNAL_ERROR) return "bad status";
  if (std::strlen(sigattn_last_error()) == 0) return "a failure without a message";
  if (status == SIGATTN_INTERNAL_ERROR)
    return std::string("internal error: ") + sigattn_last_error();
  return {};
}

TEST(RandomizedInputs, CApiForwardArguments) {
  for_random_inputs("C forward", [](Mutator& m, std::string& input) {
    sigattn_forward_args args = valid_c_forward_args();
    CArgsMutator mutate{m};
    for (int edits = 1 + m.below(4); edits > 0; --edits) mutate.forward(args);
    input = describe(args);
    return check_c_status(sigattn_forward(&args, nullptr));
  });
}

TEST(RandomizedInputs, CApiBackwardArguments) {
  for_random_inputs("C backward", [](Mutator& m, std::string& input) {
    sigattn_backward_args args;
    sigattn_backward_args_init(&args);
    args.inputs = valid_c_forward_args();
    args.grad_out = args.inputs.out;
    args.grad_q = args.inputs.q;
    args.grad_k = args.inputs.k;
    args.grad_v = args.inputs.v;
    CArgsMutator mutate{m};
    for (int edits = 1 + m.below(4); edits > 0; --edits) {
      if (m.chance(60)) {
        mutate.forward(args.inputs);
      } else {
        mutate.tensor(m.chance(50) ? args.grad_q : (m.chance(50) ? args.grad_k : args.grad_v));
      }
    }
    args.deterministic = m.below(3) - 1;
    input = fmt::format("{}; grad_q {}, grad_k {}, grad_v {}, deterministic {}",
                        describe(args.inputs), describe(args.grad_q), describe(args.grad_k),
                        describe(args.grad_v), args.deterministic);
    return check_c_status(sigattn_backward(&args, nullptr));
  });
}

}  // namespace
}  // namespace sigattn
