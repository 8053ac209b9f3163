// The kernels' Params structs filled from a call's arguments, and the TMA maps of its operands
// encoded with cuTensorMapEncodeTiled.
#include "runtime/kernel_params.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "runtime/cuda_driver.hpp"
#include "runtime/validation.hpp"

namespace sigattn {
namespace {

// Copies the strides of `t` into the three stride fields of one tensor of a Params struct. The
// varlen layout packs its tokens, so the kernels step by no batch stride there.
void copy_strides(const TensorRef& t, gen::Layout layout, long long& batch_stride,
                  long long& seq_stride, long long& head_stride) {
  batch_stride = layout == gen::Layout::varlen ? 0 : t.batch_stride;
  seq_stride = t.seq_stride;
  head_stride = t.head_stride;
}

// An operand as the TMA encoder sees it: its name, view, heads, token rows per sequence and
// packed tokens (varlen, 0: unknown), and whether its boxes span block_n (key) rather than
// block_m (query) rows.
struct OperandView {
  std::string_view name;
  const TensorRef& tensor;
  int heads;
  int max_seqlen;
  std::int64_t packed_tokens;
  bool key_side;
};

OperandView view_of(const CallOperands& call, Operand operand) {
  const ForwardArgs& in = call.inputs;
  const std::string_view name = operand_name(operand);
  switch (operand) {
    case Operand::q:
      return {name, in.q, in.heads_q, in.max_seqlen_q, call.packed_tokens_q, false};
    case Operand::k:
      return {name, in.k, in.heads_kv, in.max_seqlen_k, call.packed_tokens_k, true};
    case Operand::v:
      return {name, in.v, in.heads_kv, in.max_seqlen_k, call.packed_tokens_k, true};
    case Operand::grad_out:
      break;
  }
  return {name, *call.grad_out, in.heads_q, in.max_seqlen_q, call.packed_tokens_q, false};
}

// The map of q, k or v for the sm90 kernel: boxes of 64 elements (128 bytes, the swizzle span) by
// `box_rows` tokens of one head, 128-byte swizzle, zeros outside the tensor. The varlen layout
// packs every sequence on one token axis (batch extent 1): the tokens the prefix sums count when
// the host read them, so a box reaching past the last sequence reads zeros and not past the
// caller's tensor; else the most there can be, batch * max_seqlen.
TmaDescriptor encode_map(std::string_view name, const TensorRef& t, DType dtype, int head_dim,
                         int max_seqlen, std::int64_t packed_tokens, int heads, int batch,
                         bool varlen, int box_rows) {
  constexpr std::uint64_t kElementBytes = 2;
  const std::uint64_t packed = packed_tokens > 0 ? static_cast<std::uint64_t>(packed_tokens)
                                                 : std::uint64_t(batch) * max_seqlen;
  const std::uint64_t tokens = varlen ? packed : max_seqlen;
  const auto bytes = [](std::int64_t stride) {
    return stride != 0 ? static_cast<cuuint64_t>(stride) * kElementBytes : cuuint64_t{16};
  };
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), tokens,
                              static_cast<cuuint64_t>(heads),
                              varlen ? cuuint64_t{1} : static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {bytes(t.seq_stride), bytes(t.head_stride),
                                 varlen ? cuuint64_t{16} : bytes(t.batch_stride)};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  const CUresult result = cuda::driver().cuTensorMapEncodeTiled(
      &map,
      dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
      t.data, dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) {
    cuda::check(result, fmt::format("cuTensorMapEncodeTiled({})", name).c_str());
  }
  static_assert(sizeof(CUtensorMap) == sizeof(TmaDescriptor));
  TmaDescriptor descriptor;
  std::memcpy(&descriptor, &map, sizeof(descriptor));
  return descriptor;
}

}  // namespace

std::string_view operand_name(Operand operand) {
  switch (operand) {
    case Operand::q:
      return "q";
    case Operand::k:
      return "k";
    case Operand::v:
      return "v";
    case Operand::grad_out:
      break;
  }
  return "grad_out";
}

FwdParams forward_params(const ForwardArgs& args, gen::Layout layout) {
  FwdParams params{};
  params.q = args.q.data;
  params.k = args.k.data;
  params.v = args.v.data;
  params.o = args.out.data;
  copy_strides(args.q, layout, params.q_batch_stride, params.q_seq_stride, params.q_head_stride);
  copy_strides(args.k, layout, params.k_batch_stride, params.k_seq_stride, params.k_head_stride);
  copy_strides(args.v, layout, params.v_batch_stride, params.v_seq_stride, params.v_head_stride);
  copy_strides(args.out, layout, params.o_batch_stride, params.o_seq_stride, params.o_head_stride);
  params.seq_lens_q = args.seq_lens_q;
  params.seq_lens_k = args.seq_lens_k;
  params.cu_seqlens_q = args.cu_seqlens_q;
  params.cu_seqlens_k = args.cu_seqlens_k;
  params.score_mod = args.score_mod;
  params.score_mod_batch_stride = args.score_mod != nullptr ? args.score_mod_batch_stride : 0;
  params.batch = args.batch;
  params.heads_q = args.heads_q;
  params.heads_kv = args.heads_kv;
  params.max_seqlen_q = args.max_seqlen_q;
  params.max_seqlen_k = args.max_seqlen_k;
  params.scale = args.scale.value_or(1.0f / std::sqrt(static_cast<float>(args.head_dim)));
  params.has_bias = args.bias.has_value() ? 1 : 0;
  params.bias = args.bias.value_or(0.0f);
  // With causal set the kernel intersects the causal mask with this window.
  params.window_left = args.window_left;
  params.window_right = args.window_right;
  return params;
}

