// What the tuner tunes: a Shape (a forward, backward or KV-cache decode call as a user makes it:
// dtype, head dim, length, padding, batch, heads, mask, and for decode the query rows and the
// cache's block size), the presets, the shape string and JSON file formats, and the Tasks a shape
// expands into (one per kernel: forward, dkdv and dq, or decode), each with the spec and problem
// key the runtime derives for that call.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <sigattn/sigattn.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "cache/tuning_store.hpp"
#include "generator/kernel_spec.hpp"

namespace sigattn::tune {

enum class Pass { forward, backward, decode };

// The benchmark protocol's defaults (/work/shared/BENCHMARKS.md): 16384 tokens per batch and a
// hidden size of 2048, so batch = 16384 / seqlen and heads = 2048 / head_dim.
inline constexpr int kTokensPerBatch = 16384;
inline constexpr int kHiddenSize = 2048;
// Decode shapes default to this many cached tokens per batch (batch = 65536 / seqlen): where the
// decode benchmark's target says the cache's bandwidth should be reached.
inline constexpr int kDecodeTokensPerBatch = 65536;

struct Shape {
  Pass pass = Pass::forward;
  gen::DType dtype = gen::DType::bf16;
  int head_dim = 128;
  // max_seqlen_q = max_seqlen_k; decode: the cache's capacity per sequence.
  int seqlen = 4096;
  // Per-sequence valid lengths are drawn uniformly from [seqlen * (1 - p/100), seqlen]; 0 is the
  // dense layout, anything else the padded layout. Decode: the cache lengths, drawn alike.
  int padding_percent = 0;
  int batch = 0;     // 0: kTokensPerBatch / seqlen (decode: kDecodeTokensPerBatch), at least 1
  int heads_q = 0;   // 0: kHiddenSize / head_dim (at least 1)
  int heads_kv = 0;  // 0: heads_q
  bool causal = false;
  gen::SigmoidMode sigmoid = gen::SigmoidMode::fast;
  // Decode only: query rows per sequence (1 for a decode step, more for speculative decoding or a
  // prefill chunk; they sit at the end of the cache), and the cache's layout: 0 contiguous, else
  // paged with this many positions a block (a shuffled block table). The timed call appends
  // nothing, so every step sees the same cache.
  int decode_rows = 1;
  int block_size = 0;

