// Tile counters per stream, and per captured launch, carved from slabs of device memory.
#include "runtime/tile_counters.hpp"

#include <algorithm>
#include <memory>

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
  // Never destroyed: the driver may destroy a graph's user object during the process's exit.
  static TileCounters* counters = new TileCounters;
  return *counters;
}

CUdeviceptr TileCounters::fresh(CUcontext context, CUstream stream) {
  CUdeviceptr counter = 0;
  const auto returned = std::find_if(returned_.begin(), returned_.end(),
                                     [&](const auto& entry) { return entry.first == context; });
  if (returned != returned_.end()) {
    counter = returned->second;
    returned_.erase(returned);
  } else {
    Slab* slab = nullptr;
    for (Slab& candidate : slabs_) {
      if (candidate.context == context && candidate.used < kCountersPerSlab) slab = &candidate;
    }
    if (slab == nullptr) {
      slabs_.push_back(
          {context, allocate_while_capture_may_run(kCountersPerSlab * sizeof(TileCounter)), 0});
      slab = &slabs_.back();
    }
    counter = slab->base + slab->used * sizeof(TileCounter);
    ++slab->used;
  }
  SIGATTN_CU(cuda::driver().cuMemsetD32Async(counter, 0, sizeof(TileCounter) / 4, stream));
  return counter;
}

CUdeviceptr TileCounters::for_graph(CUcontext context, CUstream stream) {
  const cuda::DriverApi& api = cuda::driver();
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  CUgraph graph = nullptr;
  SIGATTN_CU(
      api.cuStreamGetCaptureInfo(stream, &status, nullptr, &graph, nullptr, nullptr, nullptr));
  const CUdeviceptr counter = fresh(context, stream);
  auto owned = std::make_unique<GraphCounter>(GraphCounter{this, context, counter});
  CUuserObject object = nullptr;
  const CUresult created = api.cuUserObjectCreate(&object, owned.get(), &TileCounters::release, 1,
                                                  CU_USER_OBJECT_NO_DESTRUCTOR_SYNC);
  if (created != CUDA_SUCCESS) {
    returned_.emplace_back(context, counter);
    SIGATTN_CU(created);
  }
  ++held_by_graphs_;
  owned.release();
  // On failure the graph holds no reference and the one of this call frees the counter.
  const CUresult retained =
      api.cuGraphRetainUserObject(graph, object, 1, CU_GRAPH_USER_OBJECT_MOVE);
  if (retained != CUDA_SUCCESS) {
    api.cuUserObjectRelease(object, 1);
    SIGATTN_CU(retained);
  }
  return counter;
}

void TileCounters::release(void* graph_counter) {
  const std::unique_ptr<GraphCounter> owned(static_cast<GraphCounter*>(graph_counter));
  std::lock_guard lock(owned->owner->mutex_);
  owned->owner->returned_.emplace_back(owned->context, owned->counter);
  --owned->owner->held_by_graphs_;
}

int TileCounters::held_by_graphs() {
  std::lock_guard lock(mutex_);
  return held_by_graphs_;
}

TileCounter* TileCounters::for_launch(CUstream stream) {
  const CUcontext context = cuda::current_context();
  std::lock_guard lock(mutex_);
  if (capturing(stream)) return reinterpret_cast<TileCounter*>(for_graph(context, stream));
  unsigned long long id = 0;
  SIGATTN_CU(cuda::driver().cuStreamGetId(stream, &id));
  const auto key = std::make_pair(context, id);
  auto found = by_stream_.find(key);
  if (found == by_stream_.end()) found = by_stream_.emplace(key, fresh(context, stream)).first;
  return reinterpret_cast<TileCounter*>(found->second);
}

}  // namespace sigattn
