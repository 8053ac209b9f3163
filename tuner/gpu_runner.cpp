// The worker's GPU side: task setup (inputs, lengths, reference), compilation through the module
// cache (so every CUBIN lands in the user database's binary store), verification, and timing with
// CUDA events. A driver error during a candidate is recorded as launch_error; when the context is
// still broken afterwards (an illegal address is sticky) the runner reports it lost and the worker
// exits, to be replaced by a fresh one.
#include "tuner/gpu_runner.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>

#include "generator/generator.hpp"
#include "runtime/backward.hpp"
#include "runtime/errors.hpp"
#include "runtime/forward.hpp"
#include "runtime/kvcache.hpp"
#include "runtime/module_cache.hpp"

namespace sigattn::tune {
namespace {

using cache::CandidateStatus;

// Warm-up runs stop at this count even if warmed_up() never holds (kernels of a few
// microseconds, whose event timings jitter by more than kSteadyChange).
constexpr int kMaxWarmupRuns = 20000;
// Input sets rotated between repetitions: enough to exceed the L2 cache several times over, and
// within a share of device memory.
constexpr int kMinInputSets = 2;
constexpr int kMaxInputSets = 8;
// The flush buffer is this many times the L2 size.
constexpr std::size_t kFlushFactor = 4;
// Longest part of a compiler error kept in a candidate's message.
constexpr std::size_t kMaxMessage = 2000;

class Event {
 public:
  Event() { SIGATTN_CU(cuda::driver().cuEventCreate(&event_, CU_EVENT_DEFAULT)); }
  ~Event() {
    if (event_ != nullptr) cuda::driver().cuEventDestroy(event_);
  }
  Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  Event& operator=(Event&&) = delete;
  void record() { SIGATTN_CU(cuda::driver().cuEventRecord(event_, nullptr)); }
  void synchronize() { SIGATTN_CU(cuda::driver().cuEventSynchronize(event_)); }
  float ms_since(const Event& start) const {
    float ms = 0.0f;
    SIGATTN_CU(cuda::driver().cuEventElapsedTime(&ms, start.event_, event_));
    return ms;
  }

 private:
  CUevent event_ = nullptr;
};

std::string truncated(const std::string& text) {
  return text.size() <= kMaxMessage ? text : text.substr(0, kMaxMessage) + " [...]";
}

gen::KernelSpec with_direction(gen::KernelSpec spec, gen::Direction direction) {
  spec.direction = direction;
  return spec;
}

}  // namespace

Tolerance forward_tolerance(gen::DType dtype) {
  return dtype == gen::DType::bf16 ? Tolerance{1e-2, 4e-2} : Tolerance{4e-3, 1.5e-2};
}

Tolerance backward_tolerance(gen::DType dtype) {
  const Tolerance t = forward_tolerance(dtype);
  return {2.0 * t.rel_l2, 2.0 * t.max_rel};
}

std::string compare_outputs(const std::vector<float>& out, const std::vector<float>& expected,
                            Tolerance tolerance, const std::string& what) {
  if (out.size() != expected.size()) {
    return fmt::format("{}: {} elements, the reference has {}", what, out.size(), expected.size());
  }
  double max_ref = 0.0;
  for (const float r : expected) max_ref = std::max(max_ref, double(std::fabs(r)));
  double error_sq = 0.0;
  double ref_sq = 0.0;
  double max_error = 0.0;
  std::int64_t bad = 0;
  std::optional<std::size_t> first_bad;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const double difference = double(out[i]) - expected[i];
    const bool finite = std::isfinite(out[i]);
    if (finite) {
      error_sq += difference * difference;
      max_error = std::max(max_error, std::fabs(difference));
    }
    ref_sq += double(expected[i]) * expected[i];
    if (!finite || std::fabs(difference) > tolerance.max_rel * max_ref) {
      ++bad;
      if (!first_bad) first_bad = i;
    }
  }
  const double rel_l2 = ref_sq > 0.0 ? std::sqrt(error_sq / ref_sq) : std::sqrt(error_sq);
  if (bad == 0 && rel_l2 <= tolerance.rel_l2) return {};
  std::string text = fmt::format(
      "{} differs from the reference: relative L2 {:.3g} (bound {:.3g}), max error {:.3g} of "
      "max|ref| {:.3g} (bound {:.3g}), {} elements out of bounds",
      what, rel_l2, tolerance.rel_l2, max_error, max_ref, tolerance.max_rel, bad);
  if (first_bad) {
    text += fmt::format("; first at element {}: {} instead of {}", *first_bad, out[*first_bad],
                        expected[*first_bad]);
  }
  return text;
}