  bool operator==(const Shape&) const = default;
};

// The shape with batch and heads filled in from the defaults above.
Shape resolved(Shape shape);

// Throws std::invalid_argument naming the field when the shape cannot be run: unsupported head
// dim, non-positive lengths, padding outside [0, 99], heads_q not a multiple of heads_kv, a grid
// too large for the kernels, or more than kMaxShapeBytes of tensors.
void validate(const Shape& shape);

// Bytes of one copy of the inputs and outputs a shape's call touches; nullopt when the count does
// not fit in 64 bits.
std::optional<std::int64_t> tensor_bytes(const Shape& shape);
inline constexpr std::int64_t kMaxShapeBytes = std::int64_t{16} << 30;

// "fwd.bf16.d128.L4096.pad25.b4.h16x16.causal.accurate": pass (fwd, bwd or dec), dtype, head dim
// and length are required and come first; pad, b (batch), h (heads_q or heads_q x heads_kv),
// causal and accurate may follow in any order, and for dec q (query rows) and paged (block size):
// "dec.bf16.d128.L4096.b16.h32x8.q1.paged16.causal". parse_shape(to_string(s)) == s for a
// resolved shape.
std::string to_string(const Shape& shape);
Shape parse_shape(std::string_view text);

// {"shapes": [{"pass": "forward", "dtype": "bf16", "head_dim": 128, "seqlen": 4096,
//   "padding_percent": 25, "batch": 4, "heads_q": 16, "heads_kv": 16, "causal": false,
//   "sigmoid": "fast"}, ...]}: pass (forward, backward or decode), dtype, head_dim and seqlen are
// required; decode shapes may add "decode_rows" and "block_size". Unknown fields, wrong types and
// invalid shapes are errors naming shapes[i].field.
std::vector<Shape> parse_shapes_json(const nlohmann::json& document);
std::vector<Shape> read_shapes_file(const std::filesystem::path& path);
void to_json(nlohmann::json& j, const Shape& shape);

// "quick": a handful of shapes, minutes on one GPU; "paper": the benchmark protocol's grid
// (d 64/128 x L 512..16384 x padding 0/25/50% x forward/backward x bf16/fp16); "decode": decode
// steps of the decode benchmark (bf16, d 128, GQA 32:8, causal, batch 1/16/64 x cache 1K..128K,
// contiguous and paged by 16 and 256, within kMaxShapeBytes). Throws
// std::invalid_argument naming the known presets for any other name.
std::vector<Shape> preset_shapes(std::string_view name);
const std::vector<std::string>& preset_names();

// Device addresses of one call of a shape: dense BTHD tensors, and the per-sequence valid lengths
// read as both seq_lens_q and seq_lens_k (null for a shape without padding). Decode: q and out
// [batch, decode_rows, heads_q, d], k and v the cache (contiguous [batch, seqlen, heads_kv, d], or
// the paged pool [batch * blocks, block_size, heads_kv, d] with block_table [batch, blocks]),
// lengths the cache lengths (never null).
struct ShapeTensors {
  void* q = nullptr;
  void* k = nullptr;
  void* v = nullptr;
  void* out = nullptr;
  const std::int32_t* lengths = nullptr;
  void* grad_out = nullptr;
  void* grad_q = nullptr;
  void* grad_k = nullptr;
  void* grad_v = nullptr;
  const std::int32_t* block_table = nullptr;
};

// The forward call of a resolved shape on `tensors`, and the backward call whose inputs are that
// forward call's.
ForwardArgs forward_args(const Shape& shape, const ShapeTensors& tensors);
BackwardArgs backward_args(const Shape& shape, const ShapeTensors& tensors);
// The KV-cache call of a resolved decode shape on `tensors`: no append, lengths trusted, the
// split-KV partial outputs in the library's own memory.
KvCacheArgs kvcache_args(const Shape& shape, const ShapeTensors& tensors);
// The forward call the fp32 reference makes of a decode shape: its query rows against a contiguous
// cache (tensors.k and v as [batch, seqlen, heads_kv, d]) of tensors.lengths keys, the rows aligned
// to the end of each cache as the KV-cache call aligns them.
ForwardArgs decode_reference_args(const Shape& shape, const ShapeTensors& tensors);
// Blocks of one sequence in a paged decode shape: ceil(seqlen / block_size).
int blocks_per_sequence(const Shape& shape);

// One kernel of one shape: what a tuning run times candidate tiles for.
struct Task {
  Shape shape;
  gen::Direction direction = gen::Direction::forward;
  gen::KernelSpec spec;       // the spec the runtime derives for this call
  cache::ProblemKey problem;  // spec string and sequence-length buckets
  std::vector<int> lengths;   // per-sequence valid lengths (padded layout), else empty

  // The shape string, followed by the kernel for backward tasks ("bwd.bf16.d128.L4096.b4.h16 dq").
  std::string name() const;
  // Useful floating-point operations of the call being timed: 4 * heads * d * sum(len_q * len_k)
  // for the forward (half of it under a causal mask), 2.5 times that for the backward, whose
  // tasks time the whole backward call; decode counts the (query, key) pairs its rows see.
  double flops() const;
};

// The task of one kernel of a shape; `lengths` as drawn for the shape (see tasks_for).
Task make_task(const Shape& shape, gen::Direction direction, std::vector<int> lengths);

// Forward: one task; backward: dkdv then dq; decode: one. Padded lengths are drawn from a seed
// derived from the shape string, so every process draws the same ones.
std::vector<Task> tasks_for(const Shape& shape);

// A task whose problem key is `problem`, from a shape with the default batch and heads (and 25 %
// padding for the padded layout), for re-measuring a stored result. Nullopt where no shape gives
// the problem: windows, score_mod, the varlen layout, unequal query and key buckets. A decode
// problem gets heads_kv 8 (GQA 32:8 at d = 128, the same group at other head dims) and one query
// row, its batch from the units bucket, its cache from the capacity bucket, paged by 16.
std::optional<Task> task_for_problem(const cache::ProblemKey& problem);

void to_json(nlohmann::json& j, const Task& task);
Task task_from_json(const nlohmann::json& j);

}  // namespace sigattn::tune
