/* sigattn C ABI: sigmoid attention forward on device pointers, on the caller's stream and in the
 * caller's current CUDA context. Every call returns a status code; on failure
 * sigattn_last_error() gives a message naming what is wrong (thread-local, valid until the next
 * call on the same thread). Needs nothing but a C compiler: no CUDA headers. */
#ifndef SIGATTN_SIGATTN_H
#define SIGATTN_SIGATTN_H

#include <sigattn/export.h>
#include <sigattn/version.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The same declaration as cuda.h's, so that both headers can be included together. */
typedef struct CUstream_st* CUstream;

typedef enum sigattn_status {
  SIGATTN_OK = 0,
  SIGATTN_INVALID_ARGUMENT = 1,
  SIGATTN_UNSUPPORTED = 2,
  SIGATTN_DRIVER_ERROR = 3,
  SIGATTN_COMPILE_ERROR = 4,
  SIGATTN_NOT_AVAILABLE = 5,
  SIGATTN_INTERNAL_ERROR = 6
} sigattn_status;

typedef enum sigattn_dtype { SIGATTN_BF16 = 0, SIGATTN_FP16 = 1 } sigattn_dtype;
typedef enum sigattn_sigmoid {
  SIGATTN_SIGMOID_FAST = 0,
  SIGATTN_SIGMOID_ACCURATE = 1
} sigattn_sigmoid;

/* A [batch, seq, heads, head_dim] view with the head dimension contiguous. Strides are in
 * elements; BTHD and BHTD are both expressed by choosing the strides. In the varlen layout
 * batch_stride is ignored and seq indexes the packed tokens. */
typedef struct sigattn_tensor {
  void* data;
  int64_t batch_stride;
  int64_t seq_stride;
  int64_t head_stride;
} sigattn_tensor;

typedef struct sigattn_forward_args {
  sigattn_dtype dtype;
  int32_t batch;
  int32_t heads_q;
  int32_t heads_kv;
  int32_t head_dim;
  int32_t max_seqlen_q;
  int32_t max_seqlen_k;
  sigattn_tensor q;
  sigattn_tensor k;
  sigattn_tensor v;
  sigattn_tensor out;
  /* Padded layout: per-sequence valid lengths, device int32[batch]; either may be NULL. */
  const int32_t* seq_lens_q;
  const int32_t* seq_lens_k;
  /* Packed varlen layout: device int32[batch + 1] prefix sums; both or neither. */
  const int32_t* cu_seqlens_q;
  const int32_t* cu_seqlens_k;
  /* Optional fp32 [batch, max_seqlen_k] additive per-key bias, row stride in elements. */
  const float* score_mod;
  int64_t score_mod_batch_stride;
  int32_t causal;
  /* Sliding window in keys left and right of the (bottom-right aligned) diagonal; -1 is none. */
  int32_t window_left;
  int32_t window_right;
  /* Non-zero has_scale / has_bias select the given values over 1/sqrt(d) and -log(len_k). */
  int32_t has_scale;
  float scale;
  int32_t has_bias;
  float bias;
  sigattn_sigmoid sigmoid;
  /* Non-zero skips the host check of the device length arrays (one copy and stream sync per
   * call); lengths are then clamped to [0, max] inside the kernel. */
  int32_t trust_lengths;
} sigattn_forward_args;

/* Fills args with the defaults: no masks, fast sigmoid, window -1/-1, all pointers NULL. */
SIGATTN_API void sigattn_forward_args_init(sigattn_forward_args* args);

SIGATTN_API sigattn_status sigattn_forward(const sigattn_forward_args* args, CUstream stream);

/* Gradients of sigmoid attention. inputs holds exactly what was passed to sigattn_forward
 * (inputs.out is not read: the backward recomputes P from q and k). grad_out is dO, laid out like
 * the output; grad_q, grad_k and grad_v are written in the layouts of q, k and v. With GQA/MQA
 * grad_k and grad_v are summed over the query heads sharing a key/value head. Padded query rows
 * and padded keys receive zero gradients. bias and score_mod are constants: no gradient flows to
 * them. */