GpuRunner::GpuRunner(int ordinal, std::optional<FaultInjection> injection)
    : injection_(std::move(injection)) {
  const cuda::DriverApi& api = cuda::driver();
  int count = 0;
  SIGATTN_CU(api.cuDeviceGetCount(&count));
  if (ordinal < 0 || ordinal >= count) {
    throw_invalid(
        fmt::format("device {} does not exist: the driver reports {} device(s)", ordinal, count));
  }
  SIGATTN_CU(api.cuDeviceGet(&cu_device_, ordinal));
  SIGATTN_CU(api.cuDevicePrimaryCtxRetain(&context_, cu_device_));
  SIGATTN_CU(api.cuCtxSetCurrent(context_));
  info_ = cuda::device_info(cu_device_);
  const policy::DeviceArch device = cuda::device_arch(info_.cc_major, info_.cc_minor);
  arch_ = device.arch;
  target_ = policy::target_for_device(device, info_.max_smem_optin);
  kernels_ = std::make_unique<ReferenceKernels>();
  int l2_bytes = 0;
  SIGATTN_CU(api.cuDeviceGetAttribute(&l2_bytes, CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, cu_device_));
  flush_ = cuda::DeviceBuffer(kFlushFactor * static_cast<std::size_t>(std::max(l2_bytes, 1 << 20)));
  flag_ = cuda::DeviceBuffer(sizeof(int));
  flag_.fill_bytes(0);
}

// The primary context stays retained until the process ends: buffers and modules live in it.
GpuRunner::~GpuRunner() = default;

cache::DeviceKey GpuRunner::device() { return {info_.name, arch_, info_.sm_count}; }

ShapeTensors GpuRunner::tensors(const InputSet& set) const {
  ShapeTensors tensors;
  tensors.q = set.q.get();
  tensors.k = set.k.get();
  tensors.v = set.v.get();
  tensors.out = task_->shape.pass == Pass::backward ? set.dout.get() : out_.get();
  // Padded shapes' lengths, and every decode shape's cache lengths.
  if (lengths_.size() > 0) tensors.lengths = static_cast<const std::int32_t*>(lengths_.get());
  tensors.grad_out = set.dout.get();
  tensors.grad_q = grad_q_.get();
  tensors.grad_k = grad_k_.get();
  tensors.grad_v = grad_v_.get();
  tensors.block_table = static_cast<const std::int32_t*>(block_table_.get());
  return tensors;
}

ForwardArgs GpuRunner::forward_args(const InputSet& set) const {
  ForwardArgs args = tune::forward_args(task_->shape, tensors(set));
  // The lengths were written here and are valid; checking them would synchronize every launch.
  args.trust_lengths = true;
  return args;
}

BackwardArgs GpuRunner::backward_args(const InputSet& set) const {
  BackwardArgs args = tune::backward_args(task_->shape, tensors(set));
  args.inputs.trust_lengths = true;
  return args;
}

KvCacheArgs GpuRunner::kvcache_args(const InputSet& set) const {
  return tune::kvcache_args(task_->shape, tensors(set));
}

void GpuRunner::run(const gen::TileConfig& tile, const InputSet& set) {
  switch (task_->direction) {
    case gen::Direction::forward:
      forward_with_tile(forward_args(set), nullptr, tile);
      return;
    case gen::Direction::dkdv:
      backward_with_tiles(backward_args(set), nullptr, tile, default_dq_);
      return;
    case gen::Direction::dq:
      backward_with_tiles(backward_args(set), nullptr, default_dkdv_, tile);
      return;
    case gen::Direction::decode:
      forward_with_kvcache_tile(kvcache_args(set), nullptr, tile);
      return;
  }
}

std::vector<float> GpuRunner::widened(const cuda::DeviceBuffer& buffer, std::int64_t count) {
  kernels_->widen(buffer.get(), static_cast<float*>(widen_buffer_.get()), count, task_->shape.dtype,
                  nullptr);
  std::vector<float> host(count);
  widen_buffer_.download(host.data(), host.size() * sizeof(float));
  return host;
}

