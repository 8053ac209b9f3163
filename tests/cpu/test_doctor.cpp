// The doctor report is produced on any machine: here NVRTC loads, and without a driver the
// report says why instead of throwing. Text and JSON carry the same facts.
#include <gtest/gtest.h>
#include <sigattn/version.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cache/binary_store.hpp"
#include "cache/database.hpp"
#include "cache/json_io.hpp"
#include "cache/tuning_store.hpp"
#include "generator/generator.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/doctor.hpp"
#include "temp_dir.hpp"

namespace sigattn {
namespace {

TEST(Doctor, ReportsNvrtcAndVersions) {
  const DoctorReport report = collect_doctor_report();
  EXPECT_EQ(report.sigattn_version, SIGATTN_VERSION_STRING);
  EXPECT_EQ(report.generator_version, gen::kGeneratorVersion);
  EXPECT_FALSE(report.template_hash.empty());
  EXPECT_TRUE(report.nvrtc_loaded) << report.nvrtc_message;
  EXPECT_EQ(report.nvrtc_version.rfind("13.", 0), 0u);
  const std::string text = doctor_text(report);
  EXPECT_NE(text.find("NVRTC: loaded, version " + report.nvrtc_version), std::string::npos) << text;
}

TEST(Doctor, ExplainsAMissingDriver) {
  if (cuda::try_driver(nullptr) != nullptr) {
    GTEST_SKIP() << "a CUDA driver is present; this checks the behaviour without one";
  }
  const DoctorReport report = collect_doctor_report();
  EXPECT_FALSE(report.driver_loaded);
  EXPECT_TRUE(report.devices.empty());
  EXPECT_NE(report.driver_message.find("libcuda.so.1"), std::string::npos);
  EXPECT_NE(doctor_text(report).find("CUDA driver: not available"), std::string::npos);
}

TEST(Doctor, JsonCarriesTheReport) {
  const DoctorReport report = collect_doctor_report();
  const nlohmann::json json = nlohmann::json::parse(doctor_json(report));
  EXPECT_EQ(json.at("sigattn_version"), report.sigattn_version);
  EXPECT_EQ(json.at("template_hash"), report.template_hash);
  EXPECT_EQ(json.at("driver").at("loaded"), report.driver_loaded);
  EXPECT_EQ(json.at("driver").at("message"), report.driver_message);
  EXPECT_EQ(json.at("driver").at("devices").size(), report.devices.size());
  EXPECT_EQ(json.at("nvrtc").at("version"), report.nvrtc_version);
  EXPECT_EQ(json.at("database").at("user"), report.user_database);
}

// A device as the driver would describe it, with what doctor makes of its compute capability.
DeviceReport device(const char* name, int cc_major, int cc_minor, int max_smem_optin) {
  DeviceReport report;
  report.name = name;
  report.cc_major = cc_major;
  report.cc_minor = cc_minor;
  report.max_smem_optin = max_smem_optin;
  describe_arch(report);
  return report;
}

TEST(Doctor, ReportsTheArchAndTheFamiliesOfEachDevice) {
  DoctorReport report;
  report.devices = {
      device("NVIDIA H200", 9, 0, 227 * 1024), device("NVIDIA B200", 10, 0, 227 * 1024),
      device("NVIDIA GeForce RTX 5090", 12, 0, 99 * 1024),
      device("A GPU from later", 13, 0, 227 * 1024), device("Tesla T4", 7, 5, 64 * 1024)};
  const std::string text = doctor_text(report);
  for (const char* line :
       {"NVIDIA H200, compute capability 9.0",
        "  arch sm_90a (CUBIN), kernel families sm90, sm80\n",
        "NVIDIA B200, compute capability 10.0", "  arch sm_100a (CUBIN), kernel family sm80\n",
        "RTX 5090, compute capability 12.0", "  arch sm_120a (CUBIN), kernel family sm80\n",
        "  arch compute_121 (PTX, JIT-compiled by the driver), kernel family sm80\n",
        "  compute capability 13.0 is newer than every architecture sigattn lists",
        "  not supported: compute capability 7.5 is not supported"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << " in\n" << text;
  }
  const nlohmann::json devices =
      nlohmann::json::parse(doctor_json(report)).at("driver").at("devices");
  ASSERT_EQ(devices.size(), 5u);
  EXPECT_EQ(devices[0].at("families"), nlohmann::json::array({"sm90", "sm80"}));
  EXPECT_EQ(devices[1].at("compute_capability"), "10.0");
  EXPECT_EQ(devices[1].at("arch"), "sm_100a");
  EXPECT_EQ(devices[1].at("jit"), false);
  EXPECT_EQ(devices[1].at("families"), nlohmann::json::array({"sm80"}));
  EXPECT_EQ(devices[3].at("arch"), "compute_121");
  EXPECT_EQ(devices[3].at("jit"), true);
  EXPECT_NE(devices[3].at("arch_note").get<std::string>().find("JIT-compiles"), std::string::npos);
  EXPECT_EQ(devices[4].at("arch"), "");
  EXPECT_EQ(devices[4].at("families"), nlohmann::json::array());
}

// Points an environment variable ($SIGATTN_DB, $SIGATTN_DATA_DIR) at a path for one test and
// restores it afterwards.
class EnvironmentPath {
 public:
  EnvironmentPath(const char* name, const std::filesystem::path& path) : name_(name) {
    if (const char* value = std::getenv(name)) saved_ = value;
    ::setenv(name, path.c_str(), 1);
  }
  ~EnvironmentPath() {
    if (saved_) {
      ::setenv(name_, saved_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> saved_;
};

TEST(Doctor, CountsTheUserDatabaseWithoutChangingIt) {
  testing::TempDir dir;
  const std::filesystem::path path = dir / "sigattn.db";
  {
    cache::Database db(path, cache::OpenMode::read_write);
    cache::BinaryStore store(db);
    cache::BinaryKey key{"0123456789abcdef0123456789abcdef",
                         1,
                         "fwd/sm80",
                         "sm80.m64n64w4s2",
                         "sm_90a",
                         "13.0",
                         "-std=c++17",
                         "fedcba9876543210fedcba9876543210"};
    cache::StoredBinary binary;
    binary.key = key;
    binary.lowered_name = "kernel";
    binary.cubin.assign(2048, 'c');
    store.put(binary);
    ASSERT_TRUE(store.find(key));
    ASSERT_TRUE(store.find(key));
  }
  EnvironmentPath environment("SIGATTN_DB", path);
  const DoctorReport report = collect_doctor_report();
  EXPECT_TRUE(report.user_database_exists);
  EXPECT_TRUE(report.user_database_message.empty()) << report.user_database_message;
  EXPECT_EQ(report.binaries, 1);
  EXPECT_EQ(report.binary_bytes, 2048);
  EXPECT_EQ(report.binaries_served, 2);
  EXPECT_EQ(report.tuning_results, 0);
  const std::string text = doctor_text(report);
  EXPECT_NE(text.find("compiled kernels: 1 (0.0 MiB), served in place of NVRTC 2 times"),
            std::string::npos)
      << text;
  const nlohmann::json json = nlohmann::json::parse(doctor_json(report));
  EXPECT_EQ(json.at("database").at("binaries_served"), 2);
}

// A result for a spec and tile, fresh or measured on kernel sources that have changed since.
cache::TuningResult tuning_result(int seqlen, bool fresh) {
  cache::TuningResult result;
  result.device = {"NVIDIA H200", "sm_90a", 132};
  result.problem = cache::problem_key(
      gen::parse_spec("fwd.bf16.d128.dense.nomask.nosmod.fast.x128"), seqlen, seqlen);
  result.tile = gen::TileConfig{128, 128, 8, 2};
  result.template_hash = fresh ? cache::kernel_source_hash(result.problem, result.tile)
                               : "0123456789abcdef0123456789abcdef";
  result.time_ms = 1.0;
  result.measured_at = "2026-11-28T12:00:00Z";
  return result;
}

TEST(Doctor, CountsStaleTuningResults) {
  testing::TempDir dir;
  const std::filesystem::path path = dir / "sigattn.db";
  {
    cache::Database db(path, cache::OpenMode::read_write);
    cache::TuningStore store(db);
    store.put_best(tuning_result(1024, true));
    store.put_best(tuning_result(2048, false));
    store.put_best(tuning_result(4096, false));
  }
  std::filesystem::create_directory(dir / "shipped");
  std::ofstream(dir / "shipped" / "gpu.json")
      << cache::to_json(cache::TuningDocument{{tuning_result(1024, false)}, {}}).dump();
  EnvironmentPath database("SIGATTN_DB", path);
  EnvironmentPath shipped("SIGATTN_DATA_DIR", dir / "shipped");
  const DoctorReport report = collect_doctor_report();
  EXPECT_EQ(report.tuning_results, 3);
  EXPECT_EQ(report.stale_tuning_results, 2);
  EXPECT_EQ(report.shipped_results, 1);
  EXPECT_EQ(report.stale_shipped_results, 1);
  const std::string text = doctor_text(report);
  EXPECT_NE(text.find("tuning results: 3 (2 stale)"), std::string::npos) << text;
  EXPECT_NE(text.find("tuning results: 1 (1 stale)"), std::string::npos) << text;
  const nlohmann::json json = nlohmann::json::parse(doctor_json(report));
  EXPECT_EQ(json.at("database").at("stale_tuning_results"), 2);
  EXPECT_EQ(json.at("shipped_data").at("stale_tuning_results"), 1);
}

TEST(Doctor, ExplainsAnUnreadableDatabase) {
  testing::TempDir dir;
  const std::filesystem::path path = dir / "sigattn.db";
  std::ofstream(path) << "this is not a database";
  EnvironmentPath environment("SIGATTN_DB", path);
  const DoctorReport report = collect_doctor_report();
  EXPECT_TRUE(report.user_database_exists);
  EXPECT_FALSE(report.user_database_message.empty());
  EXPECT_NE(doctor_text(report).find("(cannot be read)"), std::string::npos);
  std::string contents;
  std::getline(std::ifstream(path), contents);
  EXPECT_EQ(contents, "this is not a database");
}

TEST(Doctor, MissingDatabaseIsNotCreated) {
  testing::TempDir dir;
  const std::filesystem::path path = dir / "sigattn.db";
  EnvironmentPath environment("SIGATTN_DB", path);
  const DoctorReport report = collect_doctor_report();
  EXPECT_FALSE(report.user_database_exists);
  EXPECT_NE(doctor_text(report).find("(does not exist yet)"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace sigattn
