// Host arguments -> the kernels' device parameters (templates/sigattn/*_params.h): the forward's
// and the backward's Params structs, and the TMA maps through which the sm90 kernels stream their
// operands, with the reasons a call's strides keep such maps from describing them.
#pragma once

#include <sigattn/sigattn.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "generator/kernel_spec.hpp"
#include "sigattn/bwd_params.h"
#include "sigattn/decode_params.h"
#include "sigattn/fwd_params.h"
#include "sigattn/fwd_sm90_params.h"

namespace sigattn {

// The forward parameters of a validated call in `layout`.
FwdParams forward_params(const ForwardArgs& args, gen::Layout layout);
// The backward parameters: the inputs' (without an output), dO and the gradients. The one-pass
// split's dQ workspace is left null for its launch to set.
BwdParams backward_params(const BackwardArgs& args, gen::Layout layout);

// The parameters of a validated KV-cache call with `splits` CTAs per (batch, kv head, row block)
// and `row_blocks` row blocks; partial (the split-KV workspace) is left null for the launch to set.
DecodeParams decode_params(const KvCacheArgs& args, int splits, int row_blocks);

// A tensor that a kernel can stream through a TMA map. q and grad_out hold query rows (boxes of
// block_m tokens, heads_q heads), k and v key rows (boxes of block_n tokens, heads_kv heads).
enum class Operand { q, k, v, grad_out };

// "q", "k", "v" or "grad_out": the argument's name.
std::string_view operand_name(Operand operand);

// The operands of one call: the forward's inputs, and in the backward grad_out. In the varlen
// layout, the packed tokens of the query side (q, out, grad_out) and of the key side (k, v) when
// the host has read the prefix sums; 0 when it has not (then at most batch * max_seqlen).
struct CallOperands {
  const ForwardArgs& inputs;
  const TensorRef* grad_out = nullptr;
  std::int64_t packed_tokens_q = 0;
  std::int64_t packed_tokens_k = 0;
};

// A tensor an sm90 kernel streams through a TMA map: its name in messages, its view and its heads.
struct TmaTensor {
  std::string_view name;
  const TensorRef& tensor;
  int heads;
};

// What keeps TMA maps from describing `tensors` (a zero stride over several heads or sequences),
// as "k.batch_stride = 0 over 3 sequences, v.batch_stride = 0 over 3 sequences"; empty when
// nothing does.
std::string tma_obstacles(const std::vector<TmaTensor>& tensors, int batch, bool varlen);
// The same for the `operands` of a call.
std::string tma_obstacles(const CallOperands& call, std::span<const Operand> operands, bool varlen);

// The map of one operand of a call for an sm90 kernel of `tile`: boxes of 64 elements by block_m
// (query side) or block_n (key side) tokens of one head.
TmaDescriptor encode_tma(const CallOperands& call, Operand operand, const gen::TileConfig& tile,
                         bool varlen);

}  // namespace sigattn