std::vector<std::vector<float>> GpuRunner::outputs() {
  SIGATTN_CU(cuda::driver().cuCtxSynchronize());
  const Shape& s = task_->shape;
  if (s.pass == Pass::decode) {
    return {widened(out_, std::int64_t{s.batch} * s.decode_rows * s.heads_q * s.head_dim)};
  }
  const std::int64_t q_elements = std::int64_t{s.batch} * s.seqlen * s.heads_q * s.head_dim;
  const std::int64_t kv_elements = std::int64_t{s.batch} * s.seqlen * s.heads_kv * s.head_dim;
  if (s.pass == Pass::forward) return {widened(out_, q_elements)};
  return {widened(grad_q_, q_elements), widened(grad_k_, kv_elements),
          widened(grad_v_, kv_elements)};
}

void GpuRunner::poison_outputs() {
  // 0xFFFF is a NaN in bf16 and fp16: an element a kernel fails to write shows.
  if (task_->shape.pass != Pass::backward) {
    out_.fill_bytes(0xFF);
  } else {
    grad_q_.fill_bytes(0xFF);
    grad_k_.fill_bytes(0xFF);
    grad_v_.fill_bytes(0xFF);
  }
}

void GpuRunner::set_task(const Task& task) {
  SIGATTN_CU(cuda::driver().cuCtxSetCurrent(context_));
  task_ = task;
  verified_.clear();
  expected_.clear();
  sets_.clear();
  const Shape& s = task.shape;
  if (s.pass == Pass::decode) {
    set_decode_task();
    return;
  }
  const std::size_t q_bytes = std::size_t{2} * s.batch * s.seqlen * s.heads_q * s.head_dim;
  const std::size_t kv_bytes = std::size_t{2} * s.batch * s.seqlen * s.heads_kv * s.head_dim;
  const bool backward = s.pass == Pass::backward;
  const std::size_t set_bytes = q_bytes + 2 * kv_bytes + (backward ? q_bytes : 0);
  const int set_count = input_set_count(set_bytes);
  const std::uint64_t seed = std::hash<std::string>{}(task.name());
  const auto filled = [&](std::size_t bytes, std::uint64_t stream_seed) {
    return random_buffer(bytes, stream_seed);
  };
  for (int i = 0; i < set_count; ++i) {
    InputSet set;
    set.q = filled(q_bytes, seed + 4 * i);
    set.k = filled(kv_bytes, seed + 4 * i + 1);
    set.v = filled(kv_bytes, seed + 4 * i + 2);
    if (backward) set.dout = filled(q_bytes, seed + 4 * i + 3);
    sets_.push_back(std::move(set));
  }
  out_ = backward ? cuda::DeviceBuffer() : cuda::DeviceBuffer(q_bytes);
  grad_q_ = backward ? cuda::DeviceBuffer(q_bytes) : cuda::DeviceBuffer();
  grad_k_ = backward ? cuda::DeviceBuffer(kv_bytes) : cuda::DeviceBuffer();
  grad_v_ = backward ? cuda::DeviceBuffer(kv_bytes) : cuda::DeviceBuffer();
  widen_buffer_ = cuda::DeviceBuffer(2 * std::max(q_bytes, kv_bytes));
  lengths_ = task.lengths.empty() ? cuda::DeviceBuffer() : int_buffer(task.lengths);
  block_table_ = cuda::DeviceBuffer();
  default_dkdv_ =
      policy::default_tile(with_direction(task.spec, gen::Direction::dkdv), target_).tile;
  default_dq_ = policy::default_tile(with_direction(task.spec, gen::Direction::dq), target_).tile;

  if (!backward) {
    kernels_->forward(forward_args(sets_.front()), static_cast<float*>(widen_buffer_.get()),
                      nullptr);
    SIGATTN_CU(cuda::driver().cuCtxSynchronize());
    std::vector<float> reference(q_bytes / 2);
    widen_buffer_.download(reference.data(), reference.size() * sizeof(float));
    expected_.push_back(std::move(reference));
    return;
  }
  // The backward reference: the gradients of the deterministic default tiles, which the GPU tests
  // check against an fp64 CPU reference.
  backward_with_tiles(backward_args(sets_.front()), nullptr, default_dkdv_, default_dq_);
  expected_ = outputs();
  for (const std::vector<float>& gradient : expected_) {
    if (!std::all_of(gradient.begin(), gradient.end(), [](float x) { return std::isfinite(x); })) {
      throw std::runtime_error(
          fmt::format("the default tiles' gradients of {} are not finite", task.name()));
    }
  }
}

