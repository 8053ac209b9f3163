// Opening the user database on first use (honouring SIGATTN_CACHE, SIGATTN_DB and
// set_database_path; read-only where this process cannot write it), binary lookups and stores for
// the module cache, and the tile lookup chain for the forward call. Errors from the database
// become warnings here.
#include "runtime/persistent_cache.hpp"

#include <fmt/format.h>

#include <exception>

#include "cache/json_io.hpp"
#include "cache/paths.hpp"
#include "generator/template_store.hpp"
#include "runtime/environment.hpp"
#include "runtime/install_paths.hpp"
#include "runtime/log.hpp"
#include "runtime/nvrtc.hpp"

namespace sigattn {
namespace {

bool cache_disabled_by_environment() { return environment_switch("SIGATTN_CACHE") == false; }

// The NVRTC version this process would compile with, or empty when NVRTC cannot be loaded.
std::string available_nvrtc_version() {
  std::string why;
  if (nvrtc::try_api(&why) == nullptr) return {};
  return nvrtc::version_string();
}

}  // namespace

PersistentCache& PersistentCache::instance() {
  static PersistentCache cache;
  return cache;
}

void PersistentCache::set_database_path(const std::filesystem::path& path) {
  std::lock_guard lock(mutex_);
  path_override_ = path.empty() ? std::nullopt : std::optional(path);
  tile_choices_.clear();
  binaries_.reset();
  database_.reset();
  opened_ = false;
}

std::filesystem::path PersistentCache::database_path() {
  std::lock_guard lock(mutex_);
  return path_override_ ? *path_override_ : cache::user_database_path();
}

void PersistentCache::reset() {
  std::lock_guard lock(mutex_);
  binaries_.reset();
  database_.reset();
  opened_ = false;
  shipped_.reset();
  tile_choices_.clear();
  warned_.clear();
}

void PersistentCache::warn(const std::string& message) {
  if (warned_.insert(message).second) {
    logging::warn("{}", message);
  }
}

cache::Database* PersistentCache::database() {
  if (opened_) return database_.get();
  opened_ = true;
  if (cache_disabled_by_environment()) return nullptr;
  try {
    const std::filesystem::path path =
        path_override_ ? *path_override_ : cache::user_database_path();
    // A database this process may not write (a prebuilt cache on a read-only filesystem) still
    // serves its kernels and tuning results; it only records nothing.
    database_ = std::make_unique<cache::Database>(path, cache::usable_mode(path));
    binaries_ = std::make_unique<cache::BinaryStore>(*database_, cache::kDefaultBinaryBytes,
                                                     [this](const std::string& m) { warn(m); });
  } catch (const std::exception& error) {
    warn(fmt::format("the disk cache is not used: {}", error.what()));
    binaries_.reset();
    database_.reset();
  }
  return database_.get();
}

cache::BinaryKey PersistentCache::binary_key(const gen::GeneratedKernel& kernel,
                                             const std::string& arch,
                                             const std::string& nvrtc_version) {
  return {gen::template_hash(),
          gen::kGeneratorVersion,
          kernel.variant_name,
          gen::to_string(kernel.variant.tile),
          arch,
          nvrtc_version,
          fmt::format("{}", fmt::join(kernel.options, " ")),
          kernel.content_hash};
}

std::optional<CompiledKernel> PersistentCache::find_binary(const gen::GeneratedKernel& kernel,
                                                           const std::string& arch) {
  const cache::BinaryKey key = binary_key(kernel, arch, available_nvrtc_version());
  std::lock_guard lock(mutex_);
  if (database() == nullptr) return std::nullopt;
  try {
    const std::optional<cache::StoredBinary> stored = binaries_->find(key);
    if (!stored) return std::nullopt;
    CompiledKernel compiled;
    compiled.variant_name = kernel.variant_name;
    compiled.arch = arch;
    compiled.lowered_name = stored->lowered_name;
    compiled.cubin = stored->cubin;
    compiled.registers = stored->registers;
    compiled.spill_store_bytes = stored->spill_store_bytes;
    compiled.spill_load_bytes = stored->spill_load_bytes;
    compiled.stack_frame_bytes = stored->stack_frame_bytes;
    compiled.compile_ms = stored->compile_ms;
    return compiled;
  } catch (const std::exception& error) {
    warn(fmt::format("cannot read compiled kernels from the disk cache: {}", error.what()));
    return std::nullopt;
  }
}

void PersistentCache::store_binary(const gen::GeneratedKernel& kernel,
                                   const CompiledKernel& compiled) {
  // compile() just ran, so NVRTC is loaded and its version is known.
  cache::StoredBinary binary;
  binary.key = binary_key(kernel, compiled.arch, nvrtc::version_string());
  binary.lowered_name = compiled.lowered_name;
  binary.cubin = compiled.cubin;
  binary.registers = compiled.registers;
  binary.spill_store_bytes = compiled.spill_store_bytes;
  binary.spill_load_bytes = compiled.spill_load_bytes;
  binary.stack_frame_bytes = compiled.stack_frame_bytes;
  binary.compile_ms = compiled.compile_ms;
  std::lock_guard lock(mutex_);
  if (database() == nullptr || database_->read_only()) return;
  try {
    binaries_->put(binary);
  } catch (const std::exception& error) {
    warn(fmt::format("cannot store a compiled kernel in the disk cache: {}", error.what()));
  }
}

const std::vector<cache::TuningResult>& PersistentCache::shipped_results() {
  if (!shipped_) {
    try {
      shipped_ = cache::read_shipped_directory(shipped_data_dir()).results;
    } catch (const std::exception& error) {
      warn(fmt::format("the shipped tuning data is not used: {}", error.what()));
      shipped_.emplace();
    }
  }
  return *shipped_;
}

cache::TileChoice PersistentCache::choose_tile(const gen::KernelSpec& spec,
                                               const cache::DeviceKey& device, int max_seqlen_q,
                                               int max_seqlen_k, const policy::Target& target) {
  std::lock_guard lock(mutex_);
  const ChoiceKey memo_key{device, spec, cache::seqlen_bucket(max_seqlen_q),
                           cache::seqlen_bucket(max_seqlen_k)};
  if (const auto found = tile_choices_.find(memo_key); found != tile_choices_.end()) {
    return found->second;
  }
  std::vector<cache::TuningResult> user_rows;
  if (cache::Database* db = database(); db != nullptr) {
    try {
      user_rows = cache::TuningStore(*db).best_for(target.arch, gen::to_string(spec));
    } catch (const std::exception& error) {
      warn(fmt::format("cannot read tuning results from the disk cache: {}", error.what()));
    }
  }
  cache::TileChoice choice = cache::choose_tile(user_rows, shipped_results(), device, spec,
                                                max_seqlen_q, max_seqlen_k, target);
  tile_choices_.emplace(memo_key, choice);
  return choice;
}

void PersistentCache::forget_tile_choices() {
  std::lock_guard lock(mutex_);
  tile_choices_.clear();
}

cache::BinaryStoreStats PersistentCache::binary_stats() {
  std::lock_guard lock(mutex_);
  return binaries_ ? binaries_->stats() : cache::BinaryStoreStats{};
}

void set_database_path(const std::string& path) {
  PersistentCache::instance().set_database_path(path);
}

}  // namespace sigattn
