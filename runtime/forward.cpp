// sigattn::forward: the arguments validated (runtime/validation), a tile chosen
// (runtime/tile_choice), the device lengths checked and the generated kernel launched on the
// caller's stream (runtime/kernel_launch). Also the public stride helpers and the version string.
#include "runtime/forward.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "runtime/errors.hpp"
#include "runtime/kernel_launch.hpp"
#include "runtime/kernel_params.hpp"
#include "runtime/tile_choice.hpp"
#include "runtime/validation.hpp"

namespace sigattn {
namespace {

// What the last forward() on this thread launched, for last_dispatch().
thread_local Dispatch last_forward_dispatch;

// `out`, the forward's one output, must not overlap itself over `rows` tokens.
void check_output(const ForwardArgs& args, const TokenRows& rows, bool varlen) {
  check_outputs(args, {{"out", args.out, false}}, rows, varlen);
}

void launch(const ForwardArgs& args, const gen::KernelSpec& spec, const policy::Target& target,
            const gen::TileConfig& tile, const TileOrigin& origin, CUstream stream) {
  CallOperands call{args};
  check_tile(spec, tile, target, call);
  check_device_pointers(args, {{"out.data", args.out.data}});
  const TokenRows rows = check_lengths_on_device(args, stream);
  const bool varlen = spec.layout == gen::Layout::varlen;
  // The host check left the packed token axis out: it spans the tokens the prefix sums count, or
  // max_seqlen rows when they were not read.
  if (varlen) check_output(args, rows, varlen);
  if (rows.counted) {
    call.packed_tokens_q = rows.q;
    call.packed_tokens_k = rows.k;
  }

  const gen::Variant variant{spec, tile};
  const LoadedKernel kernel = load_kernel(variant);
  log_launch(variant, origin, kernel);
  launch_kernel(kernel, variant, call, forward_params(args, spec.layout), stream);
}

}  // namespace

gen::KernelSpec forward_spec(const ForwardArgs& args) {
  const gen::KernelSpec spec = check_inputs(args);
  const bool varlen = spec.layout == gen::Layout::varlen;
  check_tensor("out", args.out, varlen);
  check_output(args, rows_known_on_host(args, varlen), varlen);
  return spec;
}

void forward_with_tile(const ForwardArgs& args, CUstream stream, const gen::TileConfig& tile) {
  const gen::KernelSpec spec = forward_spec(args);
  launch(args, spec, current_target(), tile, forced_origin(), stream);
}

void forward(const ForwardArgs& args, CUstream stream) {
  const gen::KernelSpec spec = forward_spec(args);
  const policy::Target target = current_target();
  const cache::TileChoice choice = forward_tile_for_launch(args, spec, target);
  launch(args, spec, target, choice.tile, origin_of(choice), stream);
  last_forward_dispatch = dispatch_of(spec, choice);
}

Dispatch explain_forward(const ForwardArgs& args) {
  const gen::KernelSpec spec = forward_spec(args);
  const policy::Target target = current_target();
  return dispatch_of(spec, choose_forward_tile(args, spec, target, current_device(target)));
}

Dispatch explain_forward(const ForwardArgs& args, const DeviceDescription& device) {
  const gen::KernelSpec spec = forward_spec(args);
  const policy::Target target = described_target(device);
  return dispatch_of(
      spec, choose_forward_tile(args, spec, target, {device.name, target.arch, device.sm_count}));
}

Dispatch last_dispatch() { return last_forward_dispatch; }

TensorRef bthd(void* data, int seq, int heads, int head_dim) {
  const std::int64_t row = std::int64_t{heads} * head_dim;
  return {data, row * seq, row, head_dim};
}

TensorRef bhtd(void* data, int seq, int heads, int head_dim) {
  const std::int64_t head = std::int64_t{seq} * head_dim;
  return {data, head * heads, head_dim, head};
}

const char* version() noexcept { return SIGATTN_VERSION_STRING; }

}  // namespace sigattn
