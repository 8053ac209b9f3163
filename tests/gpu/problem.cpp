// Problem geometry (lengths, strides of full and broadcast tensors, offsets, names) and its random
// inputs on host and device.
#include "problem.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>

namespace sigattn::test {
namespace {

std::string_view storage_name(Storage storage) {
  switch (storage) {
    case Storage::bthd:
      return "bthd";
    case Storage::bhtd:
      return "bhtd";
    case Storage::padded:
      return "padded";
    case Storage::varlen:
      return "varlen";
  }
  return "unknown";
}

// gtest names allow letters, digits and '_': -1 -> "m1", 1.5 -> "1p5", unbounded -> "inf".
std::string name_number(double value) {
  std::string text = fmt::format("{:g}", value);
  std::replace(text.begin(), text.end(), '-', 'm');
  std::replace(text.begin(), text.end(), '.', 'p');
  return text;
}

std::string window_side(int keys) { return keys < 0 ? "inf" : std::to_string(keys); }

std::string joined(const std::vector<int>& values) {
  return fmt::format("{}", fmt::join(values, "_"));
}

std::int64_t prefix(const std::vector<int>& lengths, int b) {
  return std::accumulate(lengths.begin(), lengths.begin() + b, std::int64_t{0});
}

std::vector<std::int32_t> prefix_sums(const std::vector<int>& lengths) {
  std::vector<std::int32_t> sums(lengths.size() + 1, 0);
  std::partial_sum(lengths.begin(), lengths.end(), sums.begin() + 1);
  return sums;
}

TensorRef strided(Storage storage, int rows, int heads, int head_dim) {
  const std::int64_t d = head_dim;
  switch (storage) {
    case Storage::bthd:
    case Storage::padded:
      return {nullptr, rows * heads * d, heads * d, d};
    case Storage::bhtd:
      return {nullptr, heads * rows * d, d, rows * d};
    case Storage::varlen:
      return {nullptr, 0, heads * d, d};
  }
  throw std::invalid_argument("unknown storage");
}

std::string_view broadcast_name(Broadcast broadcast) {
  switch (broadcast) {
    case Broadcast::none:
      return "none";
    case Broadcast::batch:
      return "batch";
    case Broadcast::heads:
      return "heads";
  }
  return "unknown";
}

// Heads a tensor of `heads` heads stores: one when they are broadcast.
int stored_heads(int heads, Broadcast broadcast) {
  return broadcast == Broadcast::heads ? 1 : heads;
}

// `stored` (the strides of one stored sequence or head along the broadcast dimension) with that
// dimension's stride set to zero.
TensorRef broadcast_view(TensorRef stored, Broadcast broadcast) {
  if (broadcast == Broadcast::batch) stored.batch_stride = 0;
  if (broadcast == Broadcast::heads) stored.head_stride = 0;
  return stored;
}

TensorRef input_layout(Storage storage, int rows, int heads, int head_dim, Broadcast broadcast) {
  return broadcast_view(strided(storage, rows, stored_heads(heads, broadcast), head_dim),
                        broadcast);
}

// Stored elements of a tensor of `heads` heads and `len` rows per sequence (varlen: the packed
// `lengths`).
std::int64_t tensor_elements(const Problem& p, int len, const std::vector<int>& lengths, int heads,
                             Broadcast broadcast) {
  const int sequences = broadcast == Broadcast::batch ? 1 : p.batch;
  const std::int64_t rows =
      p.storage == Storage::varlen ? prefix(lengths, p.batch) : std::int64_t{sequences} * len;
  return rows * stored_heads(heads, broadcast) * p.head_dim;
}

// Element offset of (sequence b, row t, head h) in `layout`, a tensor of the q side (q, out, dO,
// dQ) or the kv side.
std::int64_t tensor_offset(const Problem& p, const TensorRef& layout, bool q_side, int b, int t,
                           int h) {
  if (p.storage == Storage::varlen) {
    const std::int64_t token = q_side ? p.token_start_q(b) : p.token_start_k(b);
    return (token + t) * layout.seq_stride + h * layout.head_stride;
  }
  return b * layout.batch_stride + t * layout.seq_stride + h * layout.head_stride;
}

template <class T>
cuda::DeviceBuffer upload_vector(const std::vector<T>& host) {
  cuda::DeviceBuffer buffer(host.size() * sizeof(T));
  buffer.upload(host.data(), host.size() * sizeof(T));
  return buffer;
}

}  // namespace

std::string Problem::name() const {
  std::string text = fmt::format("{}_d{}_{}_b{}_h{}x{}", dtype == DType::bf16 ? "bf16" : "fp16",
                                 head_dim, storage_name(storage), batch, heads_q, heads_kv);
  if (storage != Storage::varlen) text += fmt::format("_q{}_k{}", len_q, len_k);
  if (!lens_q.empty()) text += "_lq" + joined(lens_q);
  if (!lens_k.empty()) text += "_lk" + joined(lens_k);
  if (causal) text += "_causal";
  if (window_left >= 0 || window_right >= 0) {
    text += fmt::format("_win{}_{}", window_side(window_left), window_side(window_right));
  }
  if (scale) text += "_scale" + name_number(*scale);
  if (bias) text += "_bias" + name_number(*bias);
  if (score_mod) text += "_smod";
  text += sigmoid == SigmoidMode::fast ? "_fast" : "_accurate";
  if (q_broadcast != Broadcast::none) text += fmt::format("_qbcast{}", broadcast_name(q_broadcast));
  if (kv_broadcast != Broadcast::none) {
    text += fmt::format("_kvbcast{}", broadcast_name(kv_broadcast));
  }
  return text;
}

void PrintTo(const Problem& problem, std::ostream* os) { *os << problem.name(); }

int Problem::max_seqlen_q() const {
  return storage == Storage::varlen ? *std::max_element(lens_q.begin(), lens_q.end()) : len_q;
}

int Problem::max_seqlen_k() const {
  return storage == Storage::varlen ? *std::max_element(lens_k.begin(), lens_k.end()) : len_k;
}

int Problem::valid_q(int b) const { return lens_q.empty() ? len_q : lens_q[b]; }
int Problem::valid_k(int b) const { return lens_k.empty() ? len_k : lens_k[b]; }
int Problem::stored_q(int b) const { return storage == Storage::varlen ? lens_q[b] : len_q; }
int Problem::stored_k(int b) const { return storage == Storage::varlen ? lens_k[b] : len_k; }
std::int64_t Problem::token_start_q(int b) const { return prefix(lens_q, b); }
std::int64_t Problem::token_start_k(int b) const { return prefix(lens_k, b); }

TensorRef Problem::q_layout() const { return strided(storage, len_q, heads_q, head_dim); }
TensorRef Problem::kv_layout() const { return strided(storage, len_k, heads_kv, head_dim); }

TensorRef Problem::q_input_layout() const {
  return input_layout(storage, len_q, heads_q, head_dim, q_broadcast);
}

TensorRef Problem::kv_input_layout() const {
  return input_layout(storage, len_k, heads_kv, head_dim, kv_broadcast);
}

std::int64_t Problem::q_elements() const {
  return tensor_elements(*this, len_q, lens_q, heads_q, Broadcast::none);
}

std::int64_t Problem::kv_elements() const {
  return tensor_elements(*this, len_k, lens_k, heads_kv, Broadcast::none);
}

std::int64_t Problem::q_input_elements() const {
  return tensor_elements(*this, len_q, lens_q, heads_q, q_broadcast);
}

std::int64_t Problem::kv_input_elements() const {
  return tensor_elements(*this, len_k, lens_k, heads_kv, kv_broadcast);
}

std::int64_t Problem::score_mod_stride() const { return max_seqlen_k() + 3; }

std::int64_t Problem::q_offset(int b, int t, int h) const {
  return tensor_offset(*this, q_layout(), true, b, t, h);
}

std::int64_t Problem::kv_offset(int b, int t, int h) const {
  return tensor_offset(*this, kv_layout(), false, b, t, h);
}

std::int64_t Problem::q_input_offset(int b, int t, int h) const {
  return tensor_offset(*this, q_input_layout(), true, b, t, h);
}

std::int64_t Problem::kv_input_offset(int b, int t, int h) const {
  return tensor_offset(*this, kv_input_layout(), false, b, t, h);
}

float Problem::effective_scale() const {
  return scale.value_or(1.0f / std::sqrt(static_cast<float>(head_dim)));
}

double Problem::work() const {
  double pairs = 0.0;
  for (int b = 0; b < batch; ++b) pairs += double(valid_q(b)) * valid_k(b);
  return 2.0 * pairs * heads_q * head_dim;
}

void Problem::validate() const {
  const auto fail = [this](std::string_view why) {
    throw std::invalid_argument(fmt::format("problem {}: {}", name(), why));
  };
  if (heads_kv < 1 || heads_q % heads_kv != 0) fail("heads_q must be a multiple of heads_kv");
  const auto check_broadcast = [&](Broadcast broadcast, int heads) {
    if (broadcast == Broadcast::batch && (storage == Storage::varlen || batch < 2)) {
      fail("a batch broadcast needs several sequences in bthd, bhtd or padded storage");
    }
    if (broadcast == Broadcast::heads && heads < 2) fail("a head broadcast needs several heads");
  };
  check_broadcast(q_broadcast, heads_q);
  check_broadcast(kv_broadcast, heads_kv);
  const auto check_lengths = [&](const std::vector<int>& lengths, int max_length) {
    if (lengths.empty()) return;
    if (static_cast<int>(lengths.size()) != batch) fail("one length per sequence is needed");
    for (int length : lengths) {
      if (length < 0 || (max_length > 0 && length > max_length)) fail("a length is out of range");
    }
  };
  switch (storage) {
    case Storage::bthd:
    case Storage::bhtd:
      if (!lens_q.empty() || !lens_k.empty()) fail("dense storage has no per-sequence lengths");
      if (len_q < 1 || len_k < 1) fail("dense storage needs len_q and len_k");
      break;
    case Storage::padded:
      if (lens_q.empty() && lens_k.empty()) fail("padded storage needs lens_q or lens_k");
      if (len_q < 1 || len_k < 1) fail("padded storage needs len_q and len_k");
      check_lengths(lens_q, len_q);
      check_lengths(lens_k, len_k);
      break;
    case Storage::varlen:
      if (lens_q.empty() || lens_k.empty()) fail("varlen storage needs lens_q and lens_k");
      check_lengths(lens_q, 0);
      check_lengths(lens_k, 0);
      if (max_seqlen_q() < 1 || max_seqlen_k() < 1) fail("varlen needs a non-empty sequence");
      break;
  }
}

HostInputs make_inputs(const Problem& problem, std::uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto tensor = [&](std::int64_t elements) {
    std::vector<std::uint16_t> bits(elements);
    for (std::uint16_t& value : bits) value = to_bits(problem.dtype, normal(engine));
    return bits;
  };
  HostInputs inputs;
  inputs.q = tensor(problem.q_input_elements());
  inputs.k = tensor(problem.kv_input_elements());
  inputs.v = tensor(problem.kv_input_elements());
  if (problem.score_mod) {
    inputs.score_mod.resize(problem.batch * problem.score_mod_stride());
    for (float& value : inputs.score_mod) value = normal(engine);
  }
  if (problem.storage == Storage::padded) {
    inputs.seq_lens_q.assign(problem.lens_q.begin(), problem.lens_q.end());
    inputs.seq_lens_k.assign(problem.lens_k.begin(), problem.lens_k.end());
  }
  if (problem.storage == Storage::varlen) {
    inputs.cu_seqlens_q = prefix_sums(problem.lens_q);
    inputs.cu_seqlens_k = prefix_sums(problem.lens_k);
  }
  return inputs;
}

ForwardArgs forward_args(const Problem& problem, const DevicePointers& pointers) {
  ForwardArgs args;
  args.dtype = problem.dtype;
  args.batch = problem.batch;
  args.heads_q = problem.heads_q;
  args.heads_kv = problem.heads_kv;
  args.head_dim = problem.head_dim;
  args.max_seqlen_q = problem.max_seqlen_q();
  args.max_seqlen_k = problem.max_seqlen_k();
  const auto tensor = [&](void* data, bool is_q, Broadcast broadcast) {
    const int rows = is_q ? problem.len_q : problem.len_k;
    const int heads = stored_heads(is_q ? problem.heads_q : problem.heads_kv, broadcast);
    // The dense layouts go through the library's own stride helpers, which the host-side
    // offsets (Problem::q_offset, kv_offset and their input forms) then check.
    TensorRef ref = problem.storage == Storage::bthd ? bthd(data, rows, heads, problem.head_dim)
                    : problem.storage == Storage::bhtd
                        ? bhtd(data, rows, heads, problem.head_dim)
                        : strided(problem.storage, rows, heads, problem.head_dim);
    ref.data = data;
    return broadcast_view(ref, broadcast);
  };
  args.q = tensor(pointers.q, true, problem.q_broadcast);
  args.k = tensor(pointers.k, false, problem.kv_broadcast);
  args.v = tensor(pointers.v, false, problem.kv_broadcast);
  args.out = tensor(pointers.out, true, Broadcast::none);
  args.seq_lens_q = pointers.seq_lens_q;
  args.seq_lens_k = pointers.seq_lens_k;
  args.cu_seqlens_q = pointers.cu_seqlens_q;
  args.cu_seqlens_k = pointers.cu_seqlens_k;
  args.score_mod = pointers.score_mod;
  if (pointers.score_mod != nullptr) args.score_mod_batch_stride = problem.score_mod_stride();
  args.causal = problem.causal;
  args.window_left = problem.window_left;
  args.window_right = problem.window_right;
  args.scale = problem.scale;
  args.bias = problem.bias;
  args.sigmoid = problem.sigmoid;
  return args;
}

ForwardArgs placeholder_args(const Problem& problem, void* placeholder) {
  const auto* lengths = static_cast<const std::int32_t*>(placeholder);
  const bool padded = problem.storage == Storage::padded;
  const bool varlen = problem.storage == Storage::varlen;
  DevicePointers pointers;
  pointers.q = pointers.k = pointers.v = pointers.out = placeholder;
  pointers.seq_lens_q = padded && !problem.lens_q.empty() ? lengths : nullptr;
  pointers.seq_lens_k = padded && !problem.lens_k.empty() ? lengths : nullptr;
  pointers.cu_seqlens_q = varlen ? lengths : nullptr;
  pointers.cu_seqlens_k = varlen ? lengths : nullptr;
  pointers.score_mod = problem.score_mod ? static_cast<const float*>(placeholder) : nullptr;
  return forward_args(problem, pointers);
}

DeviceInputs upload(const Problem& problem, const HostInputs& inputs) {
  DeviceInputs device;
  device.q = upload_vector(inputs.q);
  device.k = upload_vector(inputs.k);
  device.v = upload_vector(inputs.v);
  device.out = cuda::DeviceBuffer(problem.q_elements() * sizeof(std::uint16_t));
  DevicePointers pointers;
  pointers.q = device.q.get();
  pointers.k = device.k.get();
  pointers.v = device.v.get();
  pointers.out = device.out.get();
  const auto lengths = [](cuda::DeviceBuffer& buffer, const std::vector<std::int32_t>& host) {
    if (host.empty()) return static_cast<const std::int32_t*>(nullptr);
    buffer = upload_vector(host);
    return static_cast<const std::int32_t*>(buffer.get());
  };
  pointers.seq_lens_q = lengths(device.seq_lens_q, inputs.seq_lens_q);
  pointers.seq_lens_k = lengths(device.seq_lens_k, inputs.seq_lens_k);
  pointers.cu_seqlens_q = lengths(device.cu_seqlens_q, inputs.cu_seqlens_q);
  pointers.cu_seqlens_k = lengths(device.cu_seqlens_k, inputs.cu_seqlens_k);
  if (problem.score_mod) {
    device.score_mod = upload_vector(inputs.score_mod);
    pointers.score_mod = static_cast<const float*>(device.score_mod.get());
  }
  device.args = forward_args(problem, pointers);
  return device;
}

std::vector<float> download_output(const Problem& problem, const DeviceInputs& device) {
  std::vector<std::uint16_t> bits(problem.q_elements());
  device.out.download(bits.data(), bits.size() * sizeof(std::uint16_t));
  std::vector<float> values(bits.size());
  std::transform(bits.begin(), bits.end(), values.begin(),
                 [&](std::uint16_t b) { return from_bits(problem.dtype, b); });
  return values;
}

}  // namespace sigattn::test
