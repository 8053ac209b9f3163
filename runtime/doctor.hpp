// What `sigattn doctor` reports: versions, the CUDA driver and devices, NVRTC and the database
// location. Collecting never throws, so the report also explains a machine without a GPU or
// without NVRTC.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sigattn {

struct DeviceReport {
  int ordinal = 0;
  std::string name;
  int cc_major = 0;
  int cc_minor = 0;
  std::string arch;          // empty when the device is not supported
  std::string arch_message;  // why not, when arch is empty
  bool jit = false;          // arch is PTX the driver JIT-compiles (a GPU the list does not name)
  std::string arch_note;     // when jit: what runs, and why
  std::vector<std::string> families;  // the kernel families it runs, preferred first: "sm80"
  int sm_count = 0;
  int max_smem_optin = 0;
  std::size_t total_mem = 0;
};

struct DoctorReport {
  std::string sigattn_version;
  int generator_version = 0;
  std::string template_hash;

  bool driver_loaded = false;
  int driver_version = 0;      // e.g. 13000 for CUDA 13.0
  std::string driver_message;  // why the driver or its devices cannot be used
  std::vector<DeviceReport> devices;

  bool nvrtc_loaded = false;
  std::string nvrtc_version;
  std::string nvrtc_message;  // why NVRTC cannot be loaded

  std::string user_database;          // empty when it cannot be placed
  std::string user_database_message;  // why not, or why its contents cannot be read
  bool user_database_exists = false;
  // The user database's contents, read without changing the file.
  std::int64_t binaries = 0;
  std::int64_t binary_bytes = 0;
  std::int64_t binaries_served = 0;  // times a stored binary replaced an NVRTC run
  std::int64_t tuning_results = 0;
  std::int64_t stale_tuning_results = 0;  // of tuning_results: kernel sources changed since

  std::string shipped_data_dir;  // where the shipped tuning databases are looked for
  bool shipped_data_dir_exists = false;
  std::int64_t shipped_results = 0;
  std::int64_t stale_shipped_results = 0;  // of shipped_results: kernel sources changed since
  std::string shipped_message;             // why the shipped data cannot be used
};

DoctorReport collect_doctor_report();

// Fills a device's arch, jit, arch_note and families (or arch_message when it is not supported)
// from the compute capability and shared memory it already holds; needs no driver.
void describe_arch(DeviceReport& device);

// Human-readable, one fact per line.
std::string doctor_text(const DoctorReport& report);
// A JSON object with the same fields, pretty-printed.
std::string doctor_json(const DoctorReport& report);

}  // namespace sigattn
