// The backward pass: the same input validation as the forward, dO and the gradient tensors
// checked like outputs (non-null, aligned, strides in 16-byte units, no overlap), then the
// launches on the caller's stream. Deterministic split: dK/dV (one CTA per key block and kv head,
// summing its GQA group) and dQ (one CTA per query block and head), no atomics. One-pass split:
// the dK/dV kernel also adds dQ into a zeroed fp32 workspace from the scratch pool, and a
// conversion kernel writes grad_q from it.
#include "runtime/backward.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <string>

#include "generator/generator.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/errors.hpp"
#include "runtime/kernel_launch.hpp"
#include "runtime/kernel_params.hpp"
#include "runtime/module_cache.hpp"
#include "runtime/scratch_pool.hpp"
#include "runtime/validation.hpp"

namespace sigattn {
namespace {

// dO and the gradients, over `rows` tokens. dO is read, not written, but is held to the same
// rules as the forward's output, whose place it takes.
void check_gradients(const BackwardArgs& args, const TokenRows& rows, bool varlen) {
  check_outputs(args.inputs,
                {{"grad_out", args.grad_out, false},
                 {"grad_q", args.grad_q, false},
                 {"grad_k", args.grad_k, true},
                 {"grad_v", args.grad_v, true}},
                rows, varlen);
}

// The one-pass split: dK/dV with dQ added atomically into a zeroed fp32 workspace, then its
// conversion into grad_q.
void launch_one_pass(const BackwardArgs& args, const BackwardSpecs& specs, const CallOperands& call,
                     const LoadedKernel& dkdv_kernel, const gen::Variant& dkdv, BwdParams params,
                     CUstream stream) {
  const ForwardArgs& in = args.inputs;
  const LoadedKernel convert = ModuleCache::instance().load(gen::generate_dq_convert(specs.dq));
  // [batch, max_seqlen_q, heads_q, head_dim] fp32. Packed varlen rows are indexed by token, and
  // valid prefix sums keep every token below batch * max_seqlen_q, so one size serves all layouts.
  const std::int64_t row_elements = std::int64_t{in.heads_q} * in.head_dim;
  const std::int64_t words = std::int64_t{in.batch} * in.max_seqlen_q * row_elements;
  ScratchPool::Lease workspace =
      ScratchPool::instance().acquire(static_cast<std::size_t>(words) * sizeof(float), stream);
  params.dq_accum = reinterpret_cast<float*>(workspace.ptr());
  params.dq_accum_batch_stride =
      specs.dq.layout == gen::Layout::varlen ? 0 : in.max_seqlen_q * row_elements;
  params.dq_accum_seq_stride = row_elements;
  params.dq_accum_head_stride = in.head_dim;
  SIGATTN_CU(
      cuda::driver().cuMemsetD32Async(workspace.ptr(), 0, static_cast<std::size_t>(words), stream));
  launch_kernel(dkdv_kernel, dkdv, call, params, stream);
  const unsigned convert_blocks = static_cast<unsigned>(
      (in.max_seqlen_q + gen::kDqConvertRowsPerCta - 1) / gen::kDqConvertRowsPerCta);
  launch(convert, params,
         {convert_blocks, static_cast<unsigned>(in.heads_q), static_cast<unsigned>(in.batch)},
         stream);
}

}  // namespace

BackwardSpecs backward_specs(const BackwardArgs& args) {
  const gen::KernelSpec spec = check_inputs(args.inputs);
  const bool varlen = spec.layout == gen::Layout::varlen;
  check_tensor("grad_out", args.grad_out, varlen);
  check_tensor("grad_q", args.grad_q, varlen);
  check_tensor("grad_k", args.grad_k, varlen);
  check_tensor("grad_v", args.grad_v, varlen);
  check_gradients(args, rows_known_on_host(args.inputs, varlen), varlen);
  BackwardSpecs specs{spec, spec};
  specs.dkdv.direction = gen::Direction::dkdv;
  specs.dq.direction = gen::Direction::dq;
  return specs;
}

namespace {

// Checks every tile before anything is compiled or launched, then launches the split that
// tiles.dkdv selects.
void launch_backward(const BackwardArgs& args, const BackwardSpecs& specs,
                     const BackwardTiles& tiles, CUstream stream) {
  const gen::TileConfig& dkdv = tiles.dkdv;
  const gen::TileConfig& dq = tiles.dq;
  const policy::Target target = current_target();
  const ForwardArgs& in = args.inputs;
  CallOperands call{in, &args.grad_out};
  // Every tile is checked before anything is compiled or launched, so a rejected call leaves the
  // gradients as they were.
  check_tile(specs.dkdv, dkdv, target, call);
  if (!dkdv.atomic_dq) check_tile(specs.dq, dq, target, call);
  check_device_pointers(in, {{"grad_out.data", args.grad_out.data},
                             {"grad_q.data", args.grad_q.data},
                             {"grad_k.data", args.grad_k.data},
                             {"grad_v.data", args.grad_v.data}});
  if (dkdv.atomic_dq && capturing(stream)) {
    throw_invalid(fmt::format(
        "tile {} (the one-pass backward, atomic dQ) cannot run on a stream that is capturing a "
        "CUDA graph: its workspace is ordered with events outside the graph; use a two-kernel "
        "dkdv tile",
        gen::to_string(dkdv)));
  }
  const TokenRows rows = check_lengths_on_device(in, stream);
  const bool varlen = specs.dq.layout == gen::Layout::varlen;
  // The host check left the packed token axis out: it spans the tokens the prefix sums count, or
  // max_seqlen rows when they were not read.
  if (varlen) check_gradients(args, rows, varlen);
  if (rows.counted) {
    call.packed_tokens_q = rows.q;
    call.packed_tokens_k = rows.k;
  }

  const BwdParams params = backward_params(args, specs.dq.layout);
  const gen::Variant dkdv_variant{specs.dkdv, dkdv};
  const LoadedKernel dkdv_kernel = load_kernel(dkdv_variant);
  log_launch(dkdv_variant, tiles.dkdv_origin, dkdv_kernel);
  if (dkdv.atomic_dq) {
    launch_one_pass(args, specs, call, dkdv_kernel, dkdv_variant, params, stream);
    return;
  }
  const gen::Variant dq_variant{specs.dq, dq};
  const LoadedKernel dq_kernel = load_kernel(dq_variant);
  log_launch(dq_variant, tiles.dq_origin, dq_kernel);
  launch_kernel(dkdv_kernel, dkdv_variant, call, params, stream);
  launch_kernel(dq_kernel, dq_variant, call, params, stream);
}

}  // namespace

void backward_with_tiles(const BackwardArgs& args, CUstream stream, const gen::TileConfig& dkdv,
                         const gen::TileConfig& dq) {
  launch_backward(args, backward_specs(args), {dkdv, dq, forced_origin(), forced_origin()}, stream);
}

void backward(const BackwardArgs& args, CUstream stream) {
  const BackwardSpecs specs = backward_specs(args);
  // Under graph capture the workspace could not be ordered against the graph's replays, so the
  // deterministic split runs there whatever the call allows.
  const bool deterministic = args.deterministic || capturing(stream);
  launch_backward(args, specs, chosen_backward_tiles(args, specs, current_target(), deterministic),
                  stream);
}

}  // namespace sigattn
