// The named checks of a call's arguments: ranges, layouts and length pointers, tensors, outputs
// that must not overlap, device pointers, and the device length arrays copied to the host.
#include "runtime/validation.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "generator/generator.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/errors.hpp"

namespace sigattn {
namespace {

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

void check_lengths_pointer(std::string_view name, const std::int32_t* pointer) {
  if (pointer != nullptr) check_aligned(name, pointer, alignof(std::int32_t));
}

// Sorting the dimensions by stride, each stride must step over the whole previous dimension.
// `outer` is the extent of the batch stride (sequences, or the blocks of a paged cache).
void check_does_not_overlap(std::string_view name, const TensorRef& out, std::int64_t outer,
                            std::int64_t rows, int heads, int head_dim, bool varlen) {
  struct Dim {
    std::string_view name;
    std::int64_t stride;
    std::int64_t extent;
  };
  const std::string seq_name = fmt::format("{}.seq_stride", name);
  const std::string head_name = fmt::format("{}.head_stride", name);
  const std::string batch_name = fmt::format("{}.batch_stride", name);
  std::vector<Dim> dims = {{"head_dim", 1, head_dim},
                           {seq_name, out.seq_stride, rows},
                           {head_name, out.head_stride, heads}};
  if (!varlen) dims.push_back({batch_name, out.batch_stride, outer});
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

// The problem's sizes, whatever the layout: dtype, batch, heads and head dim.
void check_problem(DType dtype, int batch, int heads_q, int heads_kv, int head_dim) {
  if (dtype != DType::bf16 && dtype != DType::fp16) {
    throw_invalid(fmt::format("dtype = {} is not a valid dtype (expected bf16 = {} or fp16 = {})",
                              static_cast<int>(dtype), SIGATTN_BF16, SIGATTN_FP16));
  }
  check_range("batch", batch, 1, kMaxGridExtent);
  check_range("heads_q", heads_q, 1, kMaxGridExtent);
  check_range("heads_kv", heads_kv, 1, heads_q);
  if (heads_q % heads_kv != 0) {
    throw_invalid(
        fmt::format("heads_q = {} is not a multiple of heads_kv = {}", heads_q, heads_kv));
  }
  if (head_dim < 1) throw_invalid(fmt::format("head_dim = {} must be positive", head_dim));
  if (!gen::head_dim_supported(head_dim)) {
    throw_unsupported(fmt::format(
        "head_dim = {} is not supported: head_dim must be a multiple of 8 from 8 to 256",
        head_dim));
  }
}

// The score options: window, scale, bias and the sigmoid's form.
void check_options(int window_left, int window_right, const std::optional<float>& scale,
                   const std::optional<float>& bias, SigmoidMode sigmoid) {
  if (window_left < -1) {
    throw_invalid(fmt::format("window_left = {} must be -1 (unbounded) or >= 0", window_left));
  }
  if (window_right < -1) {
    throw_invalid(fmt::format("window_right = {} must be -1 (unbounded) or >= 0", window_right));
  }
  if (scale && !(std::isfinite(*scale) && *scale > 0.0f)) {
    throw_invalid(fmt::format("scale = {} must be finite and > 0", *scale));
  }
  if (bias && !std::isfinite(*bias)) {
    throw_invalid(fmt::format("bias = {} must be finite", *bias));
  }
  if (sigmoid != SigmoidMode::fast && sigmoid != SigmoidMode::accurate) {
    throw_invalid(
        fmt::format("sigmoid = {} is not a valid mode (expected fast = {} or "
                    "accurate = {})",
                    static_cast<int>(sigmoid), SIGATTN_SIGMOID_FAST, SIGATTN_SIGMOID_ACCURATE));
  }
}

gen::SigmoidMode spec_sigmoid(SigmoidMode sigmoid) {
  return sigmoid == SigmoidMode::fast ? gen::SigmoidMode::fast : gen::SigmoidMode::accurate;
}

}  // namespace

gen::KernelSpec check_inputs(const ForwardArgs& args) {
  check_problem(args.dtype, args.batch, args.heads_q, args.heads_kv, args.head_dim);
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

  if (args.score_mod != nullptr) {
    check_aligned("score_mod", args.score_mod, alignof(float));
    if (args.score_mod_batch_stride < args.max_seqlen_k) {
      throw_invalid(fmt::format("score_mod_batch_stride = {} is smaller than max_seqlen_k = {}",
                                args.score_mod_batch_stride, args.max_seqlen_k));
    }
  }
  check_options(args.window_left, args.window_right, args.scale, args.bias, args.sigmoid);

  gen::KernelSpec spec;
  spec.direction = gen::Direction::forward;
  spec.dtype = args.dtype == DType::bf16 ? gen::DType::bf16 : gen::DType::fp16;
  spec.head_dim = args.head_dim;
  spec.layout = varlen ? gen::Layout::varlen : padded ? gen::Layout::padded : gen::Layout::dense;
  spec.causal = args.causal;
  spec.window = args.window_left >= 0 || args.window_right >= 0;
  spec.score_mod = args.score_mod != nullptr;
  spec.sigmoid = spec_sigmoid(args.sigmoid);
  const bool whole_tiles = args.max_seqlen_q % 128 == 0 && args.max_seqlen_k % 128 == 0;
  spec.seqlen =
      spec.layout == gen::Layout::dense && whole_tiles ? gen::SeqLen::x128 : gen::SeqLen::anylen;
  return spec;
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

TokenRows rows_known_on_host(const ForwardArgs& args, bool varlen) {
  if (varlen) return {1, 1};
  return {args.max_seqlen_q, args.max_seqlen_k};
}

void check_outputs(const ForwardArgs& args, std::initializer_list<Output> outputs,
                   const TokenRows& rows, bool varlen) {
  for (const Output& out : outputs) {
    check_does_not_overlap(out.name, out.tensor, args.batch, out.key_side ? rows.k : rows.q,
                           out.key_side ? args.heads_kv : args.heads_q, args.head_dim, varlen);
  }
}

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

bool capturing(CUstream stream) {
  // The first driver call of a backward or KV-cache call may come from a thread with no current
  // context (PyTorch runs the backward on its autograd thread): make one current first.
  cuda::current_context();
  CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
  SIGATTN_CU(cuda::driver().cuStreamIsCapturing(stream, &capture));
  return capture != CU_STREAM_CAPTURE_STATUS_NONE;
}

void check_device_pointers(const ForwardArgs& inputs, std::initializer_list<NamedPointer> tensors) {
  check_device_pointer("q.data", inputs.q.data);
  check_device_pointer("k.data", inputs.k.data);
  check_device_pointer("v.data", inputs.v.data);
  for (const NamedPointer& tensor : tensors) check_device_pointer(tensor.name, tensor.pointer);
  check_device_pointer("seq_lens_q", inputs.seq_lens_q);
  check_device_pointer("seq_lens_k", inputs.seq_lens_k);
  check_device_pointer("cu_seqlens_q", inputs.cu_seqlens_q);
  check_device_pointer("cu_seqlens_k", inputs.cu_seqlens_k);
  check_device_pointer("score_mod", inputs.score_mod);
}

std::int64_t check_cu_seqlens(std::string_view name, const std::vector<std::int32_t>& offsets,
                              std::string_view max_name, int max_seqlen) {
  if (offsets[0] != 0) throw_invalid(fmt::format("{}[0] = {} must be 0", name, offsets[0]));
  for (std::size_t b = 1; b < offsets.size(); ++b) {
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
  return offsets.back();
}

TokenRows check_lengths_on_device(const ForwardArgs& args, CUstream stream) {
  TokenRows rows{args.max_seqlen_q, args.max_seqlen_k};
  if (args.trust_lengths || capturing(stream)) return rows;
  check_seq_lens("seq_lens_q", args.seq_lens_q, args.batch, args.max_seqlen_q, stream);
  check_seq_lens("seq_lens_k", args.seq_lens_k, args.batch, args.max_seqlen_k, stream);
  if (args.cu_seqlens_q != nullptr && args.cu_seqlens_k != nullptr) {
    rows.q =
        check_cu_seqlens("cu_seqlens_q", copy_to_host(args.cu_seqlens_q, args.batch + 1, stream),
                         "max_seqlen_q", args.max_seqlen_q);
    rows.k =
        check_cu_seqlens("cu_seqlens_k", copy_to_host(args.cu_seqlens_k, args.batch + 1, stream),
                         "max_seqlen_k", args.max_seqlen_k);
    rows.counted = true;
  }
  return rows;
}

int kvcache_capacity(const KvCacheArgs& args) {
  return args.block_table != nullptr ? args.max_blocks * args.block_size : args.max_cache_len;
}

gen::KernelSpec check_kvcache(const KvCacheArgs& args) {
  check_problem(args.dtype, args.batch, args.heads_q, args.heads_kv, args.head_dim);
  check_range("seqlen_q", args.seqlen_q, 1, kMaxSeqLen);
  const bool paged = args.block_table != nullptr;
  if (paged) {
    check_lengths_pointer("block_table", args.block_table);
    if (args.max_cache_len != 0) {
      throw_invalid(fmt::format(
          "max_cache_len = {} is set with block_table: a paged cache holds max_blocks * "
          "block_size positions per sequence (leave max_cache_len 0)",
          args.max_cache_len));
    }
    check_range("block_size", args.block_size, 1, kMaxSeqLen);
    check_range("num_blocks", args.num_blocks, 1, std::numeric_limits<std::int32_t>::max());
    check_range("max_blocks", args.max_blocks, 1, kMaxSeqLen / args.block_size);
    // The rows may be apart by any stride, as long as the table fits the 2^31 entries an int
    // counts.
    if (args.batch > 1) {
      check_range("block_table_batch_stride", args.block_table_batch_stride, args.max_blocks,
                  (std::numeric_limits<std::int32_t>::max() - args.max_blocks) / (args.batch - 1));
    }
  } else {
    if (args.max_blocks != 0 || args.num_blocks != 0 || args.block_size != 0) {
      throw_invalid(
          "max_blocks, num_blocks and block_size describe a paged cache, but block_table is "
          "null: set block_table, or leave them 0 for a contiguous cache");
    }
    check_range("max_cache_len", args.max_cache_len, 1, kMaxSeqLen);
  }
  const int capacity = kvcache_capacity(args);
  if (args.cache_seqlens == nullptr) {
    throw_invalid(
        "cache_seqlens is null: every call needs the cache lengths (device int32[batch])");
  }
  check_lengths_pointer("cache_seqlens", args.cache_seqlens);

  check_tensor("q", args.q, false);
  check_tensor("out", args.out, false);
  check_tensor("k_cache", args.k_cache, false);
  check_tensor("v_cache", args.v_cache, false);
  check_does_not_overlap("out", args.out, args.batch, args.seqlen_q, args.heads_q, args.head_dim,
                         false);

  const bool appends = args.k_new.data != nullptr || args.v_new.data != nullptr;
  if (appends) {
    if (args.k_new.data == nullptr || args.v_new.data == nullptr) {
      throw_invalid(fmt::format("{}.data is set but {}.data is null: an append needs both",
                                args.k_new.data != nullptr ? "k_new" : "v_new",
                                args.k_new.data != nullptr ? "v_new" : "k_new"));
    }
    check_range("seqlen_new", args.seqlen_new, 1, capacity);
    if (std::int64_t{args.seqlen_new} * args.heads_kv * (args.head_dim / 8) >
        std::numeric_limits<std::int32_t>::max()) {
      throw_unsupported(fmt::format(
          "seqlen_new = {} x heads_kv = {} x head_dim / 8 = {} chunks exceed the 2^31 the append "
          "numbers",
          args.seqlen_new, args.heads_kv, args.head_dim / 8));
    }
    check_tensor("k_new", args.k_new, false);
    check_tensor("v_new", args.v_new, false);
    // The append writes the cache: rows of distinct positions must not share memory.
    const std::int64_t outer = paged ? args.num_blocks : args.batch;
    const int rows = paged ? args.block_size : args.max_cache_len;
    check_does_not_overlap("k_cache", args.k_cache, outer, rows, args.heads_kv, args.head_dim,
                           false);
    check_does_not_overlap("v_cache", args.v_cache, outer, rows, args.heads_kv, args.head_dim,
                           false);
  } else if (args.seqlen_new != 0) {
    throw_invalid(fmt::format(
        "seqlen_new = {} but k_new.data and v_new.data are null: set them, or seqlen_new = 0",
        args.seqlen_new));
  }

  if (args.score_mod != nullptr) {
    check_aligned("score_mod", args.score_mod, alignof(float));
    if (args.batch > 1 && args.score_mod_batch_stride < capacity) {
      throw_invalid(fmt::format(
          "score_mod_batch_stride = {} is smaller than the cache capacity {} (score_mod is "
          "[batch, capacity] by cache position)",
          args.score_mod_batch_stride, capacity));
    }
  }
  check_options(args.window_left, args.window_right, args.scale, args.bias, args.sigmoid);
  if (args.workspace != nullptr) {
    check_aligned("workspace", args.workspace, kTensorAlignment);
  } else if (args.workspace_bytes != 0) {
    throw_invalid(fmt::format("workspace_bytes = {} but workspace is null", args.workspace_bytes));
  }

  gen::KernelSpec spec;
  spec.direction = gen::Direction::decode;
  spec.dtype = args.dtype == DType::bf16 ? gen::DType::bf16 : gen::DType::fp16;
  spec.head_dim = args.head_dim;
  spec.layout = paged ? gen::Layout::paged : gen::Layout::padded;
  spec.causal = args.causal;
  spec.window = args.window_left >= 0 || args.window_right >= 0;
  spec.score_mod = args.score_mod != nullptr;
  spec.sigmoid = spec_sigmoid(args.sigmoid);
  return spec;
}

void check_kvcache_pointers(const KvCacheArgs& args) {
  check_device_pointer("q.data", args.q.data);
  check_device_pointer("out.data", args.out.data);
  check_device_pointer("k_cache.data", args.k_cache.data);
  check_device_pointer("v_cache.data", args.v_cache.data);
  check_device_pointer("k_new.data", args.k_new.data);
  check_device_pointer("v_new.data", args.v_new.data);
  check_device_pointer("cache_seqlens", args.cache_seqlens);
  check_device_pointer("block_table", args.block_table);
  check_device_pointer("score_mod", args.score_mod);
  check_device_pointer("workspace", args.workspace);
}

void check_cache_contents(const KvCacheArgs& args, const std::vector<std::int32_t>& cache_seqlens,
                          const std::vector<std::int32_t>& block_table) {
  const int capacity = kvcache_capacity(args);
  const int most_before = capacity - args.seqlen_new;
  for (int b = 0; b < args.batch; ++b) {
    if (cache_seqlens[b] < 0 || cache_seqlens[b] > most_before) {
      throw_invalid(fmt::format(
          "cache_seqlens[{}] = {} is out of range [0, {}]: the cache holds {} positions per "
          "sequence, {} of them for the seqlen_new new tokens",
          b, cache_seqlens[b], most_before, capacity, args.seqlen_new));
    }
    if (args.block_table == nullptr) continue;
    const int used = (cache_seqlens[b] + args.seqlen_new + args.block_size - 1) / args.block_size;
    for (int i = 0; i < used; ++i) {
      const std::int32_t block = block_table[b * args.block_table_batch_stride + i];
      if (block < 0 || block >= args.num_blocks) {
        throw_invalid(fmt::format(
            "block_table[{}][{}] = {} is out of range [0, {}) (num_blocks); sequence {} uses "
            "its first {} entries",
            b, i, block, args.num_blocks, b, used));
      }
    }
  }
}

void check_kvcache_lengths_on_device(const KvCacheArgs& args, CUstream stream) {
  if (args.trust_lengths || capturing(stream)) return;
  const std::vector<std::int32_t> lengths = copy_to_host(args.cache_seqlens, args.batch, stream);
  std::vector<std::int32_t> table;
  if (args.block_table != nullptr) {
    const std::int64_t entries = (args.batch - 1) * args.block_table_batch_stride + args.max_blocks;
    table = copy_to_host(args.block_table, static_cast<int>(entries), stream);
  }
  check_cache_contents(args, lengths, table);
}

}  // namespace sigattn
