// Gathers the doctor report one part at a time; each part catches its own failure and records
// the message, so a report is produced on any machine. Rendered as text or as JSON.
#include "runtime/doctor.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <exception>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <system_error>

#include "cache/binary_store.hpp"
#include "cache/database.hpp"
#include "cache/json_io.hpp"
#include "cache/tuning_store.hpp"
#include "generator/generator.hpp"
#include "generator/template_store.hpp"
#include "generator/tile_policy.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/install_paths.hpp"
#include "runtime/nvrtc.hpp"
#include "runtime/persistent_cache.hpp"
#include "sigattn/sigattn.hpp"

namespace sigattn {
namespace {

DeviceReport describe_device(int ordinal) {
  const cuda::DriverApi& api = cuda::driver();
  CUdevice device = 0;
  SIGATTN_CU(api.cuDeviceGet(&device, ordinal));
  const cuda::DeviceInfo info = cuda::device_info(device);
  DeviceReport report;
  report.ordinal = ordinal;
  report.name = info.name;
  report.cc_major = info.cc_major;
  report.cc_minor = info.cc_minor;
  report.sm_count = info.sm_count;
  report.max_smem_optin = info.max_smem_optin;
  report.total_mem = info.total_mem;
  describe_arch(report);
  return report;
}

void collect_driver(DoctorReport& report) {
  const cuda::DriverApi* api = cuda::try_driver(&report.driver_message);
  if (api == nullptr) return;
  report.driver_loaded = true;
  try {
    SIGATTN_CU(api->cuDriverGetVersion(&report.driver_version));
    int count = 0;
    SIGATTN_CU(api->cuDeviceGetCount(&count));
    for (int ordinal = 0; ordinal < count; ++ordinal) {
      report.devices.push_back(describe_device(ordinal));
    }
    if (count == 0) report.driver_message = "the driver reports no CUDA devices";
  } catch (const std::exception& error) {
    report.driver_message = error.what();
  }
}

void collect_nvrtc(DoctorReport& report) {
  if (nvrtc::try_api(&report.nvrtc_message) == nullptr) return;
  report.nvrtc_loaded = true;
  report.nvrtc_version = nvrtc::version_string();
}

void collect_database(DoctorReport& report) {
  try {
    const std::filesystem::path path = PersistentCache::instance().database_path();
    report.user_database = path.string();
    std::error_code missing;
    report.user_database_exists = std::filesystem::exists(path, missing);
    if (!report.user_database_exists) return;
    cache::Database db(path, cache::OpenMode::read_only);
    const cache::BinarySummary summary = cache::BinaryStore(db).summary();
    report.binaries = summary.count;
    report.binary_bytes = summary.bytes;
    report.binaries_served = summary.served;
    const cache::FreshnessCounts tuning = cache::count_freshness(cache::TuningStore(db).all_best());
    report.tuning_results = tuning.fresh + tuning.stale;
    report.stale_tuning_results = tuning.stale;
  } catch (const std::exception& error) {
    report.user_database_message = error.what();
  }
}

void collect_shipped_data(DoctorReport& report) {
  const std::filesystem::path directory = shipped_data_dir();
  report.shipped_data_dir = directory.string();
  std::error_code error;
  report.shipped_data_dir_exists = std::filesystem::is_directory(directory, error);
  if (!report.shipped_data_dir_exists) return;
  try {
    const cache::FreshnessCounts shipped =
        cache::count_freshness(cache::read_shipped_directory(directory).results);
    report.shipped_results = shipped.fresh + shipped.stale;
    report.stale_shipped_results = shipped.stale;
  } catch (const std::exception& failure) {
    report.shipped_message = failure.what();
  }
}

std::string driver_version_text(int version) {
  return fmt::format("{}.{}", version / 1000, version % 1000 / 10);
}

}  // namespace

void describe_arch(DeviceReport& device) {
  try {
    const policy::DeviceArch arch = cuda::device_arch(device.cc_major, device.cc_minor);
    device.arch = arch.arch;
    device.jit = arch.jit;
    device.arch_note = arch.note;
    for (const gen::Family family :
         policy::families(policy::target_for_device(arch, device.max_smem_optin))) {
      device.families.emplace_back(gen::to_string(family));
    }
  } catch (const std::exception& error) {
    device.arch_message = error.what();
  }
}

DoctorReport collect_doctor_report() {
  DoctorReport report;
  report.sigattn_version = version();
  report.generator_version = gen::kGeneratorVersion;
  report.template_hash = gen::template_hash();
  collect_driver(report);
  collect_nvrtc(report);
  collect_database(report);
  collect_shipped_data(report);
  return report;
}

std::string doctor_text(const DoctorReport& report) {
  std::string text;
  auto out = std::back_inserter(text);
  fmt::format_to(out, "sigattn {}\n", report.sigattn_version);
  fmt::format_to(out, "generator version {}\n", report.generator_version);
  fmt::format_to(out, "template hash {}\n", report.template_hash);
  if (report.driver_loaded) {
    fmt::format_to(out, "CUDA driver: loaded, supports CUDA {}\n",
                   driver_version_text(report.driver_version));
  } else {
    fmt::format_to(out, "CUDA driver: not available\n");
  }
  if (!report.driver_message.empty()) fmt::format_to(out, "  {}\n", report.driver_message);
  for (const DeviceReport& device : report.devices) {
    fmt::format_to(out,
                   "device {}: {}, compute capability {}.{}, {} SMs, {} KiB shared memory "
                   "per block (opt-in), {:.1f} GiB\n",
                   device.ordinal, device.name, device.cc_major, device.cc_minor, device.sm_count,
                   device.max_smem_optin / 1024,
                   static_cast<double>(device.total_mem) / (1024.0 * 1024.0 * 1024.0));
    if (!device.arch.empty()) {
      fmt::format_to(out, "  arch {} ({}), kernel {} {}\n", device.arch,
                     device.jit ? "PTX, JIT-compiled by the driver" : "CUBIN",
                     device.families.size() == 1 ? "family" : "families",
                     fmt::join(device.families, ", "));
      if (!device.arch_note.empty()) fmt::format_to(out, "  {}\n", device.arch_note);
    } else {
      fmt::format_to(out, "  not supported: {}\n", device.arch_message);
    }
  }
  if (report.nvrtc_loaded) {
    fmt::format_to(out, "NVRTC: loaded, version {}\n", report.nvrtc_version);
  } else {
    fmt::format_to(out, "NVRTC: not available\n  {}\n", report.nvrtc_message);
  }
  if (report.user_database.empty()) {
    fmt::format_to(out, "user database: unknown\n  {}\n", report.user_database_message);
  } else if (!report.user_database_exists) {
    fmt::format_to(out, "user database: {} (does not exist yet)\n", report.user_database);
  } else if (!report.user_database_message.empty()) {
    fmt::format_to(out, "user database: {} (cannot be read)\n  {}\n", report.user_database,
                   report.user_database_message);
  } else {
    fmt::format_to(out,
                   "user database: {}\n  compiled kernels: {} ({:.1f} MiB), served in place of "
                   "NVRTC {} times\n  tuning results: {} ({} stale)\n",
                   report.user_database, report.binaries,
                   static_cast<double>(report.binary_bytes) / (1024.0 * 1024.0),
                   report.binaries_served, report.tuning_results, report.stale_tuning_results);
  }
  fmt::format_to(out, "shipped data: {}{}\n", report.shipped_data_dir,
                 report.shipped_data_dir_exists ? "" : " (not found)");
  if (report.shipped_data_dir_exists) {
    if (report.shipped_message.empty()) {
      fmt::format_to(out, "  tuning results: {} ({} stale)\n", report.shipped_results,
                     report.stale_shipped_results);
    } else {
      fmt::format_to(out, "  not usable: {}\n", report.shipped_message);
    }
  }
  return text;
}

std::string doctor_json(const DoctorReport& report) {
  nlohmann::json devices = nlohmann::json::array();
  for (const DeviceReport& device : report.devices) {
    devices.push_back(
        {{"ordinal", device.ordinal},
         {"name", device.name},
         {"compute_capability", fmt::format("{}.{}", device.cc_major, device.cc_minor)},
         {"arch", device.arch},
         {"arch_message", device.arch_message},
         {"jit", device.jit},
         {"arch_note", device.arch_note},
         {"families", device.families},
         {"sm_count", device.sm_count},
         {"max_smem_optin", device.max_smem_optin},
         {"total_mem", device.total_mem}});
  }
  const nlohmann::json json = {
      {"sigattn_version", report.sigattn_version},
      {"generator_version", report.generator_version},
      {"template_hash", report.template_hash},
      {"driver",
       {{"loaded", report.driver_loaded},
        {"version", report.driver_loaded ? driver_version_text(report.driver_version) : ""},
        {"message", report.driver_message},
        {"devices", devices}}},
      {"nvrtc",
       {{"loaded", report.nvrtc_loaded},
        {"version", report.nvrtc_version},
        {"message", report.nvrtc_message}}},
      {"database",
       {{"user", report.user_database},
        {"exists", report.user_database_exists},
        {"message", report.user_database_message},
        {"binaries", report.binaries},
        {"binary_bytes", report.binary_bytes},
        {"binaries_served", report.binaries_served},
        {"tuning_results", report.tuning_results},
        {"stale_tuning_results", report.stale_tuning_results}}},
      {"shipped_data",
       {{"directory", report.shipped_data_dir},
        {"exists", report.shipped_data_dir_exists},
        {"tuning_results", report.shipped_results},
        {"stale_tuning_results", report.stale_shipped_results},
        {"message", report.shipped_message}}},
  };
  return json.dump(2);
}

}  // namespace sigattn
