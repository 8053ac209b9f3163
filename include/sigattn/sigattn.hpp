// sigattn C++ API: sigmoid attention O = sigma(scale * Q K^T + bias + score_mod) V on device
// pointers, launched on the caller's stream in the caller's current CUDA context. Errors are
// thrown as sigattn::Error carrying a status code and a message that names the bad argument.
#pragma once

#include <sigattn/sigattn.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

namespace sigattn {

enum class Status : int {
  ok = SIGATTN_OK,
  invalid_argument = SIGATTN_INVALID_ARGUMENT,
  unsupported = SIGATTN_UNSUPPORTED,
  driver_error = SIGATTN_DRIVER_ERROR,
  compile_error = SIGATTN_COMPILE_ERROR,
  not_available = SIGATTN_NOT_AVAILABLE,
  internal_error = SIGATTN_INTERNAL_ERROR,
};

class SIGATTN_API Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

enum class DType { bf16 = SIGATTN_BF16, fp16 = SIGATTN_FP16 };
enum class SigmoidMode { fast = SIGATTN_SIGMOID_FAST, accurate = SIGATTN_SIGMOID_ACCURATE };

// A [batch, seq, heads, head_dim] view, head dimension contiguous, strides in elements.
struct TensorRef {
  void* data = nullptr;
  std::int64_t batch_stride = 0;
  std::int64_t seq_stride = 0;
  std::int64_t head_stride = 0;
};

// Contiguous BTHD ([batch, seq, heads, head_dim]) strides.
SIGATTN_API TensorRef bthd(void* data, int seq, int heads, int head_dim);
// Contiguous BHTD ([batch, heads, seq, head_dim]) strides.
SIGATTN_API TensorRef bhtd(void* data, int seq, int heads, int head_dim);

struct ForwardArgs {
  DType dtype = DType::bf16;
  int batch = 0;
  int heads_q = 0;
  int heads_kv = 0;  // heads_q must be a multiple of it (GQA/MQA)
  int head_dim = 0;
  int max_seqlen_q = 0;
  int max_seqlen_k = 0;
  TensorRef q, k, v, out;
  // Padded layout: device int32[batch] valid lengths (either may be null).
  const std::int32_t* seq_lens_q = nullptr;
  const std::int32_t* seq_lens_k = nullptr;
  // Packed varlen layout: device int32[batch + 1] prefix sums (both or neither).
  const std::int32_t* cu_seqlens_q = nullptr;
  const std::int32_t* cu_seqlens_k = nullptr;
  // Optional fp32 [batch, max_seqlen_k] per-key additive bias.
  const float* score_mod = nullptr;
  std::int64_t score_mod_batch_stride = 0;
  bool causal = false;
  int window_left = -1;  // -1: unbounded
  int window_right = -1;
  std::optional<float> scale;  // default 1/sqrt(head_dim)
  std::optional<float> bias;   // default -log(len_k) per sequence
  SigmoidMode sigmoid = SigmoidMode::fast;
  bool trust_lengths = false;  // skip the host check of device length arrays
};

// Runs the forward pass. Compiles the kernel on first use of a variant (cached in memory after).
SIGATTN_API void forward(const ForwardArgs& args, CUstream stream);

// Attention of a few query rows against a KV cache, for inference (decode: seqlen_q = 1;
// speculative decoding and chunked prefill: more), in the spirit of flash_attn_with_kvcache.
// Sequence b's cache holds cache_seqlens[b] positions before the call; the call first writes
// seqlen_new new keys and values (k_new, v_new) at positions cache_seqlens[b] .. + seqlen_new - 1,
// then attends its queries to the cache_seqlens[b] + seqlen_new positions after that append.
// Query i of sequence b sits at position len - seqlen_q + i, len being that length after the
// append: causal hides keys after it, the window keys more than window_left before or
// window_right after it. cache_seqlens is not updated: advancing it is the caller's step.
struct KvCacheArgs {
  DType dtype = DType::bf16;
  int batch = 0;
  int heads_q = 0;
  int heads_kv = 0;  // heads_q must be a multiple of it (GQA/MQA)
  int head_dim = 0;
  int seqlen_q = 0;  // query rows per sequence
  // [batch, seqlen_q, heads_q, head_dim] views.
  TensorRef q, out;
  // The cache. Contiguous (block_table null): [batch, max_cache_len, heads_kv, head_dim] views.
  // Paged: [num_blocks, block_size, heads_kv, head_dim] views, whose batch_stride steps from one
  // block to the next, and block_table, device int32 [batch, max_blocks] (row stride
  // block_table_batch_stride elements): entry [b][i] is the block that holds positions
  // [i * block_size, (i + 1) * block_size) of sequence b (vLLM's layout).
  TensorRef k_cache, v_cache;
  int max_cache_len = 0;
  const std::int32_t* block_table = nullptr;
  std::int64_t block_table_batch_stride = 0;
  int max_blocks = 0;
  int num_blocks = 0;
  int block_size = 0;
  // Device int32 [batch]: each sequence's cache length before this call's append.
  const std::int32_t* cache_seqlens = nullptr;
  // New keys and values, [batch, seqlen_new, heads_kv, head_dim] views; data null and seqlen_new
  // 0 when the call appends nothing.
  TensorRef k_new, v_new;
  int seqlen_new = 0;
  // Optional fp32 [batch, capacity] additive bias by cache position (capacity: max_cache_len, or
  // max_blocks * block_size).
  const float* score_mod = nullptr;
  std::int64_t score_mod_batch_stride = 0;
  bool causal = true;
  int window_left = -1;  // -1: unbounded
  int window_right = -1;
  std::optional<float> scale;  // default 1/sqrt(head_dim)
  // Default -log(len), len the cache length after the append, per sequence. A model trained
  // with a fixed bias -log(n) needs that value at every decode step: pass it here.
  std::optional<float> bias;
  SigmoidMode sigmoid = SigmoidMode::fast;
  // Device memory (16-byte aligned) for the split-KV partial outputs: kvcache_workspace_bytes(args)
  // bytes lets the call split as its tile says; less lowers the split count to what fits. Null:
  // the library's own memory outside CUDA graph capture, and no split under capture.
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  // Skip the host check of cache_seqlens and block_table (one copy and stream sync per call);
  // lengths are then clamped to [0, capacity - seqlen_new] and block table entries to
  // [0, num_blocks) inside the kernels. Under CUDA graph capture the check is always skipped.
  bool trust_lengths = false;
};

// Appends k_new/v_new into the cache and runs the attention, on `stream`, without synchronizing
// the host when trust_lengths is set or the stream is capturing: lengths are read on the device, so
// a captured graph replays with whatever cache_seqlens and block_table hold then.
SIGATTN_API void forward_with_kvcache(const KvCacheArgs& args, CUstream stream);

// The workspace bytes that let forward_with_kvcache(args) on the current device split the cache as
// its tile says (0 when it runs unsplit).
SIGATTN_API std::size_t kvcache_workspace_bytes(const KvCacheArgs& args);

// How forward() chose the kernel of a call: the variant launched, its tile, which level of the
// tuning lookup chose the tile ("user_db", "shipped_db", "nearest_bucket" or "heuristic") and why.
struct Dispatch {
  std::string variant;
  std::string tile;
  std::string served_by;
  std::string reason;
};

// A device to explain a call for without asking the GPU: its architecture (one `sigattn compile
// --arch` accepts, e.g. "sm_80", "sm_89", "sm_90a", "sm_100a", "sm_120a"), and the name and SM
// count that tuning rows of exactly that device carry (empty and 0: rows of other devices of the
// arch serve through the nearest bucket).
struct DeviceDescription {
  std::string arch;
  std::string name;
  int sm_count = 0;
};

// The choice forward(args) makes on the current device, without compiling or launching anything.
SIGATTN_API Dispatch explain_forward(const ForwardArgs& args);
// The same choice on a described device: needs no GPU. Throws Error(invalid_argument) for an
// unknown architecture.
SIGATTN_API Dispatch explain_forward(const ForwardArgs& args, const DeviceDescription& device);
// The choice forward_with_kvcache(args) makes on the current device (the decode tile, its split
// count included), without compiling or launching anything.
SIGATTN_API Dispatch explain_forward_with_kvcache(const KvCacheArgs& args);
// The same on a described device: needs no GPU. The split count depends on the SM count, so
// device.sm_count must be given (> 0).
SIGATTN_API Dispatch explain_forward_with_kvcache(const KvCacheArgs& args,
                                                  const DeviceDescription& device);
// The choice of the last successful forward() on this thread (empty fields before the first).
SIGATTN_API Dispatch last_dispatch();

// The user database (compiled kernels and tuning results) of this process: replaces $SIGATTN_DB
// and the default location; an empty path restores them.
SIGATTN_API void set_database_path(const std::string& path);

// Online tuning (off unless $SIGATTN_ONLINE_TUNING is 1): a forward() whose tile came from the
// heuristic default queues its shape for a background tuning run (the `sigattn tune` program in a
// child process, a few candidates, at most five minutes) into the user database; later calls use
// the winner. Dense and padded calls with equal query and key lengths, no window, no score_mod.
SIGATTN_API void set_online_tuning(bool enabled);

// Gradients of sigmoid attention. `inputs` holds exactly what was passed to forward();
// inputs.out is not read (P is recomputed from q and k). grad_out (dO) is laid out like the
// output; grad_q, grad_k, grad_v like q, k, v. With GQA/MQA grad_k and grad_v are summed over
// the query heads sharing a key/value head. Padded query rows and padded keys get zero gradients.
// bias and score_mod are constants: no gradient flows to them.
struct BackwardArgs {
  ForwardArgs inputs;
  TensorRef grad_out, grad_q, grad_k, grad_v;
  // false (the default): the fastest split for the problem, which may be the one-pass split, in
  // which the dK/dV kernel also adds dQ into an fp32 workspace with atomics: grad_q may then
  // differ in the last bits between runs (grad_k and grad_v stay bit-identical). The workspace
  // (4 * batch * max_seqlen_q * heads_q * head_dim bytes) is device memory the library keeps per
  // CUDA context and reuses across calls. true: the same inputs give bit-identical gradients (a
  // dK/dV kernel, then a dQ kernel). On a stream that is capturing a CUDA graph the
  // deterministic split runs either way.
  bool deterministic = false;
};

SIGATTN_API void backward(const BackwardArgs& args, CUstream stream);

// How much the library writes to stderr (see sigattn_log_level in sigattn.h). The level starts
// from $SIGATTN_LOG (default warn).
enum class LogLevel : int {
  off = SIGATTN_LOG_OFF,
  error = SIGATTN_LOG_ERROR,
  warn = SIGATTN_LOG_WARN,
  info = SIGATTN_LOG_INFO,
  debug = SIGATTN_LOG_DEBUG,
};

// Throws Error(invalid_argument) for a value outside LogLevel.
SIGATTN_API void set_log_level(LogLevel level);
SIGATTN_API LogLevel log_level();

// The version of the loaded library, the same string as sigattn_version().
SIGATTN_API const char* version() noexcept;

}  // namespace sigattn
