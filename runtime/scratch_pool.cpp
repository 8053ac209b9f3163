// The scratch pool: per context, grow-only device buffers, each either leased to one stream or
// free. Reuse is safe because a lease ends with an event recorded on its stream and the next
// lease of that buffer makes its own stream wait for the event (a no-op once the work is done).
#include "runtime/scratch_pool.hpp"

#include "runtime/cuda_driver.hpp"

namespace sigattn {
namespace {

// True when every piece of work enqueued during the buffer's earlier leases has finished.
bool finished(CUevent released, bool recorded) {
  if (!recorded) return true;
  const CUresult state = cuda::driver().cuEventQuery(released);
  if (state == CUDA_ERROR_NOT_READY) return false;
  SIGATTN_CU(state);
  return true;
}

}  // namespace

ScratchPool::Lease::Lease(Lease&& other) noexcept
    : pool_(other.pool_), buffer_(other.buffer_), stream_(other.stream_) {
  other.pool_ = nullptr;
}

ScratchPool::Lease::~Lease() {
  if (pool_ != nullptr) pool_->release(buffer_, stream_);
}

CUdeviceptr ScratchPool::Lease::ptr() const noexcept { return buffer_->ptr; }

ScratchPool& ScratchPool::instance() {
  static ScratchPool pool;
  return pool;
}

ScratchPool::Buffer& ScratchPool::pick(CUcontext context, std::size_t bytes, CUstream stream) {
  // Best first: idle and large enough; large enough and last used on this stream (stream order
  // already serializes it); idle but small; small and last used on this stream. A buffer busy on
  // another stream is never taken: that would serialize independent streams.
  Buffer* best = nullptr;
  int best_rank = 4;
  for (const std::unique_ptr<Buffer>& buffer : buffers_) {
    if (buffer->context != context || buffer->leased) continue;
    const bool idle = finished(buffer->released, buffer->recorded);
    const bool same_stream = buffer->last_stream == stream;
    const bool fits = buffer->bytes >= bytes;
    const int rank = idle && fits ? 0 : same_stream && fits ? 1 : idle ? 2 : same_stream ? 3 : 4;
    if (rank < best_rank) {
      best = buffer.get();
      best_rank = rank;
    }
  }
  if (best != nullptr) return *best;
  auto buffer = std::make_unique<Buffer>();
  buffer->context = context;
  SIGATTN_CU(cuda::driver().cuEventCreate(&buffer->released, CU_EVENT_DISABLE_TIMING));
  buffers_.push_back(std::move(buffer));
  return *buffers_.back();
}

ScratchPool::Lease ScratchPool::acquire(std::size_t bytes, CUstream stream) {
  const cuda::DriverApi& api = cuda::driver();
  const CUcontext context = cuda::current_context();
  std::lock_guard lock(mutex_);
  Buffer& buffer = pick(context, bytes, stream);
  if (buffer.bytes < bytes) {
    // Growing frees the old memory, so its earlier work must have finished first.
    if (buffer.recorded) SIGATTN_CU(api.cuEventSynchronize(buffer.released));
    if (buffer.ptr != 0) {
      SIGATTN_CU(api.cuMemFree(buffer.ptr));
      buffer.ptr = 0;
      buffer.bytes = 0;
    }
    SIGATTN_CU(api.cuMemAlloc(&buffer.ptr, bytes));
    buffer.bytes = bytes;
  }
  // Also covers a destroyed stream whose handle came back for a new one.
  if (buffer.recorded) SIGATTN_CU(api.cuStreamWaitEvent(stream, buffer.released, 0));
  buffer.leased = true;
  return Lease(this, &buffer, stream);
}

void ScratchPool::release(Buffer* buffer, CUstream stream) noexcept {
  bool recorded = false;
  try {
    const cuda::DriverApi& api = cuda::driver();
    recorded = api.cuEventRecord(buffer->released, stream) == CUDA_SUCCESS;
    // Without the event, waiting for the stream leaves nothing of this lease in flight.
    if (!recorded) api.cuStreamSynchronize(stream);
  } catch (...) {
    recorded = false;
  }
  std::lock_guard lock(mutex_);
  buffer->recorded = recorded;
  buffer->last_stream = stream;
  buffer->leased = false;
}

}  // namespace sigattn