typedef struct sigattn_backward_args {
  sigattn_forward_args inputs;
  sigattn_tensor grad_out;
  sigattn_tensor grad_q;
  sigattn_tensor grad_k;
  sigattn_tensor grad_v;
  /* Zero (the default): the fastest split for the problem, which may be the one-pass split, in
   * which dQ is accumulated in fp32 with atomics: grad_q may then differ in the last bits
   * between runs. Non-zero: the same inputs give bit-identical gradients. The one-pass
   * workspace (4 * batch * max_seqlen_q * heads_q * head_dim bytes) is device memory the
   * library keeps per CUDA context and reuses. On a stream that is capturing a CUDA graph the
   * deterministic split runs either way. */
  int32_t deterministic;
} sigattn_backward_args;

/* Fills args->inputs with the forward defaults, every gradient tensor with NULL and
 * deterministic with 0. */
SIGATTN_API void sigattn_backward_args_init(sigattn_backward_args* args);

SIGATTN_API sigattn_status sigattn_backward(const sigattn_backward_args* args, CUstream stream);

/* Attention of a few query rows against a KV cache (sigattn::KvCacheArgs in sigattn.hpp tells
 * every field in full). Sequence b's cache holds cache_seqlens[b] positions; the call writes
 * seqlen_new new keys and values at the positions after them, then attends its seqlen_q queries,
 * the last positions of the cache after the append, to it. */
typedef struct sigattn_kvcache_args {
  sigattn_dtype dtype;
  int32_t batch;
  int32_t heads_q;
  int32_t heads_kv;
  int32_t head_dim;
  int32_t seqlen_q;
  /* [batch, seqlen_q, heads_q, head_dim] */
  sigattn_tensor q;
  sigattn_tensor out;
  /* Contiguous cache (block_table NULL): [batch, max_cache_len, heads_kv, head_dim]. Paged:
   * [num_blocks, block_size, heads_kv, head_dim] (batch_stride steps over blocks) with the device
   * int32 block_table [batch, max_blocks], rows block_table_batch_stride elements apart. */
  sigattn_tensor k_cache;
  sigattn_tensor v_cache;
  int32_t max_cache_len;
  const int32_t* block_table;
  int64_t block_table_batch_stride;
  int32_t max_blocks;
  int32_t num_blocks;
  int32_t block_size;
  /* Device int32 [batch]: cache lengths before the append. Not updated by the call. */
  const int32_t* cache_seqlens;
  /* New keys and values [batch, seqlen_new, heads_kv, head_dim]; data NULL and seqlen_new 0 for
   * none. */
  sigattn_tensor k_new;
  sigattn_tensor v_new;
  int32_t seqlen_new;
  /* Optional fp32 [batch, capacity] additive bias by cache position, row stride in elements. */
  const float* score_mod;
  int64_t score_mod_batch_stride;
  int32_t causal;
  int32_t window_left;
  int32_t window_right;
  /* Non-zero has_scale / has_bias select the given values over 1/sqrt(d) and -log(len), len the
   * cache length after the append (a model trained with a fixed -log(n) needs that bias at every
   * step). */
  int32_t has_scale;
  float scale;
  int32_t has_bias;
  float bias;
  sigattn_sigmoid sigmoid;
  /* Device memory for the split-KV partial outputs (sigattn_kvcache_workspace_bytes); less lowers
   * the split count; NULL: the library's own outside graph capture, no split under capture. */
  void* workspace;
  size_t workspace_bytes;
  /* Non-zero skips the host check of cache_seqlens and block_table; they are then clamped in the
   * kernels (always so under CUDA graph capture). */
  int32_t trust_lengths;
} sigattn_kvcache_args;

/* Fills args with the defaults: causal, fast sigmoid, window -1/-1, all pointers NULL. */
SIGATTN_API void sigattn_kvcache_args_init(sigattn_kvcache_args* args);

SIGATTN_API sigattn_status sigattn_forward_with_kvcache(const sigattn_kvcache_args* args,
                                                        CUstream stream);

/* The workspace bytes that let sigattn_forward_with_kvcache(args) on the current device split as
 * its tile says (0: it runs unsplit). */
SIGATTN_API sigattn_status sigattn_kvcache_workspace_bytes(const sigattn_kvcache_args* args,
                                                           size_t* bytes);

/* The user database (compiled kernels and tuning results) of this process, replacing
 * $SIGATTN_DB and the default location; NULL or "" restores them. */
SIGATTN_API sigattn_status sigattn_set_database_path(const char* path);

