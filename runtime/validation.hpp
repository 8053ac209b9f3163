// Validation of the arguments of a call as named checks: each check takes the name of the argument
// it looks at ("q", "grad_k", "cu_seqlens_q") and throws Error(invalid_argument), or
// Error(unsupported) where a valid value is not supported, with a message that starts with it.
// The host checks come first; the device length arrays are read (and the packed outputs checked
// over the tokens they count) just before the launch.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <initializer_list>
#include <sigattn/sigattn.hpp>
#include <string_view>
#include <vector>

#include "generator/kernel_spec.hpp"

namespace sigattn {

// Checks everything about a call's inputs (all arguments but the output) that the host can check
// and returns the forward spec they call for. The forward call checks `out` beside it; the
// backward checks grad_out and the gradients.
gen::KernelSpec check_inputs(const ForwardArgs& args);

// Data non-null and 16-byte aligned; strides non-negative multiples of 8 elements (the batch
// stride is not used, and not checked, in the varlen layout).
void check_tensor(std::string_view name, const TensorRef& tensor, bool varlen);

// The rows of the token axis of the query-side tensors (out, dO, dQ) and of the key-side ones (dK,
// dV): max_seqlen per sequence; in the varlen layout all packed tokens of the call.
struct TokenRows {
  std::int64_t q;
  std::int64_t k;
  bool counted = false;  // q and k are the packed tokens the prefix sums count (read on the host)
};

// The rows the host knows before the device lengths are read. The packed tokens of the varlen
// layout are counted by cu_seqlens on the device: until then the token axis is left out (one row).
TokenRows rows_known_on_host(const ForwardArgs& args, bool varlen);

// An output of a call: written by the kernels, so its elements must not share memory.
struct Output {
  std::string_view name;
  const TensorRef& tensor;
  bool key_side;  // rows of keys and heads_kv heads (dK, dV), else of queries and heads_q
};

// Distinct elements of each output, over `rows` tokens, must not share memory, or rows would be
// written concurrently.
void check_outputs(const ForwardArgs& args, std::initializer_list<Output> outputs,
                   const TokenRows& rows, bool varlen);

// Pointers the CUDA driver does not know (plain host memory, garbage) are refused; null passes.
void check_device_pointer(std::string_view name, const void* pointer);
// Every device pointer of a call: the inputs' data, then `tensors` (named as "out.data"), then
// the length arrays and score_mod.
struct NamedPointer {
  std::string_view name;
  const void* pointer;
};
void check_device_pointers(const ForwardArgs& inputs, std::initializer_list<NamedPointer> tensors);

// Whether `stream` is capturing a CUDA graph: it cannot be synchronized then.
bool capturing(CUstream stream);

// Reads the length arrays (seq_lens_*, cu_seqlens_*) on `stream` and checks them against
// max_seqlen, unless args.trust_lengths is set or the stream is capturing a CUDA graph (the
// kernels clamp the lengths then). Returns the token rows the outputs span: in the varlen layout
// with the prefix sums read, the packed tokens cu_seqlens[batch]; else max_seqlen.
TokenRows check_lengths_on_device(const ForwardArgs& args, CUstream stream);

// Checks prefix sums read from the device (batch + 1 values): they start at 0, do not decrease and
// step by at most `max_seqlen`. Returns the packed tokens, offsets[batch].
std::int64_t check_cu_seqlens(std::string_view name, const std::vector<std::int32_t>& offsets,
                              std::string_view max_name, int max_seqlen);

// ---- KV-cache calls (forward_with_kvcache)

// Positions per sequence of the cache: max_cache_len, or max_blocks * block_size when paged.
int kvcache_capacity(const KvCacheArgs& args);

// Checks everything about a KV-cache call that the host can check and returns the decode spec it
// calls for: padded (a contiguous cache) or paged.
gen::KernelSpec check_kvcache(const KvCacheArgs& args);

// Every device pointer of a KV-cache call.
void check_kvcache_pointers(const KvCacheArgs& args);

// Checks cache lengths and block table entries read from the device: every cache_seqlens[b] in
// [0, capacity - seqlen_new], and the block table entries that sequence b's positions after the
// append use in [0, num_blocks). block_table holds (batch - 1) * block_table_batch_stride +
// max_blocks entries, or none for a contiguous cache.
void check_cache_contents(const KvCacheArgs& args, const std::vector<std::int32_t>& cache_seqlens,
                          const std::vector<std::int32_t>& block_table);

// Reads cache_seqlens and block_table on `stream` and checks them (check_cache_contents), unless
// args.trust_lengths is set or the stream is capturing a CUDA graph (the kernels clamp them then).
void check_kvcache_lengths_on_device(const KvCacheArgs& args, CUstream stream);

}  // namespace sigattn
