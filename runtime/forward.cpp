// sigattn::forward: validation of every argument that can be checked on the host, the KernelSpec
// a call needs, the check of device length arrays, and the launch of the generated kernel on the
// caller's stream. Also the public stride helpers and the version string.
#include "runtime/forward.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "cache/tuning_store.hpp"
#include "generator/generator.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/errors.hpp"
#include "runtime/module_cache.hpp"
#include "runtime/persistent_cache.hpp"
#include "sigattn/fwd_params.h"
#include "sigattn/fwd_sm90_params.h"
#include "tuner/online_tuning.hpp"
#include "tuner/search_space.hpp"

namespace sigattn {

constexpr int kMaxGridExtent = 65535;  // grid.y and grid.z carry heads and batch
constexpr int kMaxSeqLen = 1 << 24;
constexpr int kStrideMultiple = 8;  // elements: 16 bytes of bf16/fp16, one vector load
constexpr std::uintptr_t kTensorAlignment = 16;

void check_range(std::string_view name, long long value, long long low, long long high) {
  if (value < low || value > high) {
    throw_invalid(fmt::format("{} = {} is out of range [{}, {}]", name, value, low, high));
  }
}

void check_aligned(std::string_view name, const void* pointer, std::uintptr_t alignment) {
  if (reinterpret_cast<std::uintptr_t>(pointer) % alignment != 0) {
    throw_invalid(fmt::format("{} = {} is not {}-byte aligned", name, pointer, alignment));
  }
}

void check_tensor(std::string_view name, const TensorRef& tensor, bool varlen) {
  if (tensor.data == nullptr) throw_invalid(fmt::format("{}.data is null", name));
  check_aligned(fmt::format("{}.data", name), tensor.data, kTensorAlignment);
  const std::array<std::pair<std::string_view, std::int64_t>, 3> strides = {
      {{"batch_stride", tensor.batch_stride},
       {"seq_stride", tensor.seq_stride},
       {"head_stride", tensor.head_stride}}};
  for (const auto& [field, stride] : strides) {
    // In the varlen layout seq indexes the packed tokens and the batch stride is not used.
    if (varlen && field == "batch_stride") continue;
    if (stride < 0) throw_invalid(fmt::format("{}.{} = {} is negative", name, field, stride));
    if (stride % kStrideMultiple != 0) {
      throw_invalid(fmt::format("{}.{} = {} is not a multiple of {} elements (16 bytes)", name,
                                field, stride, kStrideMultiple));
    }
  }
}

// Distinct output elements must not share memory, or rows would be written concurrently.
// Sorting the dimensions by stride, each stride must step over the whole previous dimension.
void check_output_does_not_overlap(std::string_view name, const TensorRef& out, int batch, int seq,
                                   int heads, int head_dim, bool varlen) {
  struct Dim {
    std::string_view name;
    std::int64_t stride;
    std::int64_t extent;
  };
  const std::string seq_name = fmt::format("{}.seq_stride", name);
  const std::string head_name = fmt::format("{}.head_stride", name);
  const std::string batch_name = fmt::format("{}.batch_stride", name);
  std::vector<Dim> dims = {{"head_dim", 1, head_dim},
                           {seq_name, out.seq_stride, seq},
                           {head_name, out.head_stride, heads}};
  if (!varlen) dims.push_back({batch_name, out.batch_stride, batch});
  std::erase_if(dims, [](const Dim& dim) { return dim.extent == 1; });
  for (const Dim& dim : dims) {
    if (dim.stride == 0) {
      throw_invalid(
          fmt::format("{} strides overlap: {} is 0 over an extent of {}, so distinct "
                      "outputs would share memory",
                      name, dim.name, dim.extent));
    }
  }
  std::sort(dims.begin(), dims.end(), [](const Dim& a, const Dim& b) {
    return a.stride != b.stride ? a.stride < b.stride : a.extent < b.extent;
  });
  // Elements spanned by a dimension: stride x extent. It must fit in 64 bits, so that the offset
  // of every output element does too.
  const auto span = [&](const Dim& dim) {
    std::int64_t elements = 0;
    if (__builtin_mul_overflow(dim.stride, dim.extent, &elements)) {
      throw_invalid(
          fmt::format("{} strides span more than 2^63 elements: {} = {} over an extent of {}", name,
                      dim.name, dim.stride, dim.extent));
    }
    return elements;
  };
  for (std::size_t i = 0; i < dims.size(); ++i) {
    const std::int64_t inner_span = span(dims[i]);
    if (i + 1 == dims.size()) break;
    const Dim& inner = dims[i];
    const Dim& outer = dims[i + 1];
    if (outer.stride < inner_span) {
      throw_invalid(fmt::format(
          "{} strides overlap: {} = {} is smaller than the {} elements spanned by {} "
          "(stride {} x extent {}), so distinct outputs would share memory",
          name, outer.name, outer.stride, inner_span, inner.name, inner.stride, inner.extent));
    }
  }
}

void check_lengths_pointer(std::string_view name, const std::int32_t* pointer) {
  if (pointer != nullptr) check_aligned(name, pointer, alignof(std::int32_t));
}

// Pointers the driver does not know (plain host memory, garbage) fail the attribute query.
void check_device_pointer(std::string_view name, const void* pointer) {
  if (pointer == nullptr) return;
  unsigned int memory_type = 0;
  const CUresult result = cuda::driver().cuPointerGetAttribute(
      &memory_type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, reinterpret_cast<CUdeviceptr>(pointer));
  if (result != CUDA_SUCCESS) {
    throw_invalid(
        fmt::format("{} = {} is not a device pointer: the CUDA driver does not know this address "
                    "(allocate it with cuMemAlloc/cudaMalloc, or register host memory)",
                    name, pointer));
  }
}

std::vector<std::int32_t> copy_to_host(const std::int32_t* device, int count, CUstream stream) {
  std::vector<std::int32_t> host(count);
  const cuda::DriverApi& api = cuda::driver();
  SIGATTN_CU(api.cuMemcpyDtoHAsync(host.data(), reinterpret_cast<CUdeviceptr>(device),
                                   host.size() * sizeof(std::int32_t), stream));
  SIGATTN_CU(api.cuStreamSynchronize(stream));
  return host;
}

void check_seq_lens(std::string_view name, const std::int32_t* device, int batch, int max_seqlen,
                    CUstream stream) {
  if (device == nullptr) return;
  const std::vector<std::int32_t> lengths = copy_to_host(device, batch, stream);
  for (int b = 0; b < batch; ++b) {
    if (lengths[b] < 0 || lengths[b] > max_seqlen) {
      throw_invalid(
          fmt::format("{}[{}] = {} is out of range [0, {}]", name, b, lengths[b], max_seqlen));
    }
  }
}

void check_cu_seqlens(std::string_view name, const std::int32_t* device, int batch,
                      std::string_view max_name, int max_seqlen, CUstream stream) {
  if (device == nullptr) return;
  const std::vector<std::int32_t> offsets = copy_to_host(device, batch + 1, stream);
  if (offsets[0] != 0) throw_invalid(fmt::format("{}[0] = {} must be 0", name, offsets[0]));
  for (int b = 1; b <= batch; ++b) {
    const std::int64_t length = std::int64_t{offsets[b]} - offsets[b - 1];
    if (length < 0) {
      throw_invalid(
          fmt::format("{}[{}] = {} is smaller than {}[{}] = {}: prefix sums must not "
                      "decrease",
                      name, b, offsets[b], name, b - 1, offsets[b - 1]));
    }
    if (length > max_seqlen) {
      throw_invalid(fmt::format("{}[{}] - {}[{}] = {} exceeds {} = {}", name, b, name, b - 1,
                                length, max_name, max_seqlen));
    }
  }
}

void check_lengths_on_device(const ForwardArgs& args, CUstream stream) {
  CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
  SIGATTN_CU(cuda::driver().cuStreamIsCapturing(stream, &capture));
  // A capturing stream cannot be synchronized; the kernel clamps the lengths instead.
  if (args.trust_lengths || capture != CU_STREAM_CAPTURE_STATUS_NONE) return;
  check_seq_lens("seq_lens_q", args.seq_lens_q, args.batch, args.max_seqlen_q, stream);
  check_seq_lens("seq_lens_k", args.seq_lens_k, args.batch, args.max_seqlen_k, stream);
  check_cu_seqlens("cu_seqlens_q", args.cu_seqlens_q, args.batch, "max_seqlen_q", args.max_seqlen_q,
                   stream);
  check_cu_seqlens("cu_seqlens_k", args.cu_seqlens_k, args.batch, "max_seqlen_k", args.max_seqlen_k,
                   stream);
}

FwdParams make_params(const ForwardArgs& args, gen::Layout layout) {
  const bool varlen = layout == gen::Layout::varlen;
  const auto batch_stride = [varlen](const TensorRef& t) { return varlen ? 0 : t.batch_stride; };
  FwdParams params{};
  params.q = args.q.data;
  params.k = args.k.data;
  params.v = args.v.data;
  params.o = args.out.data;
  params.q_batch_stride = batch_stride(args.q);
  params.q_seq_stride = args.q.seq_stride;
  params.q_head_stride = args.q.head_stride;
  params.k_batch_stride = batch_stride(args.k);
  params.k_seq_stride = args.k.seq_stride;
  params.k_head_stride = args.k.head_stride;
  params.v_batch_stride = batch_stride(args.v);
  params.v_seq_stride = args.v.seq_stride;
  params.v_head_stride = args.v.head_stride;
  params.o_batch_stride = batch_stride(args.out);
  params.o_seq_stride = args.out.seq_stride;
  params.o_head_stride = args.out.head_stride;
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

// The generator reports a variant it cannot build as std::invalid_argument; to the caller that is
// a bad tile argument.
// Generation is a pure function of the variant (the templates are fixed at build time), so each
// variant is generated and hashed once per process.
gen::GeneratedKernel generate_for_launch(const gen::Variant& variant) {
  static std::mutex mutex;
  static std::map<std::string, gen::GeneratedKernel> generated;
  const std::string name = gen::to_string(variant);
  std::lock_guard lock(mutex);
  if (const auto found = generated.find(name); found != generated.end()) return found->second;
  try {
    return generated.emplace(name, gen::generate(variant)).first->second;
  } catch (const std::invalid_argument& error) {
    throw_invalid(fmt::format("cannot generate {}: {}", name, error.what()));
  }
}

tune::Target current_target() {
  const cuda::DeviceInfo info = cuda::current_device_info();
  return tune::target_for_arch(cuda::arch_for(info.cc_major, info.cc_minor));
}

// A TMA tensor map over (head_dim, tokens, heads, batch) needs every stride a nonzero multiple of
// 16 bytes: a zero stride over more than one head or sequence (one K/V row broadcast to every
// head, say) has none. Strides of extent-1 dimensions are never used and are replaced.
std::string tma_obstacles(std::initializer_list<TmaTensor> tensors, int batch, bool varlen) {
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

// What keeps TMA maps of q, k and v, which the sm90 forward kernel streams, from describing them.
std::string forward_tma_obstacles(const ForwardArgs& args, bool varlen) {
  return tma_obstacles(
      {{"q", args.q, args.heads_q}, {"k", args.k, args.heads_kv}, {"v", args.v, args.heads_kv}},
      args.batch, varlen);
}

// The map of q, k or v for the sm90 kernel: boxes of 64 elements (128 bytes, the swizzle span) by
// `box_rows` tokens of one head, 128-byte swizzle, zeros outside the tensor. The varlen layout
// packs every sequence on one token axis of at most batch * max_seqlen tokens (batch extent 1).
TmaDescriptor encode_tma(std::string_view name, const TensorRef& t, DType dtype, int head_dim,
                         int max_seqlen, int heads, int batch, bool varlen, int box_rows) {
  constexpr std::uint64_t kElementBytes = 2;
  const std::uint64_t tokens = varlen ? std::uint64_t(batch) * max_seqlen : max_seqlen;
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

// The tile of a forward call through the lookup chain of the tuning databases. A call whose
// strides no TMA map can describe runs the portable family's default instead of an sm90 tile.
cache::TileChoice choose_forward_tile(const ForwardArgs& args, const gen::KernelSpec& spec,
                                      const tune::Target& target) {
  const cuda::DeviceInfo info = cuda::current_device_info();
  const cache::DeviceKey device{info.name, target.arch, info.sm_count};
  cache::TileChoice choice = PersistentCache::instance().choose_tile(
      spec, device, args.max_seqlen_q, args.max_seqlen_k, target);
  if (choice.tile.family != gen::Family::sm90) return choice;
  const std::string obstacles = forward_tma_obstacles(args, spec.layout == gen::Layout::varlen);
  if (obstacles.empty()) return choice;
  const tune::DefaultChoice portable = tune::default_tile(spec, tune::target_for_arch("sm_90"));
  choice.reason = fmt::format("TMA maps cannot describe {}, so not {}: {}", obstacles,
                              gen::to_string(choice.tile), portable.reason);
  choice.tile = portable.tile;
  choice.served_by = cache::ServedBy::heuristic;
  return choice;
}

Dispatch dispatch_of(const gen::KernelSpec& spec, const cache::TileChoice& choice) {
  return {gen::to_string(gen::Variant{spec, choice.tile}),
          std::string(cache::to_string(choice.served_by)), choice.reason};
}

// Queues the call's shape for online tuning when that is on and the shape can be described.
void request_online_tuning(const ForwardArgs& args, const gen::KernelSpec& spec) {
  tune::OnlineTuner& tuner = tune::OnlineTuner::instance();
  if (!tuner.enabled()) return;
  if (const std::optional<tune::Shape> shape = tune::online_shape(args, spec)) {
    tuner.request(*shape, PersistentCache::instance().database_path());
  }
}

// What the last forward() on this thread launched, for last_dispatch().
thread_local Dispatch last_forward_dispatch;

void launch(const ForwardArgs& args, const gen::KernelSpec& spec, const tune::Target& target,
            const gen::TileConfig& tile, CUstream stream) {
  const gen::Variant variant{spec, tile};
  if (const std::string why = tune::rejection(spec, tile, target); !why.empty()) {
    throw_invalid(fmt::format("tile {} cannot run {} on {}: {}", gen::to_string(tile),
                              gen::to_string(variant), target.arch, why));
  }
  const bool varlen = spec.layout == gen::Layout::varlen;
  if (tile.family == gen::Family::sm90) {
    if (const std::string obstacles = forward_tma_obstacles(args, varlen); !obstacles.empty()) {
      throw_invalid(fmt::format(
          "tile {} of {} streams q, k and v through TMA maps, which cannot describe a zero stride "
          "over several heads or sequences: {}; a tile of the sm80 family reads such tensors "
          "(forward() chooses one)",
          gen::to_string(tile), gen::to_string(variant), obstacles));
    }
  }
  check_device_pointer("q.data", args.q.data);
  check_device_pointer("k.data", args.k.data);
  check_device_pointer("v.data", args.v.data);
  check_device_pointer("out.data", args.out.data);
  check_device_pointer("seq_lens_q", args.seq_lens_q);
  check_device_pointer("seq_lens_k", args.seq_lens_k);
  check_device_pointer("cu_seqlens_q", args.cu_seqlens_q);
  check_device_pointer("cu_seqlens_k", args.cu_seqlens_k);
  check_device_pointer("score_mod", args.score_mod);
  check_lengths_on_device(args, stream);

  const gen::GeneratedKernel kernel = generate_for_launch(variant);
  const LoadedKernel loaded = ModuleCache::instance().load(kernel);
  FwdParams params = make_params(args, spec.layout);
  FwdSm90Params hopper_params{};
  void* kernel_args[] = {&params};
  if (tile.family == gen::Family::sm90) {
    hopper_params.base = params;
    hopper_params.q = encode_tma("q", args.q, args.dtype, args.head_dim, args.max_seqlen_q,
                                 args.heads_q, args.batch, varlen, tile.block_m);
    hopper_params.k = encode_tma("k", args.k, args.dtype, args.head_dim, args.max_seqlen_k,
                                 args.heads_kv, args.batch, varlen, tile.block_n);
    hopper_params.v = encode_tma("v", args.v, args.dtype, args.head_dim, args.max_seqlen_k,
                                 args.heads_kv, args.batch, varlen, tile.block_n);
    kernel_args[0] = &hopper_params;
  }
  const long long row_blocks = (args.max_seqlen_q + tile.block_m - 1) / tile.block_m;
  unsigned grid[3] = {static_cast<unsigned>(row_blocks), static_cast<unsigned>(args.heads_q),
                      static_cast<unsigned>(args.batch)};
  if (tile.family == gen::Family::sm90) {
    grid[0] = persistent_grid(loaded, tile, row_blocks, args.heads_q, args.batch);
    grid[1] = grid[2] = 1;
  }
  SIGATTN_CU(cuda::driver().cuLaunchKernel(
      loaded.function, grid[0], grid[1], grid[2], static_cast<unsigned>(loaded.threads), 1, 1,
      static_cast<unsigned>(loaded.smem_bytes), stream, kernel_args, nullptr));
}

unsigned persistent_grid(const LoadedKernel& kernel, const gen::TileConfig& tile, long long blocks,
                         int heads, int batch) {
  const long long work_tiles = blocks * heads * batch;
  if (work_tiles > std::numeric_limits<int>::max()) {
    throw_unsupported(fmt::format(
        "tile {} numbers its work tiles with int, and {} blocks x {} heads x {} sequences are {} "
        "of them",
        gen::to_string(tile), blocks, heads, batch, work_tiles));
  }
  const long long resident =
      static_cast<long long>(kernel.blocks_per_sm) * cuda::current_device_info().sm_count;
  return static_cast<unsigned>(std::max(1LL, std::min(work_tiles, resident)));
}

gen::KernelSpec forward_spec(const ForwardArgs& args) {
  if (args.dtype != DType::bf16 && args.dtype != DType::fp16) {
    throw_invalid(fmt::format("dtype = {} is not a valid dtype (expected bf16 = {} or fp16 = {})",
                              static_cast<int>(args.dtype), SIGATTN_BF16, SIGATTN_FP16));
  }
  check_range("batch", args.batch, 1, kMaxGridExtent);
  check_range("heads_q", args.heads_q, 1, kMaxGridExtent);
  check_range("heads_kv", args.heads_kv, 1, args.heads_q);
  if (args.heads_q % args.heads_kv != 0) {
    throw_invalid(fmt::format("heads_q = {} is not a multiple of heads_kv = {}", args.heads_q,
                              args.heads_kv));
  }
  if (args.head_dim < 1)
    throw_invalid(fmt::format("head_dim = {} must be positive", args.head_dim));
  if (!gen::head_dim_supported(args.head_dim)) {
    throw_unsupported(fmt::format(
        "head_dim = {} is not supported: head_dim must be a multiple of 8 from 8 to 256",
        args.head_dim));
  }
  check_range("max_seqlen_q", args.max_seqlen_q, 1, kMaxSeqLen);
  check_range("max_seqlen_k", args.max_seqlen_k, 1, kMaxSeqLen);

  const bool padded = args.seq_lens_q != nullptr || args.seq_lens_k != nullptr;
  const bool varlen = args.cu_seqlens_q != nullptr || args.cu_seqlens_k != nullptr;
  if (padded && varlen) {
    throw_invalid(
        "seq_lens_q/seq_lens_k (padded layout) and cu_seqlens_q/cu_seqlens_k (varlen layout) "
        "cannot be combined: set the one pair that describes the storage");
  }
  if (varlen && (args.cu_seqlens_q == nullptr || args.cu_seqlens_k == nullptr)) {
    throw_invalid(fmt::format("{} is set but {} is null: the varlen layout needs both",
                              args.cu_seqlens_q != nullptr ? "cu_seqlens_q" : "cu_seqlens_k",
                              args.cu_seqlens_q != nullptr ? "cu_seqlens_k" : "cu_seqlens_q"));
  }
  check_lengths_pointer("seq_lens_q", args.seq_lens_q);
  check_lengths_pointer("seq_lens_k", args.seq_lens_k);
  check_lengths_pointer("cu_seqlens_q", args.cu_seqlens_q);
  check_lengths_pointer("cu_seqlens_k", args.cu_seqlens_k);

  check_tensor("q", args.q, varlen);
  check_tensor("k", args.k, varlen);
  check_tensor("v", args.v, varlen);
  check_tensor("out", args.out, varlen);
  check_output_does_not_overlap("out", args.out, args.batch, args.max_seqlen_q, args.heads_q,
                                args.head_dim, varlen);

  if (args.score_mod != nullptr) {
    check_aligned("score_mod", args.score_mod, alignof(float));
    if (args.score_mod_batch_stride < args.max_seqlen_k) {
      throw_invalid(fmt::format("score_mod_batch_stride = {} is smaller than max_seqlen_k = {}",
                                args.score_mod_batch_stride, args.max_seqlen_k));
    }
  }
  if (args.window_left < -1) {
    throw_invalid(fmt::format("window_left = {} must be -1 (unbounded) or >= 0", args.window_left));
  }
  if (args.window_right < -1) {
    throw_invalid(
        fmt::format("window_right = {} must be -1 (unbounded) or >= 0", args.window_right));
  }
  if (args.scale && !(std::isfinite(*args.scale) && *args.scale > 0.0f)) {
    throw_invalid(fmt::format("scale = {} must be finite and > 0", *args.scale));
  }
  if (args.bias && !std::isfinite(*args.bias)) {
    throw_invalid(fmt::format("bias = {} must be finite", *args.bias));
  }
  if (args.sigmoid != SigmoidMode::fast && args.sigmoid != SigmoidMode::accurate) {
    throw_invalid(fmt::format(
        "sigmoid = {} is not a valid mode (expected fast = {} or "
        "accurate = {})",
        static_cast<int>(args.sigmoid), SIGATTN_SIGMOID_FAST, SIGATTN_SIGMOID_ACCURATE));
  }

  gen::KernelSpec spec;
  spec.direction = gen::Direction::forward;
  spec.dtype = args.dtype == DType::bf16 ? gen::DType::bf16 : gen::DType::fp16;
  spec.head_dim = args.head_dim;
  spec.layout = varlen ? gen::Layout::varlen : padded ? gen::Layout::padded : gen::Layout::dense;
  spec.causal = args.causal;
  spec.window = args.window_left >= 0 || args.window_right >= 0;
  spec.score_mod = args.score_mod != nullptr;
  spec.sigmoid =
      args.sigmoid == SigmoidMode::fast ? gen::SigmoidMode::fast : gen::SigmoidMode::accurate;
  const bool whole_tiles = args.max_seqlen_q % 128 == 0 && args.max_seqlen_k % 128 == 0;
  spec.seqlen =
      spec.layout == gen::Layout::dense && whole_tiles ? gen::SeqLen::x128 : gen::SeqLen::anylen;
  return spec;
}

void forward_with_tile(const ForwardArgs& args, CUstream stream, const gen::TileConfig& tile) {
  const gen::KernelSpec spec = forward_spec(args);
  launch(args, spec, current_target(), tile, stream);
}

void forward(const ForwardArgs& args, CUstream stream) {
  const gen::KernelSpec spec = forward_spec(args);
  const tune::Target target = current_target();
  const cache::TileChoice choice = choose_forward_tile(args, spec, target);
  if (choice.served_by == cache::ServedBy::heuristic) request_online_tuning(args, spec);
  launch(args, spec, target, choice.tile, stream);
  last_forward_dispatch = dispatch_of(spec, choice);
}

Dispatch explain_forward(const ForwardArgs& args) {
  const gen::KernelSpec spec = forward_spec(args);
  return dispatch_of(spec, choose_forward_tile(args, spec, current_target()));
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