int GpuRunner::input_set_count(std::size_t set_bytes) const {
  int count = static_cast<int>(std::clamp<std::size_t>((flush_.size() + set_bytes - 1) / set_bytes,
                                                       kMinInputSets, kMaxInputSets));
  while (count > kMinInputSets && count * set_bytes > info_.total_mem / 3) --count;
  return count;
}

cuda::DeviceBuffer GpuRunner::random_buffer(std::size_t bytes, std::uint64_t seed) const {
  cuda::DeviceBuffer buffer(bytes);
  kernels_->fill_normal(buffer.get(), static_cast<std::int64_t>(bytes / 2), task_->shape.dtype,
                        seed, nullptr);
  return buffer;
}

cuda::DeviceBuffer GpuRunner::int_buffer(const std::vector<int>& values) {
  const std::vector<std::int32_t> narrow(values.begin(), values.end());
  cuda::DeviceBuffer buffer(narrow.size() * sizeof(std::int32_t));
  buffer.upload(narrow.data(), narrow.size() * sizeof(std::int32_t));
  return buffer;
}

void GpuRunner::set_decode_task() {
  const Shape& s = task_->shape;
  const int blocks = blocks_per_sequence(s);
  const std::size_t positions = s.block_size > 0 ? std::size_t(blocks) * s.block_size : s.seqlen;
  const std::size_t row_bytes = std::size_t{2} * s.heads_kv * s.head_dim;  // one cache position
  const std::size_t cache_bytes = std::size_t(s.batch) * positions * row_bytes;
  const std::size_t q_bytes = std::size_t{2} * s.batch * s.decode_rows * s.heads_q * s.head_dim;
  const int set_count = input_set_count(q_bytes + 2 * cache_bytes);
  const std::uint64_t seed = std::hash<std::string>{}(task_->name());
  for (int i = 0; i < set_count; ++i) {
    InputSet set;
    set.q = random_buffer(q_bytes, seed + 3 * i);
    set.k = random_buffer(cache_bytes, seed + 3 * i + 1);
    set.v = random_buffer(cache_bytes, seed + 3 * i + 2);
    sets_.push_back(std::move(set));
  }
  out_ = cuda::DeviceBuffer(q_bytes);
  grad_q_ = cuda::DeviceBuffer();
  grad_k_ = cuda::DeviceBuffer();
  grad_v_ = cuda::DeviceBuffer();
  widen_buffer_ = cuda::DeviceBuffer(2 * q_bytes);
  lengths_ =
      int_buffer(task_->lengths.empty() ? std::vector<int>(s.batch, s.seqlen) : task_->lengths);

  // The reference reads a contiguous cache: the paged one's blocks copied out in table order.
  const InputSet& first = sets_.front();
  cuda::DeviceBuffer contiguous_k, contiguous_v;
  ShapeTensors reference_tensors = tensors(first);
  block_table_ = cuda::DeviceBuffer();
  if (s.block_size > 0) {
    std::vector<int> table(std::size_t(s.batch) * blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937_64(seed));
    block_table_ = int_buffer(table);
    const std::size_t block_bytes = std::size_t(s.block_size) * row_bytes;
    const std::size_t contiguous_bytes = std::size_t(s.batch) * s.seqlen * row_bytes;
    contiguous_k = cuda::DeviceBuffer(contiguous_bytes);
    contiguous_v = cuda::DeviceBuffer(contiguous_bytes);
    for (int b = 0; b < s.batch; ++b) {
      for (int j = 0; j < blocks; ++j) {
        const std::size_t to =
            (std::size_t(b) * s.seqlen + std::size_t(j) * s.block_size) * row_bytes;
        const std::size_t from = std::size_t(table[std::size_t(b) * blocks + j]) * block_bytes;
        const std::size_t bytes =
            std::min<std::size_t>(s.block_size, s.seqlen - j * s.block_size) * row_bytes;
        for (const auto& [out, in] :
             {std::pair{&contiguous_k, &first.k}, std::pair{&contiguous_v, &first.v}}) {
          SIGATTN_CU(
              cuda::driver().cuMemcpyDtoDAsync(out->ptr() + to, in->ptr() + from, bytes, nullptr));
        }
      }
    }
    reference_tensors.k = contiguous_k.get();
    reference_tensors.v = contiguous_v.get();
  }
  kernels_->forward(decode_reference_args(s, reference_tensors),
                    static_cast<float*>(widen_buffer_.get()), nullptr);
  SIGATTN_CU(cuda::driver().cuCtxSynchronize());
  std::vector<float> reference(q_bytes / 2);
  widen_buffer_.download(reference.data(), reference.size() * sizeof(float));
  expected_.push_back(std::move(reference));
}

