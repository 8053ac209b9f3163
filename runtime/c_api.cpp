// The C ABI: sigattn_forward_args / sigattn_backward_args / sigattn_kvcache_args -> the C++
// argument structs, exceptions
// -> status codes, and the message of the last failure kept per thread for sigattn_last_error().
#include <sigattn/sigattn.h>

#include <cstring>
#include <exception>
#include <sigattn/sigattn.hpp>
#include <string>

namespace {

thread_local std::string last_error;
// What the last sigattn_explain_forward* on this thread found; its strings back sigattn_dispatch.
thread_local sigattn::Dispatch last_explained;

// The value a C enum field holds, read as its bytes: a caller may store any int there, and C++
// must not load a value outside the enumerators as the enum type. Validation rejects it later.
template <class CEnum>
int raw_value(const CEnum& field) {
  static_assert(sizeof(CEnum) == sizeof(int), "C enums of the ABI are int-sized");
  int value = 0;
  std::memcpy(&value, &field, sizeof(value));
  return value;
}

sigattn::TensorRef to_tensor(const sigattn_tensor& tensor) {
  return {tensor.data, tensor.batch_stride, tensor.seq_stride, tensor.head_stride};
}

// The fields that forward and KV-cache calls share, under the same names in the C and C++
// structs: the problem's sizes and the score options.
template <class CArgs, class Args>
void copy_common(const CArgs& c, Args& args) {
  args.dtype = static_cast<sigattn::DType>(raw_value(c.dtype));
  args.batch = c.batch;
  args.heads_q = c.heads_q;
  args.heads_kv = c.heads_kv;
  args.head_dim = c.head_dim;
  args.q = to_tensor(c.q);
  args.out = to_tensor(c.out);
  args.score_mod = c.score_mod;
  args.score_mod_batch_stride = c.score_mod_batch_stride;
  args.causal = c.causal != 0;
  args.window_left = c.window_left;
  args.window_right = c.window_right;
  if (c.has_scale != 0) args.scale = c.scale;
  if (c.has_bias != 0) args.bias = c.bias;
  args.sigmoid = static_cast<sigattn::SigmoidMode>(raw_value(c.sigmoid));
  args.trust_lengths = c.trust_lengths != 0;
}

sigattn::ForwardArgs to_forward_args(const sigattn_forward_args& c) {
  sigattn::ForwardArgs args;
  copy_common(c, args);
  args.max_seqlen_q = c.max_seqlen_q;
  args.max_seqlen_k = c.max_seqlen_k;
  args.k = to_tensor(c.k);
  args.v = to_tensor(c.v);
  args.seq_lens_q = c.seq_lens_q;
  args.seq_lens_k = c.seq_lens_k;
  args.cu_seqlens_q = c.cu_seqlens_q;
  args.cu_seqlens_k = c.cu_seqlens_k;
  return args;
}

sigattn::KvCacheArgs to_kvcache_args(const sigattn_kvcache_args& c) {
  sigattn::KvCacheArgs args;
  copy_common(c, args);
  args.seqlen_q = c.seqlen_q;
  args.k_cache = to_tensor(c.k_cache);
  args.v_cache = to_tensor(c.v_cache);
  args.max_cache_len = c.max_cache_len;
  args.block_table = c.block_table;
  args.block_table_batch_stride = c.block_table_batch_stride;
  args.max_blocks = c.max_blocks;
  args.num_blocks = c.num_blocks;
  args.block_size = c.block_size;
  args.cache_seqlens = c.cache_seqlens;
  args.k_new = to_tensor(c.k_new);
  args.v_new = to_tensor(c.v_new);
  args.seqlen_new = c.seqlen_new;
  args.workspace = c.workspace;
  args.workspace_bytes = c.workspace_bytes;
  return args;
}

sigattn_status fail(sigattn_status status, const char* message) {
  last_error = message;
  return status;
}

// Runs `call`, turning every exception into a status code and the thread's last error.
template <class Call>
sigattn_status guarded(Call&& call) {
  try {
    call();
    return SIGATTN_OK;
  } catch (const sigattn::Error& error) {
    return fail(static_cast<sigattn_status>(error.status()), error.what());
  } catch (const std::exception& error) {
    return fail(SIGATTN_INTERNAL_ERROR, error.what());
  } catch (...) {
    return fail(SIGATTN_INTERNAL_ERROR, "unknown exception");
  }
}

// Points `out` at the strings of `explain()`'s answer, kept per thread.
template <class Explain>
sigattn_status explained(sigattn_dispatch* out, Explain&& explain) {
  if (out == nullptr) return fail(SIGATTN_INVALID_ARGUMENT, "out is null");
  const sigattn_status status = guarded([&] { last_explained = explain(); });
  if (status != SIGATTN_OK) return status;
  out->variant = last_explained.variant.c_str();
  out->tile = last_explained.tile.c_str();
  out->served_by = last_explained.served_by.c_str();
  out->reason = last_explained.reason.c_str();
  return SIGATTN_OK;
}

// The described-device form of an explain call: the pointers checked, the device converted.
template <class CArgs, class Explain>
sigattn_status explained_on(const CArgs* args, const sigattn_device* device, sigattn_dispatch* out,
                            Explain&& explain) {
  last_error.clear();
  if (args == nullptr) return fail(SIGATTN_INVALID_ARGUMENT, "args is null");
  if (device == nullptr) return fail(SIGATTN_INVALID_ARGUMENT, "device is null");
  if (device->arch == nullptr) return fail(SIGATTN_INVALID_ARGUMENT, "device->arch is null");
  const sigattn::DeviceDescription described{
      device->arch, device->name != nullptr ? device->name : "", device->sm_count};
  return explained(out, [&] { return explain(described); });
}

}  // namespace