BwdParams backward_params(const BackwardArgs& args, gen::Layout layout) {
  BwdParams params{};
  params.fwd = forward_params(args.inputs, layout);
  params.fwd.o = nullptr;
  params.dout = args.grad_out.data;
  copy_strides(args.grad_out, layout, params.do_batch_stride, params.do_seq_stride,
               params.do_head_stride);
  params.dq = args.grad_q.data;
  copy_strides(args.grad_q, layout, params.dq_batch_stride, params.dq_seq_stride,
               params.dq_head_stride);
  params.dk = args.grad_k.data;
  copy_strides(args.grad_k, layout, params.dk_batch_stride, params.dk_seq_stride,
               params.dk_head_stride);
  params.dv = args.grad_v.data;
  copy_strides(args.grad_v, layout, params.dv_batch_stride, params.dv_seq_stride,
               params.dv_head_stride);
  return params;
}

DecodeParams decode_params(const KvCacheArgs& args, int splits, int row_blocks) {
  DecodeParams params{};
  params.q = args.q.data;
  params.o = args.out.data;
  params.k = args.k_cache.data;
  params.v = args.v_cache.data;
  params.k_new = args.k_new.data;
  params.v_new = args.v_new.data;
  const gen::Layout dense = gen::Layout::dense;
  copy_strides(args.q, dense, params.q_batch_stride, params.q_seq_stride, params.q_head_stride);
  copy_strides(args.out, dense, params.o_batch_stride, params.o_seq_stride, params.o_head_stride);
  copy_strides(args.k_cache, dense, params.k_batch_stride, params.k_seq_stride,
               params.k_head_stride);
  copy_strides(args.v_cache, dense, params.v_batch_stride, params.v_seq_stride,
               params.v_head_stride);
  copy_strides(args.k_new, dense, params.k_new_batch_stride, params.k_new_seq_stride,
               params.k_new_head_stride);
  copy_strides(args.v_new, dense, params.v_new_batch_stride, params.v_new_seq_stride,
               params.v_new_head_stride);
  params.cache_seqlens = args.cache_seqlens;
  params.block_table = args.block_table;
  params.block_table_batch_stride = args.block_table_batch_stride;
  params.block_size = args.block_size;
  params.num_blocks = args.num_blocks;
  params.capacity = kvcache_capacity(args);
  params.seqlen_new = args.seqlen_new;
  params.score_mod = args.score_mod;
  params.score_mod_batch_stride = args.score_mod != nullptr ? args.score_mod_batch_stride : 0;
  params.batch = args.batch;
  params.heads_q = args.heads_q;
  params.heads_kv = args.heads_kv;
  params.seqlen_q = args.seqlen_q;
  params.splits = splits;
  params.row_blocks = row_blocks;
  params.scale = args.scale.value_or(1.0f / std::sqrt(static_cast<float>(args.head_dim)));
  params.has_bias = args.bias.has_value() ? 1 : 0;
  params.bias = args.bias.value_or(0.0f);
  params.window_left = args.window_left;
  params.window_right = args.window_right;
  return params;
}

// A TMA tensor map over (head_dim, tokens, heads, batch) needs every stride a nonzero multiple of
// 16 bytes: a zero stride over more than one head or sequence (one K/V row broadcast to every
// head, say) has none. Strides of extent-1 dimensions are never used and are replaced.
std::string tma_obstacles(const std::vector<TmaTensor>& tensors, int batch, bool varlen) {
  std::vector<std::string> found;
  for (const TmaTensor& t : tensors) {
    if (t.tensor.seq_stride == 0) found.push_back(fmt::format("{}.seq_stride = 0", t.name));
    if (t.tensor.head_stride == 0 && t.heads > 1) {
      found.push_back(fmt::format("{}.head_stride = 0 over {} heads", t.name, t.heads));
    }
    if (!varlen && t.tensor.batch_stride == 0 && batch > 1) {
      found.push_back(fmt::format("{}.batch_stride = 0 over {} sequences", t.name, batch));
    }
  }
  return fmt::format("{}", fmt::join(found, ", "));
}

std::string tma_obstacles(const CallOperands& call, std::span<const Operand> operands,
                          bool varlen) {
  std::vector<TmaTensor> tensors;
  for (const Operand operand : operands) {
    const OperandView view = view_of(call, operand);
    tensors.push_back({view.name, view.tensor, view.heads});
  }
  return tma_obstacles(tensors, call.inputs.batch, varlen);
}

TmaDescriptor encode_tma(const CallOperands& call, Operand operand, const gen::TileConfig& tile,
                         bool varlen) {
  const ForwardArgs& in = call.inputs;
  const OperandView view = view_of(call, operand);
  return encode_map(view.name, view.tensor, in.dtype, in.head_dim, view.max_seqlen,
                    view.packed_tokens, view.heads, in.batch, varlen,
                    view.key_side ? tile.block_n : tile.block_m);
}

}  // namespace sigattn
