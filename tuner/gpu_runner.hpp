// The candidate runner of the tuning worker on a real GPU: random-normal inputs in several sets
// (rotated between repetitions), a reference per task, each candidate verified once before it is
// timed, and timing with CUDA events around each launch after a warm-up that lasts until the runs
// stop getting faster (warmed_up), with a buffer larger than the L2 cache written before every
// repetition.
#pragma once

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "generator/tile_policy.hpp"
#include "runtime/cuda_driver.hpp"
#include "tuner/reference.hpp"
#include "tuner/worker.hpp"

namespace sigattn::tune {

// A test switch: make one tile's measurement launch a faulting or a hanging kernel instead of the
// candidate. Read from the environment only by test builds of the command line.
struct FaultInjection {
  enum class Kind { fault, hang };
  Kind kind = Kind::fault;
  gen::TileConfig tile;
};

// Agreement with the reference: bounds on ||out - ref||_2 / ||ref||_2 and on
// max|out - ref| / max|ref|. Forward candidates against the fp32 reference get the bounds of the
// GPU tests (one rounding of P and of O in the dtype); backward candidates against the default
// tiles' gradients get twice those, since each side rounds differently.
struct Tolerance {
  double rel_l2 = 0.0;
  double max_rel = 0.0;
};
Tolerance forward_tolerance(gen::DType dtype);
Tolerance backward_tolerance(gen::DType dtype);

// Compares `out` with `expected` element by element: empty when within `tolerance` and finite,
// else what is wrong (the metrics, the first bad element).
std::string compare_outputs(const std::vector<float>& out, const std::vector<float>& expected,
                            Tolerance tolerance, const std::string& what);

class GpuRunner : public CandidateRunner {
 public:
  // Makes the primary context of device `ordinal` current on this thread. Throws sigattn::Error
  // when the device does not exist or its architecture is not supported.
  GpuRunner(int ordinal, std::optional<FaultInjection> injection);
  ~GpuRunner() override;

  cache::DeviceKey device() override;
  void set_task(const Task& task) override;
  CompileInfo compile(const gen::Variant& variant) override;
  Measurement measure(const gen::TileConfig& tile, const MeasureRequest& request,
                      const std::function<void(std::string_view)>& phase) override;
  bool context_lost() const override { return context_lost_; }

 private:
  struct InputSet {
    cuda::DeviceBuffer q, k, v, dout;
  };
  ShapeTensors tensors(const InputSet& set) const;
  ForwardArgs forward_args(const InputSet& set) const;
  BackwardArgs backward_args(const InputSet& set) const;
  KvCacheArgs kvcache_args(const InputSet& set) const;
  // Input sets that exceed the L2 cache several times over within a share of device memory.
  int input_set_count(std::size_t set_bytes) const;
  // `bytes` of normal(0, 1) values in the task's dtype, reproducible from `seed`.
  cuda::DeviceBuffer random_buffer(std::size_t bytes, std::uint64_t seed) const;
  static cuda::DeviceBuffer int_buffer(const std::vector<int>& values);
  // set_task for a decode shape: the caches (contiguous, or a pool of blocks behind a shuffled
  // block table) in rotated sets, the cache lengths, and the fp32 reference over a contiguous
  // copy of the first set's cache.
  void set_decode_task();
  // One launch of the call being tuned with `tile` in the tuned kernel's place.
  void run(const gen::TileConfig& tile, const InputSet& set);
  std::vector<float> widened(const cuda::DeviceBuffer& buffer, std::int64_t count);
  // The outputs of the last run, widened to fp32 (forward: O; backward: dQ, dK, dV).
  std::vector<std::vector<float>> outputs();
  void poison_outputs();
  Timing time(const gen::TileConfig& tile, int repetitions);

  CUdevice cu_device_ = 0;
  CUcontext context_ = nullptr;
  cuda::DeviceInfo info_;
  std::string arch_;
  policy::Target target_;
  std::optional<FaultInjection> injection_;
  std::unique_ptr<ReferenceKernels> kernels_;
  std::optional<Task> task_;
  std::vector<InputSet> sets_;
  cuda::DeviceBuffer out_, grad_q_, grad_k_, grad_v_, lengths_, block_table_, flush_, widen_buffer_,
      flag_;
  gen::TileConfig default_dkdv_, default_dq_;
  std::vector<std::vector<float>> expected_;
  std::set<std::string> verified_;
  bool context_lost_ = false;
};

}  // namespace sigattn::tune