/* Online tuning on (non-zero) or off (0); see sigattn::set_online_tuning in sigattn.hpp. The
 * default comes from $SIGATTN_ONLINE_TUNING (1: on). */
SIGATTN_API sigattn_status sigattn_set_online_tuning(int enabled);

/* Where the tile of a forward call comes from (sigattn_explain_forward). The strings are the
 * library's, valid until the next sigattn_explain_forward* call on the same thread. */
typedef struct sigattn_dispatch {
  /* The canonical variant string of the kernel, its tile included (as in logs and `sigattn db
   * show`). */
  const char* variant;
  /* The tile alone, as the variant string writes it. */
  const char* tile;
  /* The level of the tuning lookup chain that chose the tile: "user_db" (a result tuned on this
   * device), "shipped_db" (shipped with the library), "nearest_bucket" (a result of the nearest
   * sequence-length bucket) or "heuristic" (the default tile). */
  const char* served_by;
  /* Why, in words: the row used, or why none served. */
  const char* reason;
} sigattn_dispatch;

/* The tile sigattn_forward(args) would run on the current CUDA device, found without compiling
 * or launching anything; args is validated as sigattn_forward validates it. Needs the CUDA
 * driver and a current context (SIGATTN_NOT_AVAILABLE or SIGATTN_DRIVER_ERROR without them). */
SIGATTN_API sigattn_status sigattn_explain_forward(const sigattn_forward_args* args,
                                                   sigattn_dispatch* out);

/* A device described instead of asked: its architecture (one `sigattn compile --arch` accepts,
 * e.g. "sm_80", "sm_89", "sm_90a", "sm_100a" or "sm_120a"), and the name and SM count that tuning
 * rows of exactly that device carry (NULL or "" and 0: rows of other devices of the architecture
 * still serve through the nearest-bucket rule). */
typedef struct sigattn_device {
  const char* arch;
  const char* name;
  int32_t sm_count;
} sigattn_device;

/* sigattn_explain_forward for `device` instead of the current one: needs no GPU and no driver.
 * An unknown architecture is SIGATTN_INVALID_ARGUMENT. */
SIGATTN_API sigattn_status sigattn_explain_forward_on(const sigattn_forward_args* args,
                                                      const sigattn_device* device,
                                                      sigattn_dispatch* out);

/* The decode tile (split count included) sigattn_forward_with_kvcache(args) would run on the
 * current CUDA device, found without compiling or launching anything; args is validated as
 * sigattn_forward_with_kvcache validates it. */
SIGATTN_API sigattn_status sigattn_explain_forward_with_kvcache(const sigattn_kvcache_args* args,
                                                                sigattn_dispatch* out);

/* sigattn_explain_forward_with_kvcache for `device`: needs no GPU and no driver. The split count
 * depends on the SM count: device->sm_count must be > 0. */
SIGATTN_API sigattn_status sigattn_explain_forward_with_kvcache_on(const sigattn_kvcache_args* args,
                                                                   const sigattn_device* device,
                                                                   sigattn_dispatch* out);

/* How much the library writes to stderr: each level adds to the one before. Errors are problems
 * that a call cannot report itself; warnings (the default) things that make a call slower or
 * ignore a setting; info one line per new kernel variant in the process: its tile, where the tile
 * came from and where its binary came from; debug more detail (compilations). */
typedef enum sigattn_log_level {
  SIGATTN_LOG_OFF = 0,
  SIGATTN_LOG_ERROR = 1,
  SIGATTN_LOG_WARN = 2,
  SIGATTN_LOG_INFO = 3,
  SIGATTN_LOG_DEBUG = 4
} sigattn_log_level;

/* Sets the level of this process, replacing $SIGATTN_LOG (off, error, warn, info, debug; default
 * warn). A value outside sigattn_log_level is SIGATTN_INVALID_ARGUMENT and changes nothing. */
SIGATTN_API sigattn_status sigattn_set_log_level(int level);
SIGATTN_API sigattn_log_level sigattn_get_log_level(void);

SIGATTN_API const char* sigattn_last_error(void);
/* The version of the loaded library, e.g. "0.1.0" (SIGATTN_VERSION_STRING when it was built). */
SIGATTN_API const char* sigattn_version(void);

#ifdef __cplusplus
}
#endif

#endif /* SIGATTN_SIGATTN_H */
