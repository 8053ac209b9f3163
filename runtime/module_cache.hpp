// Thread-safe in-memory caches: compiled CUBINs keyed by (content hash, arch, NVRTC version),
// and loaded modules keyed by that plus the CUDA context they live in. Hit/miss counters are
// exposed for tests.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include "generator/generator.hpp"
#include "runtime/compiler.hpp"

namespace sigattn {

// Where a load found a kernel's binary: compiled or loaded earlier in this process, the user
// database, or NVRTC just now.
enum class BinarySource { memory, database, nvrtc };
std::string_view to_string(BinarySource source);

struct LoadedKernel {
  CUfunction function = nullptr;
  int threads = 0;
  int smem_bytes = 0;
  int blocks_per_sm = 0;  // CTAs that fit on one SM at once: the grid of a persistent kernel
  std::string variant_name;
  // Of the load that returned this copy: where the binary came from and how long it took.
  BinarySource source = BinarySource::memory;
  double load_ms = 0.0;
};

struct CacheStats {
  std::uint64_t compile_hits = 0;
  std::uint64_t compile_misses = 0;
  // Of the in-memory misses: served from the user database without NVRTC, or compiled.
  std::uint64_t disk_hits = 0;
  std::uint64_t disk_misses = 0;
  std::uint64_t module_hits = 0;
  std::uint64_t module_misses = 0;
};

class ModuleCache {
 public:
  static ModuleCache& instance();

  // Compiled binary for (kernel, arch). On a miss the user database is asked first and NVRTC
  // runs only when it has no intact binary; what NVRTC builds is stored there. Concurrent
  // callers of one key compile it once. `source`, when given, receives where the binary came from.
  std::shared_ptr<const CompiledKernel> compiled(const gen::GeneratedKernel& kernel,
                                                 const std::string& arch,
                                                 BinarySource* source = nullptr);

  // Loaded function in the current context, with its dynamic shared-memory limit raised.
  LoadedKernel load(const gen::GeneratedKernel& kernel);

  CacheStats stats() const;
  void clear();

 private:
  using CompiledFuture = std::shared_future<std::shared_ptr<const CompiledKernel>>;

  ModuleCache() = default;

  mutable std::mutex mutex_;
  // Key: content hash, arch and NVRTC version. A pending entry is a compile in flight.
  std::map<std::string, CompiledFuture> compiled_;
  // Key: the context and the compiled key. Modules stay loaded until the process exits.
  std::map<std::pair<CUcontext, std::string>, LoadedKernel> loaded_;
  CacheStats stats_;
};

}  // namespace sigattn
