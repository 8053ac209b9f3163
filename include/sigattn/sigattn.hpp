// sigattn C++ API: sigmoid attention O = sigma(scale * Q K^T + bias + score_mod) V on device
// pointers, launched on the caller's stream in the caller's current CUDA context. Errors are
// thrown as sigattn::Error carrying a status code and a message that names the bad argument.
#pragma once

#include <sigattn/sigattn.h>

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
  // true: the same inputs give bit-identical gradients (a dK/dV kernel, then a dQ kernel).
  // false allows the one-pass split, in which the dK/dV kernel also adds dQ into an fp32
  // workspace with atomics: grad_q may then differ in the last bits between runs (grad_k and
  // grad_v stay bit-identical). The workspace (4 * batch * max_seqlen_q * heads_q * head_dim
  // bytes) is device memory the library keeps per CUDA context and reuses across calls. On a
  // stream that is capturing a CUDA graph the deterministic split runs either way.
  bool deterministic = true;
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
