// The doctor report is produced on any machine: here NVRTC loads, and without a driver the
// report says why instead of throwing. Text and JSON carry the same facts.
#include <gtest/gtest.h>
#include <sigattn/version.h>

#include <nlohmann/json.hpp>

#include "generator/generator.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/doctor.hpp"

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

}  // namespace
}  // namespace sigattn
