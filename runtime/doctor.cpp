// Gathers the doctor report one part at a time; each part catches its own failure and records
// the message, so a report is produced on any machine. Rendered as text or as JSON.
#include "runtime/doctor.hpp"

#include <fmt/format.h>

#include <exception>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <system_error>

#include "cache/paths.hpp"
#include "generator/generator.hpp"
#include "generator/template_store.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/install_paths.hpp"
#include "runtime/nvrtc.hpp"
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
  try {
    report.arch = cuda::arch_for(info.cc_major, info.cc_minor);
  } catch (const std::exception& error) {
    report.arch_message = error.what();
  }
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
    report.user_database = cache::user_database_path().string();
  } catch (const std::exception& error) {
    report.user_database_message = error.what();
  }
}

void collect_shipped_data(DoctorReport& report) {
  const std::filesystem::path directory = shipped_data_dir();
  report.shipped_data_dir = directory.string();
  std::error_code error;
  report.shipped_data_dir_exists = std::filesystem::is_directory(directory, error);
}

std::string driver_version_text(int version) {
  return fmt::format("{}.{}", version / 1000, version % 1000 / 10);
}

}  // namespace

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
      fmt::format_to(out, "  arch {}\n", device.arch);
    } else {
      fmt::format_to(out, "  not supported: {}\n", device.arch_message);
    }
  }
  if (report.nvrtc_loaded) {
    fmt::format_to(out, "NVRTC: loaded, version {}\n", report.nvrtc_version);
  } else {
    fmt::format_to(out, "NVRTC: not available\n  {}\n", report.nvrtc_message);
  }
  if (!report.user_database.empty()) {
    fmt::format_to(out, "user database: {}\n", report.user_database);
  } else {
    fmt::format_to(out, "user database: unknown\n  {}\n", report.user_database_message);
  }
  fmt::format_to(out, "shipped data: {}{}\n", report.shipped_data_dir,
                 report.shipped_data_dir_exists ? "" : " (not found)");
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
      {"database", {{"user", report.user_database}, {"message", report.user_database_message}}},
      {"shipped_data",
       {{"directory", report.shipped_data_dir}, {"exists", report.shipped_data_dir_exists}}},
  };
  return json.dump(2);
}

}  // namespace sigattn