CompileInfo GpuRunner::compile(const gen::Variant& variant) {
  const std::shared_ptr<const CompiledKernel> compiled =
      ModuleCache::instance().compiled(gen::generate(variant), arch_);
  return {compiled->registers, compiled->spill_store_bytes, compiled->spill_load_bytes};
}

Timing GpuRunner::time(const gen::TileConfig& tile, int repetitions) {
  const std::size_t sets = sets_.size();
  std::vector<double> warmup_ms;
  for (int i = 0; i < kMaxWarmupRuns && !warmed_up(warmup_ms); ++i) {
    Event start, stop;
    start.record();
    run(tile, sets_[i % sets]);
    stop.record();
    stop.synchronize();
    warmup_ms.push_back(stop.ms_since(start));
  }
  std::vector<Event> starts(repetitions), stops(repetitions);
  for (int i = 0; i < repetitions; ++i) {
    // The flush kernel runs while the host prepares the next launch, so the start event is
    // reached with the candidate already queued behind it.
    kernels_->flush(flush_.get(), flush_.size(), nullptr);
    starts[i].record();
    run(tile, sets_[i % sets]);
    stops[i].record();
  }
  stops.back().synchronize();
  std::vector<double> times;
  for (int i = 0; i < repetitions; ++i) times.push_back(stops[i].ms_since(starts[i]));
  return summarize(std::move(times));
}

Measurement GpuRunner::measure(const gen::TileConfig& tile, const MeasureRequest& request,
                               const std::function<void(std::string_view)>& phase) {
  Measurement m;
  phase("compile");
  const std::string name = gen::to_string(tile);
  if (const std::string why = policy::rejection(task_->spec, tile, target_); !why.empty()) {
    m.status = CandidateStatus::compile_error;
    m.message = fmt::format("{} is rejected on {}: {}", name, arch_, why);
    return m;
  }
  try {
    m.compile = compile({task_->spec, tile});
  } catch (const std::exception& error) {
    m.status = CandidateStatus::compile_error;
    m.message = truncated(error.what());
    return m;
  }
  if (m.compile.spills() && request.skip_if_spills) {
    m.skipped_spilling = true;
    return m;
  }
  try {
    if (!verified_.contains(name)) {
      phase("verify");
      if (injection_ && injection_->tile == tile) {
        if (injection_->kind == FaultInjection::Kind::fault) {
          kernels_->fault(nullptr);
        } else {
          kernels_->hang(static_cast<const int*>(flag_.get()), nullptr);
        }
        SIGATTN_CU(cuda::driver().cuCtxSynchronize());
      }
      poison_outputs();
      run(tile, sets_.front());
      const std::vector<std::vector<float>> got = outputs();
      const bool forward = task_->shape.pass == Pass::forward;
      const Tolerance tolerance =
          forward ? forward_tolerance(task_->shape.dtype) : backward_tolerance(task_->shape.dtype);
      const char* names[] = {"dQ", "dK", "dV"};
      for (std::size_t i = 0; i < got.size(); ++i) {
        const std::string why =
            compare_outputs(got[i], expected_[i], tolerance, forward ? "O" : names[i]);
        if (!why.empty()) {
          m.status = CandidateStatus::verify_failed;
          m.message = why;
          return m;
        }
      }
      verified_.insert(name);
    }
    phase("time");
    m.timing = time(tile, std::max(1, request.repetitions));
  } catch (const DriverError& error) {
    m.status = CandidateStatus::launch_error;
    m.message = truncated(error.what());
    // A sticky error (an illegal address, a kernel exception) fails every later call as well.
    context_lost_ = cuda::driver().cuCtxSynchronize() != CUDA_SUCCESS;
  } catch (const Error& error) {
    m.status = CandidateStatus::launch_error;
    m.message = truncated(error.what());
  }
  return m;
}

}  // namespace sigattn::tune
