// Tile counters per stream, and per captured launch, carved from slabs of device memory.
#include "runtime/tile_counters.hpp"

#include "runtime/cuda_driver.hpp"
#include "runtime/validation.hpp"

namespace sigattn {
namespace {

constexpr int kCountersPerSlab = 512;

// cuMemAlloc with this thread's capture mode relaxed: a capture in global mode (here or on
// another thread) refuses calls that may synchronize, and a slab must be allocated while one runs.
CUdeviceptr allocate_while_capture_may_run(std::size_t bytes) {
  const cuda::DriverApi& api = cuda::driver();
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  SIGATTN_CU(api.cuThreadExchangeStreamCaptureMode(&mode));
  CUdeviceptr ptr = 0;
  const CUresult result = api.cuMemAlloc(&ptr, bytes);
  SIGATTN_CU(api.cuThreadExchangeStreamCaptureMode(&mode));
  SIGATTN_CU(result);
  return ptr;
}

}  // namespace

TileCounters& TileCounters::instance() {
  static TileCounters counters;
  return counters;
}

CUdeviceptr TileCounters::fresh(CUcontext context, CUstream stream) {
  Slab* slab = nullptr;
  for (Slab& candidate : slabs_) {
    if (candidate.context == context && candidate.used < kCountersPerSlab) slab = &candidate;
  }
  if (slab == nullptr) {
    slabs_.push_back(
        {context, allocate_while_capture_may_run(kCountersPerSlab * sizeof(TileCounter)), 0});
    slab = &slabs_.back();
  }
  const CUdeviceptr counter = slab->base + slab->used * sizeof(TileCounter);
  ++slab->used;
  SIGATTN_CU(cuda::driver().cuMemsetD32Async(counter, 0, sizeof(TileCounter) / 4, stream));
  return counter;
}

TileCounter* TileCounters::for_launch(CUstream stream) {
  const CUcontext context = cuda::current_context();
  std::lock_guard lock(mutex_);
  if (capturing(stream)) return reinterpret_cast<TileCounter*>(fresh(context, stream));
  unsigned long long id = 0;
  SIGATTN_CU(cuda::driver().cuStreamGetId(stream, &id));
  const auto key = std::make_pair(context, id);
  auto found = by_stream_.find(key);
  if (found == by_stream_.end()) found = by_stream_.emplace(key, fresh(context, stream)).first;
  return reinterpret_cast<TileCounter*>(found->second);
}

}  // namespace sigattn
