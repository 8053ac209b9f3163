// Device memory for the tile counters of the dynamic schedule (TileCounter in
// templates/sigattn/fwd_sm90_params.h). The kernels leave a counter at zero when they finish, and
// a stream runs its launches one after another, so each stream has one counter for all its
// launches; a launch captured into a CUDA graph gets one of its own, which a memset node in the
// graph zeroes before every replay, and which returns for reuse once the graph and its
// executable copies are destroyed and their launches are done (a user object the graph owns).
#pragma once

#include <cuda.h>

#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "sigattn/fwd_sm90_params.h"

namespace sigattn {

class TileCounters {
 public:
  static TileCounters& instance();

  // The zeroed counter for the launch enqueued next on `stream` in the current context. Never
  // shared with a launch that may run at the same time.
  TileCounter* for_launch(CUstream stream);

  // Counters held by captured graphs that still exist, in all contexts.
  int held_by_graphs();

 private:
  // Counters are carved from slabs that live as long as the process: captured graphs and work in
  // flight keep pointing into them.
  struct Slab {
    CUcontext context;
    CUdeviceptr base;
    int used;
  };

  // A counter of a graph, freed when the driver destroys the graph's user object.
  struct GraphCounter {
    TileCounters* owner;
    CUcontext context;
    CUdeviceptr counter;
  };

  TileCounters() = default;
  // A counter no launch holds, zeroed on `stream` ahead of its first launch.
  CUdeviceptr fresh(CUcontext context, CUstream stream);
  // A fresh counter owned by the graph `stream` is capturing into.
  CUdeviceptr for_graph(CUcontext context, CUstream stream);
  // The user object's destructor: runs on a driver thread, makes no CUDA call.
  static void release(void* graph_counter);

  std::mutex mutex_;
  std::vector<Slab> slabs_;
  // Counters returned by destroyed graphs, reused before a slab gives a new one.
  std::vector<std::pair<CUcontext, CUdeviceptr>> returned_;
  int held_by_graphs_ = 0;
  // Keyed by the stream's id, which the driver never gives to another stream of the process.
  std::map<std::pair<CUcontext, unsigned long long>, CUdeviceptr> by_stream_;
};

}  // namespace sigattn