extern "C" {

void sigattn_forward_args_init(sigattn_forward_args* args) {
  if (args == nullptr) return;
  std::memset(args, 0, sizeof(*args));
  args->dtype = SIGATTN_BF16;
  args->sigmoid = SIGATTN_SIGMOID_FAST;
  args->window_left = -1;
  args->window_right = -1;
}

sigattn_status sigattn_forward(const sigattn_forward_args* args, CUstream stream) {
  last_error.clear();
  if (args == nullptr) return fail(SIGATTN_INVALID_ARGUMENT, "args is null");
  return guarded([&] { sigattn::forward(to_forward_args(*args), stream); });
}

void sigattn_backward_args_init(sigattn_backward_args* args) {
  if (args == nullptr) return;
  std::memset(args, 0, sizeof(*args));
  sigattn_forward_args_init(&args->inputs);
}

sigattn_status sigattn_backward(const sigattn_backward_args* args, CUstream stream) {
  last_error.clear();
  if (args == nullptr) return fail(SIGATTN_INVALID_ARGUMENT, "args is null");
  return guarded([&] {
    sigattn::BackwardArgs backward;
    backward.inputs = to_forward_args(args->inputs);
    backward.grad_out = to_tensor(args->grad_out);
    backward.grad_q = to_tensor(args->grad_q);
    backward.grad_k = to_tensor(args->grad_k);
    backward.grad_v = to_tensor(args->grad_v);
    backward.deterministic = args->deterministic != 0;
    sigattn::backward(backward, stream);
  });
}

void sigattn_kvcache_args_init(sigattn_kvcache_args* args) {
  if (args == nullptr) return;
  std::memset(args, 0, sizeof(*args));
  args->dtype = SIGATTN_BF16;
  args->sigmoid = SIGATTN_SIGMOID_FAST;
  args->causal = 1;
  args->window_left = -1;
  args->window_right = -1;
}

sigattn_status sigattn_forward_with_kvcache(const sigattn_kvcache_args* args, CUstream stream) {
  last_error.clear();
  if (args == nullptr) return fail(SIGATTN_INVALID_ARGUMENT, "args is null");
  return guarded([&] { sigattn::forward_with_kvcache(to_kvcache_args(*args), stream); });
}

sigattn_status sigattn_kvcache_workspace_bytes(const sigattn_kvcache_args* args, size_t* bytes) {
  last_error.clear();
  if (args == nullptr) return fail(SIGATTN_INVALID_ARGUMENT, "args is null");
  if (bytes == nullptr) return fail(SIGATTN_INVALID_ARGUMENT, "bytes is null");
  return guarded([&] { *bytes = sigattn::kvcache_workspace_bytes(to_kvcache_args(*args)); });
}

sigattn_status sigattn_set_database_path(const char* path) {
  last_error.clear();
  return guarded([&] { sigattn::set_database_path(path != nullptr ? path : ""); });
}

sigattn_status sigattn_set_online_tuning(int enabled) {
  last_error.clear();
  return guarded([&] { sigattn::set_online_tuning(enabled != 0); });
}

sigattn_status sigattn_explain_forward(const sigattn_forward_args* args, sigattn_dispatch* out) {
  last_error.clear();
  if (args == nullptr) return fail(SIGATTN_INVALID_ARGUMENT, "args is null");
  return explained(out, [&] { return sigattn::explain_forward(to_forward_args(*args)); });
}

sigattn_status sigattn_explain_forward_on(const sigattn_forward_args* args,
                                          const sigattn_device* device, sigattn_dispatch* out) {
  return explained_on(args, device, out, [&](const sigattn::DeviceDescription& described) {
    return sigattn::explain_forward(to_forward_args(*args), described);
  });
}

sigattn_status sigattn_explain_forward_with_kvcache(const sigattn_kvcache_args* args,
                                                    sigattn_dispatch* out) {
  last_error.clear();
  if (args == nullptr) return fail(SIGATTN_INVALID_ARGUMENT, "args is null");
  return explained(out,
                   [&] { return sigattn::explain_forward_with_kvcache(to_kvcache_args(*args)); });
}

sigattn_status sigattn_explain_forward_with_kvcache_on(const sigattn_kvcache_args* args,
                                                       const sigattn_device* device,
                                                       sigattn_dispatch* out) {
  return explained_on(args, device, out, [&](const sigattn::DeviceDescription& described) {
    return sigattn::explain_forward_with_kvcache(to_kvcache_args(*args), described);
  });
}

sigattn_status sigattn_set_log_level(int level) {
  last_error.clear();
  return guarded([&] { sigattn::set_log_level(static_cast<sigattn::LogLevel>(level)); });
}

sigattn_log_level sigattn_get_log_level(void) {
  return static_cast<sigattn_log_level>(sigattn::log_level());
}

const char* sigattn_last_error(void) { return last_error.c_str(); }

const char* sigattn_version(void) { return sigattn::version(); }

}  // extern "C"
