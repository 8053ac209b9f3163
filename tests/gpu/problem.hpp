// A forward problem as the GPU tests describe it (dtype, head dim, storage, lengths, masks, bias,
// score_mod, sigmoid, inputs broadcast through zero strides), the builder of the test tables' rows,
// its name, its random host inputs and their device copies, and the ForwardArgs that describe them
// to the library.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <ostream>
#include <sigattn/sigattn.hpp>
#include <string>
#include <utility>
#include <vector>

#include "numerics.hpp"
#include "runtime/cuda_driver.hpp"

namespace sigattn::test {

// bthd, bhtd: dense tensors, every sequence len_q/len_k long. padded: BTHD storage of
// len_q/len_k rows with per-sequence valid lengths. varlen: packed [tokens, heads, dim].
enum class Storage { bthd, bhtd, padded, varlen };

// An input stored once and read through a zero stride. batch: one sequence's rows serve every
// sequence (batch_stride 0; bthd, bhtd and padded storage). heads: one head serves every head of
// the tensor (head_stride 0). Outputs, dO and the gradients are never broadcast.
enum class Broadcast { none, batch, heads };

struct Problem {
  DType dtype = DType::bf16;
  int head_dim = 64;
  Storage storage = Storage::bthd;
  int batch = 1;  // padded and varlen: the number of per-sequence lengths
  int heads_q = 2;
  int heads_kv = 2;
  int len_q = 0;  // bthd, bhtd, padded: stored rows per sequence; varlen: unused
  int len_k = 0;
  std::vector<int> lens_q;  // padded: valid rows (empty: all len_q); varlen: packed lengths
  std::vector<int> lens_k;
  bool causal = false;
  int window_left = -1;
  int window_right = -1;
  std::optional<float> scale;
  std::optional<float> bias;
  bool score_mod = false;
  SigmoidMode sigmoid = SigmoidMode::accurate;
  Broadcast q_broadcast = Broadcast::none;
  Broadcast kv_broadcast = Broadcast::none;  // k and v alike

  // Unique, readable and usable as a gtest name: "bf16_d64_padded_h8x2_q0_1_77_k5_100_causal".
  std::string name() const;
  int max_seqlen_q() const;
  int max_seqlen_k() const;
  int valid_q(int b) const;  // len_q(b) of the semantics
  int valid_k(int b) const;
  int stored_q(int b) const;  // output rows of sequence b: the stored rows or its packed length
  int stored_k(int b) const;  // key rows of sequence b likewise
  std::int64_t token_start_q(int b) const;  // varlen: first packed row of sequence b
  std::int64_t token_start_k(int b) const;
  // Strides of out, dO and dQ (q_layout) and of dK and dV (kv_layout), which are also those of
  // q, k and v when they are not broadcast; data is null.
  TensorRef q_layout() const;
  TensorRef kv_layout() const;
  // Strides of the inputs q and k/v as stored: zero along a broadcast dimension.
  TensorRef q_input_layout() const;
  TensorRef kv_input_layout() const;
  std::int64_t q_elements() const;  // of q_layout and kv_layout
  std::int64_t kv_elements() const;
  std::int64_t q_input_elements() const;  // stored elements of q and of k (or v)
  std::int64_t kv_input_elements() const;
  std::int64_t score_mod_stride() const;  // padded past max_seqlen_k, so the stride matters
  // Element offset of (sequence b, row t, head h, dim 0) in q_layout / kv_layout, and in the
  // stored inputs (the same offset for every sequence or head a broadcast input shares).
  std::int64_t q_offset(int b, int t, int h) const;
  std::int64_t kv_offset(int b, int t, int h) const;
  std::int64_t q_input_offset(int b, int t, int h) const;
  std::int64_t kv_input_offset(int b, int t, int h) const;
  float effective_scale() const;  // scale, or the default 1/sqrt(head_dim) in fp32
  // Multiply-adds of the score and P.V products over the whole problem.
  double work() const;
  // Throws std::invalid_argument when the description is inconsistent (a broken test table).
  void validate() const;
};

// Builds the rows of the test tables:
// Case(bf16, 64).padded(200, 200, {0, 1, 77}, {5, 200, 0}).heads(8, 2).causal().
class Case {
 public:
  Case(DType dtype, int head_dim) {
    p_.dtype = dtype;
    p_.head_dim = head_dim;
  }
  Case& bthd(int batch, int len_q, int len_k) { return dense(Storage::bthd, batch, len_q, len_k); }
  Case& bhtd(int batch, int len_q, int len_k) { return dense(Storage::bhtd, batch, len_q, len_k); }
  // Stored lengths and per-sequence valid lengths; an empty list leaves that side unset (null).
  Case& padded(int len_q, int len_k, std::vector<int> lens_q, std::vector<int> lens_k) {
    p_.storage = Storage::padded;
    p_.batch = static_cast<int>(std::max(lens_q.size(), lens_k.size()));
    p_.len_q = len_q;
    p_.len_k = len_k;
    p_.lens_q = std::move(lens_q);
    p_.lens_k = std::move(lens_k);
    return *this;
  }
  Case& varlen(std::vector<int> lens_q, std::vector<int> lens_k) {
    p_.storage = Storage::varlen;
    p_.batch = static_cast<int>(lens_q.size());
    p_.lens_q = std::move(lens_q);
    p_.lens_k = std::move(lens_k);
    return *this;
  }
  Case& heads(int q, int kv) {
    p_.heads_q = q;
    p_.heads_kv = kv;
    return *this;
  }
  Case& causal() {
    p_.causal = true;
    return *this;
  }
  Case& window(int left, int right) {
    p_.window_left = left;
    p_.window_right = right;
    return *this;
  }
  Case& scale(float value) {
    p_.scale = value;
    return *this;
  }
  Case& bias(float value) {
    p_.bias = value;
    return *this;
  }
  Case& score_mod() {
    p_.score_mod = true;
    return *this;
  }
  Case& fast() {
    p_.sigmoid = SigmoidMode::fast;
    return *this;
  }
  Case& broadcast_q(Broadcast broadcast) {
    p_.q_broadcast = broadcast;
    return *this;
  }
  Case& broadcast_kv(Broadcast broadcast) {
    p_.kv_broadcast = broadcast;
    return *this;
  }
  operator Problem() const { return p_; }

