// Device scratch memory owned by the library for work enqueued on callers' streams (the fp32 dQ
// workspace of the one-pass backward). Each CUDA context has a set of grow-only buffers; a lease
// gives one buffer to one stream, and every later use of that buffer is ordered after the
// work enqueued during the lease, so calls on any number of streams and threads never share
// memory that is still in use.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

namespace sigattn {

class ScratchPool {
  struct Buffer;

 public:
  // The buffer of one call: enqueue the work that uses it on `stream` while the lease lives.
  class Lease {
   public:
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    // Marks the end of the enqueued work (an event recorded on the stream) and returns the
    // buffer to the pool; the work itself may still be running.
    ~Lease();

    CUdeviceptr ptr() const noexcept;

   private:
    friend class ScratchPool;
    Lease(ScratchPool* pool, Buffer* buffer, CUstream stream)
        : pool_(pool), buffer_(buffer), stream_(stream) {}
    ScratchPool* pool_;
    Buffer* buffer_;
    CUstream stream_;
  };

  static ScratchPool& instance();

  // A buffer of at least `bytes` in the current context for work on `stream`, not leased to
  // anyone else, whose previous work is ordered before what `stream` runs next (a wait on the
  // previous lease's event is enqueued when that work may still be running). Buffers that are
  // idle or last used on the same stream are reused; otherwise one is added. Not for streams
  // under CUDA graph capture.
  Lease acquire(std::size_t bytes, CUstream stream);

 private:
  struct Buffer {
    CUcontext context = nullptr;
    CUdeviceptr ptr = 0;
    std::size_t bytes = 0;
    CUevent released = nullptr;  // recorded when the last lease ended
    bool recorded = false;       // `released` marks some earlier work
    CUstream last_stream = nullptr;
    bool leased = false;
  };

  ScratchPool() = default;
  Buffer& pick(CUcontext context, std::size_t bytes, CUstream stream);
  void release(Buffer* buffer, CUstream stream) noexcept;

  std::mutex mutex_;
  // Never freed while the process runs, like loaded modules: work on callers' streams may still
  // read them.
  std::vector<std::unique_ptr<Buffer>> buffers_;
};

}  // namespace sigattn
