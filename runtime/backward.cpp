// The backward pass: the same input validation as the forward, the gradient tensors checked like
// outputs (non-null, aligned, strides in 16-byte units, no overlap), then the launches on the
// caller's stream. Deterministic split: dK/dV (one CTA per key block and kv head, summing its GQA
// group) and dQ (one CTA per query block and head), no atomics. One-pass split: the dK/dV kernel
// also adds dQ into a zeroed fp32 workspace from the scratch pool, and a conversion kernel writes
// grad_q from it. The sm90 dK/dV kernel (sm_90a) streams Q and dO with TMA maps encoded here.
#include "runtime/backward.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "generator/generator.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/errors.hpp"
#include "runtime/forward.hpp"
#include "runtime/module_cache.hpp"
#include "runtime/persistent_cache.hpp"
#include "runtime/scratch_pool.hpp"
#include "sigattn/bwd_params.h"
#include "sigattn/bwd_sm90_params.h"

namespace sigattn {
namespace {

BwdParams make_bwd_params(const BackwardArgs& args, gen::Layout layout) {
  const bool varlen = layout == gen::Layout::varlen;
  const auto batch_stride = [varlen](const TensorRef& t) { return varlen ? 0 : t.batch_stride; };
  BwdParams params{};
  params.fwd = make_params(args.inputs, layout);
  params.fwd.o = nullptr;
  params.dout = args.grad_out.data;
  params.do_batch_stride = batch_stride(args.grad_out);
  params.do_seq_stride = args.grad_out.seq_stride;
  params.do_head_stride = args.grad_out.head_stride;
  params.dq = args.grad_q.data;
  params.dq_batch_stride = batch_stride(args.grad_q);
  params.dq_seq_stride = args.grad_q.seq_stride;
  params.dq_head_stride = args.grad_q.head_stride;
  params.dk = args.grad_k.data;
  params.dk_batch_stride = batch_stride(args.grad_k);
  params.dk_seq_stride = args.grad_k.seq_stride;
  params.dk_head_stride = args.grad_k.head_stride;
  params.dv = args.grad_v.data;
  params.dv_batch_stride = batch_stride(args.grad_v);
  params.dv_seq_stride = args.grad_v.seq_stride;
  params.dv_head_stride = args.grad_v.head_stride;
  return params;
}

// Throws invalid_argument when `tile` cannot run `spec` on `target`: a violated constraint, or an
// sm90 tile that streams `streamed` through TMA maps while `obstacles` (tma_obstacles) keep the
// maps from describing them.
void check_tile(const gen::KernelSpec& spec, const gen::TileConfig& tile,
                const policy::Target& target, std::string_view streamed,
                const std::string& obstacles) {
  const std::string variant = gen::to_string(gen::Variant{spec, tile});
  if (const std::string why = policy::rejection(spec, tile, target); !why.empty()) {
    throw_invalid(fmt::format("tile {} cannot run {} on {}: {}", gen::to_string(tile), variant,
                              target.arch, why));
  }
  if (tile.family == gen::Family::sm90 && !obstacles.empty()) {
    throw_invalid(fmt::format(
        "tile {} of {} streams {} through TMA maps, which cannot describe a zero stride over "
        "several heads or sequences: {}; a tile of the sm80 family reads such tensors "
        "(backward() chooses one)",
        gen::to_string(tile), variant, streamed, obstacles));
  }
}

LoadedKernel load(const gen::KernelSpec& spec, const gen::TileConfig& tile) {
  return ModuleCache::instance().load(generate_for_launch(gen::Variant{spec, tile}));
}

// Launches with `params` as the kernel's one argument (BwdParams or BwdSm90Params).
template <class Params>
void launch(const LoadedKernel& kernel, Params& params, unsigned grid_x, unsigned grid_y,
            unsigned grid_z, CUstream stream) {
  void* kernel_args[] = {&params};
  SIGATTN_CU(cuda::driver().cuLaunchKernel(
      kernel.function, grid_x, grid_y, grid_z, static_cast<unsigned>(kernel.threads), 1, 1,
      static_cast<unsigned>(kernel.smem_bytes), stream, kernel_args, nullptr));
}

bool capturing(CUstream stream) {
  CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
  SIGATTN_CU(cuda::driver().cuStreamIsCapturing(stream, &capture));
  return capture != CU_STREAM_CAPTURE_STATUS_NONE;
}

unsigned blocks(int length, int block) {
  return static_cast<unsigned>((length + block - 1) / block);
}

// What keeps TMA maps of q and grad_out, which the sm90 dK/dV kernel streams, from describing
// them; empty when nothing does.
std::string dkdv_tma_obstacles(const BackwardArgs& args, bool varlen) {
  const ForwardArgs& in = args.inputs;
  return tma_obstacles({{"q", in.q, in.heads_q}, {"grad_out", args.grad_out, in.heads_q}}, in.batch,
                       varlen);
}

// The same for q, grad_out, k and v, which the sm90 dQ kernel streams.
std::string dq_tma_obstacles(const BackwardArgs& args, bool varlen) {
  const ForwardArgs& in = args.inputs;
  return tma_obstacles({{"q", in.q, in.heads_q},
                        {"grad_out", args.grad_out, in.heads_q},
                        {"k", in.k, in.heads_kv},
                        {"v", in.v, in.heads_kv}},
                       in.batch, varlen);
}

// The dQ launch of the two-kernel split: the sm90 kernel is persistent and takes TMA maps of q,
// grad_out, k and v beside the parameters.
void launch_dq(const LoadedKernel& kernel, const gen::TileConfig& tile, const BwdParams& params,
               const BackwardArgs& args, const gen::KernelSpec& spec, CUstream stream) {
  const ForwardArgs& in = args.inputs;
  const unsigned row_blocks = blocks(in.max_seqlen_q, tile.block_m);
  if (tile.family != gen::Family::sm90) {
    BwdParams copy = params;
    launch(kernel, copy, row_blocks * static_cast<unsigned>(gen::grid_slices(spec)),
           static_cast<unsigned>(in.heads_q), static_cast<unsigned>(in.batch), stream);
    return;
  }
  const bool varlen = spec.layout == gen::Layout::varlen;
  BwdDqSm90Params hopper{};
  hopper.base = params;
  hopper.q = encode_tma("q", in.q, in.dtype, in.head_dim, in.max_seqlen_q, in.heads_q, in.batch,
                        varlen, tile.block_m);
  hopper.dout = encode_tma("grad_out", args.grad_out, in.dtype, in.head_dim, in.max_seqlen_q,
                           in.heads_q, in.batch, varlen, tile.block_m);
  hopper.k = encode_tma("k", in.k, in.dtype, in.head_dim, in.max_seqlen_k, in.heads_kv, in.batch,
                        varlen, tile.block_n);
  hopper.v = encode_tma("v", in.v, in.dtype, in.head_dim, in.max_seqlen_k, in.heads_kv, in.batch,
                        varlen, tile.block_n);
  launch(kernel, hopper, persistent_grid(kernel, tile, row_blocks, in.heads_q, in.batch), 1, 1,
         stream);
}

// The dK/dV launch: the sm90 kernel takes TMA maps of q and grad_out beside the parameters.
void launch_dkdv(const LoadedKernel& kernel, const gen::TileConfig& tile, const BwdParams& params,
                 const BackwardArgs& args, gen::Layout layout, unsigned grid_x, CUstream stream) {
  const ForwardArgs& in = args.inputs;
  const unsigned heads_kv = static_cast<unsigned>(in.heads_kv);
  const unsigned batch = static_cast<unsigned>(in.batch);
  if (tile.family != gen::Family::sm90) {
    BwdParams copy = params;
    launch(kernel, copy, grid_x, heads_kv, batch, stream);
    return;
  }
  const bool varlen = layout == gen::Layout::varlen;
  BwdSm90Params hopper{};
  hopper.base = params;
  hopper.q = encode_tma("q", in.q, in.dtype, in.head_dim, in.max_seqlen_q, in.heads_q, in.batch,
                        varlen, tile.block_m);
  hopper.dout = encode_tma("grad_out", args.grad_out, in.dtype, in.head_dim, in.max_seqlen_q,
                           in.heads_q, in.batch, varlen, tile.block_m);
  launch(kernel, hopper, grid_x, heads_kv, batch, stream);
}

}  // namespace

BackwardSpecs backward_specs(const BackwardArgs& args) {
  // The forward rules apply to the inputs; dO takes the place of the output there.
  ForwardArgs inputs = args.inputs;
  inputs.out = args.grad_out;
  gen::KernelSpec spec;
  try {
    spec = forward_spec(inputs);
  } catch (const Error& error) {
    std::string message = error.what();
    for (std::size_t pos = message.find("out."); pos != std::string::npos;
         pos = message.find("out.", pos + 9)) {
      message.replace(pos, 4, "grad_out.");
    }
    throw Error(error.status(), message);
  }
  const bool varlen = spec.layout == gen::Layout::varlen;
  const ForwardArgs& in = args.inputs;
  check_tensor("grad_q", args.grad_q, varlen);
  check_tensor("grad_k", args.grad_k, varlen);
  check_tensor("grad_v", args.grad_v, varlen);
  check_output_does_not_overlap("grad_q", args.grad_q, in.batch, in.max_seqlen_q, in.heads_q,
                                in.head_dim, varlen);
  check_output_does_not_overlap("grad_k", args.grad_k, in.batch, in.max_seqlen_k, in.heads_kv,
                                in.head_dim, varlen);
  check_output_does_not_overlap("grad_v", args.grad_v, in.batch, in.max_seqlen_k, in.heads_kv,
                                in.head_dim, varlen);
  BackwardSpecs specs{spec, spec};
  specs.dkdv.direction = gen::Direction::dkdv;
  specs.dq.direction = gen::Direction::dq;
  return specs;
}

BackwardTiles default_backward_tiles(const BackwardSpecs& specs, const policy::Target& target,
                                     bool deterministic) {
  const bool one_pass = !deterministic && policy::one_pass_by_default(specs.dkdv, target);
  return {policy::default_tile(specs.dkdv, target, one_pass).tile,
          policy::default_tile(specs.dq, target).tile};
}

BackwardTiles chosen_backward_tiles(const BackwardArgs& args, const BackwardSpecs& specs,
                                    const policy::Target& target, bool deterministic) {
  const BackwardTiles tiles = default_backward_tiles(specs, target, deterministic);
  const cuda::DeviceInfo info = cuda::current_device_info();
  const cache::DeviceKey device{info.name, target.arch, info.sm_count};
  PersistentCache& persistent = PersistentCache::instance();
  const ForwardArgs& in = args.inputs;
  const cache::TileChoice dkdv =
      persistent.choose_tile(specs.dkdv, device, in.max_seqlen_q, in.max_seqlen_k, target);
  const cache::TileChoice dq =
      persistent.choose_tile(specs.dq, device, in.max_seqlen_q, in.max_seqlen_k, target);
  BackwardTiles chosen = combine_backward_tiles(tiles, dkdv, dq, deterministic);
  // A zero stride over several heads or sequences has no TMA map: the portable family runs.
  const bool varlen = specs.dq.layout == gen::Layout::varlen;
  const auto portable = [&] {
    return default_backward_tiles(specs, policy::target_for_arch("sm_90"), deterministic);
  };
  if (chosen.dkdv.family == gen::Family::sm90 && !dkdv_tma_obstacles(args, varlen).empty()) {
    chosen.dkdv = portable().dkdv;
  }
  if (chosen.dq.family == gen::Family::sm90 && !dq_tma_obstacles(args, varlen).empty()) {
    chosen.dq = portable().dq;
  }
  return chosen;
}

BackwardTiles combine_backward_tiles(BackwardTiles tiles, const cache::TileChoice& dkdv,
                                     const cache::TileChoice& dq, bool deterministic) {
  if (dkdv.served_by != cache::ServedBy::heuristic && !(deterministic && dkdv.tile.atomic_dq)) {
    tiles.dkdv = dkdv.tile;
  }
  if (dq.served_by != cache::ServedBy::heuristic) tiles.dq = dq.tile;
  return tiles;
}

void backward_with_tiles(const BackwardArgs& args, CUstream stream, const gen::TileConfig& dkdv,
                         const gen::TileConfig& dq) {
  const BackwardSpecs specs = backward_specs(args);
  const policy::Target target = current_target();
  const ForwardArgs& in = args.inputs;
  // Every tile is checked before anything is compiled or launched, so a rejected call leaves the
  // gradients as they were.
  const bool varlen = specs.dq.layout == gen::Layout::varlen;
  check_tile(specs.dkdv, dkdv, target, "q and grad_out", dkdv_tma_obstacles(args, varlen));
  if (!dkdv.atomic_dq) {
    check_tile(specs.dq, dq, target, "q, grad_out, k and v", dq_tma_obstacles(args, varlen));
  }
  const std::pair<const char*, const void*> pointers[] = {{"q.data", in.q.data},
                                                          {"k.data", in.k.data},
                                                          {"v.data", in.v.data},
                                                          {"grad_out.data", args.grad_out.data},
                                                          {"grad_q.data", args.grad_q.data},
                                                          {"grad_k.data", args.grad_k.data},
                                                          {"grad_v.data", args.grad_v.data},
                                                          {"seq_lens_q", in.seq_lens_q},
                                                          {"seq_lens_k", in.seq_lens_k},
                                                          {"cu_seqlens_q", in.cu_seqlens_q},
                                                          {"cu_seqlens_k", in.cu_seqlens_k},
                                                          {"score_mod", in.score_mod}};
  for (const auto& [name, pointer] : pointers) check_device_pointer(name, pointer);
  if (dkdv.atomic_dq && capturing(stream)) {
    throw_invalid(fmt::format(
        "tile {} (the one-pass backward, atomic dQ) cannot run on a stream that is capturing a "
        "CUDA graph: its workspace is ordered with events outside the graph; use a two-kernel "
        "dkdv tile",
        gen::to_string(dkdv)));
  }
  check_lengths_on_device(in, stream);

  BwdParams params = make_bwd_params(args, specs.dq.layout);
  const unsigned heads_q = static_cast<unsigned>(in.heads_q);
  const unsigned batch = static_cast<unsigned>(in.batch);
  const unsigned dkdv_blocks =
      blocks(in.max_seqlen_k, dkdv.block_n) * static_cast<unsigned>(gen::grid_slices(specs.dkdv));
  const LoadedKernel dkdv_kernel = load(specs.dkdv, dkdv);
  if (!dkdv.atomic_dq) {
    const LoadedKernel dq_kernel = load(specs.dq, dq);
    launch_dkdv(dkdv_kernel, dkdv, params, args, specs.dkdv.layout, dkdv_blocks, stream);
    launch_dq(dq_kernel, dq, params, args, specs.dq, stream);
    return;
  }

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
  launch_dkdv(dkdv_kernel, dkdv, params, args, specs.dkdv.layout, dkdv_blocks, stream);
  launch(convert, params, blocks(in.max_seqlen_q, gen::kDqConvertRowsPerCta), heads_q, batch,
         stream);
}

void backward(const BackwardArgs& args, CUstream stream) {
  const BackwardSpecs specs = backward_specs(args);
  // Under graph capture the workspace could not be ordered against the graph's replays, so the
  // deterministic split runs there whatever the call allows.
  const bool deterministic = args.deterministic || capturing(stream);
  const BackwardTiles tiles = chosen_backward_tiles(args, specs, current_target(), deterministic);
  backward_with_tiles(args, stream, tiles.dkdv, tiles.dq);
}

}  // namespace sigattn