 private:
  Case& dense(Storage storage, int batch, int len_q, int len_k) {
    p_.storage = storage;
    p_.batch = batch;
    p_.len_q = len_q;
    p_.len_k = len_k;
    return *this;
  }
  Problem p_;
};

// gtest prints parameters with this, so the test names and --gtest_filter see Problem::name().
void PrintTo(const Problem& problem, std::ostream* os);

struct HostInputs {
  std::vector<std::uint16_t> q, k, v;  // dtype bits, as stored (q_input_layout, kv_input_layout)
  std::vector<float> score_mod;        // [batch, score_mod_stride()]
  std::vector<std::int32_t> seq_lens_q, seq_lens_k, cu_seqlens_q, cu_seqlens_k;
};

// Normal(0, 1) inputs rounded to the dtype, and score_mod values, from `seed`.
HostInputs make_inputs(const Problem& problem, std::uint64_t seed);

// Device addresses of a problem's tensors and length arrays; null where it has none.
struct DevicePointers {
  void* q = nullptr;
  void* k = nullptr;
  void* v = nullptr;
  void* out = nullptr;
  const std::int32_t* seq_lens_q = nullptr;
  const std::int32_t* seq_lens_k = nullptr;
  const std::int32_t* cu_seqlens_q = nullptr;
  const std::int32_t* cu_seqlens_k = nullptr;
  const float* score_mod = nullptr;
};

// The library's description of the problem stored at `pointers`.
ForwardArgs forward_args(const Problem& problem, const DevicePointers& pointers);

// The same ForwardArgs with `placeholder` for every pointer the problem uses.
ForwardArgs placeholder_args(const Problem& problem, void* placeholder);

struct DeviceInputs {
  cuda::DeviceBuffer q, k, v, out, seq_lens_q, seq_lens_k, cu_seqlens_q, cu_seqlens_k, score_mod;
  ForwardArgs args;
};

// Copies the inputs to the device and fills args; the output buffer is allocated, not filled.
DeviceInputs upload(const Problem& problem, const HostInputs& inputs);

// Downloads the output and converts it to float.
std::vector<float> download_output(const Problem& problem, const DeviceInputs& device);

// Visits every output element once, in (batch, row, head, dim) order.
template <class Visit>
void for_each_output(const Problem& problem, Visit&& visit) {
  for (int b = 0; b < problem.batch; ++b) {
    for (int t = 0; t < problem.stored_q(b); ++t) {
      for (int h = 0; h < problem.heads_q; ++h) {
        const std::int64_t row = problem.q_offset(b, t, h);
        for (int d = 0; d < problem.head_dim; ++d) {
          visit(Element{row + d, b, t, h, d, t >= problem.valid_q(b)});
        }
      }
    }
  }
}

}  // namespace sigattn::test
