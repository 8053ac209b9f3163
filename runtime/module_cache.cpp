// The process-wide caches behind every launch: one compile per (content hash, arch, NVRTC
// version) however many threads ask at once, backed by the user database on disk, and one loaded
// module per (context, kernel).
// Modules are never unloaded while the process runs: launches on callers' streams may still be
// in flight when a cache entry would be dropped, and unloading would pull the code from under them.
#include "runtime/module_cache.hpp"

#include <fmt/format.h>

#include <chrono>
#include <exception>
#include <optional>
#include <utility>

#include "runtime/cuda_driver.hpp"
#include "runtime/errors.hpp"
#include "runtime/log.hpp"
#include "runtime/nvrtc.hpp"
#include "runtime/persistent_cache.hpp"

namespace sigattn {
namespace {

// Without the opt-in attribute a block may use at most 48 KiB of dynamic shared memory.
constexpr int kDefaultDynamicSmemLimit = 48 * 1024;

// Without NVRTC a binary can still come from the disk cache, so the key does not need it then.
std::string compile_key(const gen::GeneratedKernel& kernel, const std::string& arch) {
  std::string why;
  const bool have_nvrtc = nvrtc::try_api(&why) != nullptr;
  return fmt::format("{}|{}|nvrtc-{}", kernel.content_hash, arch,
                     have_nvrtc ? nvrtc::version_string() : "none");
}

}  // namespace

ModuleCache& ModuleCache::instance() {
  static ModuleCache cache;
  return cache;
}

std::string_view to_string(BinarySource source) {
  switch (source) {
    case BinarySource::memory:
      return "memory";
    case BinarySource::database:
      return "database";
    case BinarySource::nvrtc:
      return "nvrtc";
  }
  return "unknown";
}

std::shared_ptr<const CompiledKernel> ModuleCache::compiled(const gen::GeneratedKernel& kernel,
                                                            const std::string& arch,
                                                            BinarySource* source) {
  const std::string key = compile_key(kernel, arch);
  if (source != nullptr) *source = BinarySource::memory;
  std::promise<std::shared_ptr<const CompiledKernel>> promise;
  CompiledFuture future;
  bool compiles_here = false;
  {
    std::lock_guard lock(mutex_);
    if (const auto found = compiled_.find(key); found != compiled_.end()) {
      ++stats_.compile_hits;
      future = found->second;
    } else {
      ++stats_.compile_misses;
      future = promise.get_future().share();
      compiled_.emplace(key, future);
      compiles_here = true;
    }
  }
  if (compiles_here) {
    // The mutex is not held here, so other keys compile in parallel; callers of this key wait
    // on the future.
    try {
      PersistentCache& disk = PersistentCache::instance();
      std::optional<CompiledKernel> binary = disk.find_binary(kernel, arch);
      {
        std::lock_guard lock(mutex_);
        ++(binary ? stats_.disk_hits : stats_.disk_misses);
      }
      if (source != nullptr) *source = binary ? BinarySource::database : BinarySource::nvrtc;
      if (binary) {
        logging::debug("{} for {}: binary from the user database", kernel.variant_name, arch);
      } else {
        binary = compile(kernel, arch);
        logging::debug("{} for {}: compiled by NVRTC in {:.0f} ms ({} registers, {} spilled bytes)",
                       kernel.variant_name, arch, binary->compile_ms, binary->registers,
                       binary->spill_store_bytes + binary->spill_load_bytes);
        disk.store_binary(kernel, *binary);
      }
      promise.set_value(std::make_shared<const CompiledKernel>(std::move(*binary)));
    } catch (...) {
      promise.set_exception(std::current_exception());
      // Failures are not cached: the next caller compiles again and gets a fresh log.
      std::lock_guard lock(mutex_);
      compiled_.erase(key);
    }
  }
  return future.get();
}

LoadedKernel ModuleCache::load(const gen::GeneratedKernel& kernel) {
  const cuda::DriverApi& api = cuda::driver();
  const CUcontext context = cuda::current_context();
  // A context belongs to one device, so the context and the content hash fix the arch too.
  const auto key = std::make_pair(context, kernel.content_hash);
  const auto start = std::chrono::steady_clock::now();
  const auto loaded_here = [&](LoadedKernel loaded, BinarySource source) {
    loaded.source = source;
    loaded.load_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return loaded;
  };
  {
    std::lock_guard lock(mutex_);
    if (const auto found = loaded_.find(key); found != loaded_.end()) {
      ++stats_.module_hits;
      return loaded_here(found->second, BinarySource::memory);
    }
  }
  CUdevice device = 0;
  SIGATTN_CU(api.cuCtxGetDevice(&device));
  const cuda::DeviceInfo info = cuda::device_info(device);
  const std::string arch = cuda::arch_for(info.cc_major, info.cc_minor);
  if (kernel.smem_bytes > info.max_smem_optin) {
    throw_unsupported(fmt::format(
        "{} needs {} bytes of shared memory per block, but {} ({}) allows at most {} bytes",
        kernel.variant_name, kernel.smem_bytes, info.name, arch, info.max_smem_optin));
  }
  BinarySource source = BinarySource::memory;
  const std::shared_ptr<const CompiledKernel> binary = compiled(kernel, arch, &source);

  std::lock_guard lock(mutex_);
  if (const auto found = loaded_.find(key); found != loaded_.end()) {
    ++stats_.module_hits;
    return loaded_here(found->second, source);
  }
  ++stats_.module_misses;
  CUmodule module = nullptr;
  SIGATTN_CU(api.cuModuleLoadData(&module, binary->cubin.data()));
  LoadedKernel loaded;
  SIGATTN_CU(api.cuModuleGetFunction(&loaded.function, module, binary->lowered_name.c_str()));
  if (kernel.smem_bytes > kDefaultDynamicSmemLimit) {
    SIGATTN_CU(api.cuFuncSetAttribute(
        loaded.function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, kernel.smem_bytes));
  }
  loaded.threads = kernel.threads;
  loaded.smem_bytes = kernel.smem_bytes;
  SIGATTN_CU(api.cuOccupancyMaxActiveBlocksPerMultiprocessor(&loaded.blocks_per_sm, loaded.function,
                                                             kernel.threads, kernel.smem_bytes));
  loaded.variant_name = kernel.variant_name;
  loaded_.emplace(key, loaded);
  return loaded_here(loaded, source);
}

CacheStats ModuleCache::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void ModuleCache::clear() {
  std::lock_guard lock(mutex_);
  compiled_.clear();
  loaded_.clear();
  stats_ = {};
}

}  // namespace sigattn
