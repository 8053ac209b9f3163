// The architecture list and the architecture a device runs, decided from its compute capability
// alone (no driver): the `a` form of a listed capability, PTX of the newest listed one below an
// unlisted capability, nothing below Ampere; and the target and families each choice gets.
#include <gtest/gtest.h>

#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "generator/architecture.hpp"
#include "generator/tile_policy.hpp"

namespace sigattn::policy {
namespace {

constexpr int kKiB = 1024;

TEST(Architectures, ListEveryBlackwellTargetInBothForms) {
  std::set<std::string> names;
  for (const Architecture& a : architectures()) names.emplace(a.name);
  for (const char* name :
       {"sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_90a", "sm_100", "sm_100a", "sm_103",
        "sm_103a", "sm_110", "sm_110a", "sm_120", "sm_120a", "sm_121", "sm_121a"}) {
    EXPECT_EQ(names.count(name), 1u) << name;
  }
  EXPECT_EQ(names.size(), architectures().size()) << "a name listed twice";
}

TEST(Architectures, KnowTheirSharedMemoryAndRegisters) {
  const struct {
    const char* arch;
    int smem;
  } expected[] = {{"sm_80", 163 * kKiB},   {"sm_86", 99 * kKiB},    {"sm_89", 99 * kKiB},
                  {"sm_90a", 227 * kKiB},  {"sm_100a", 227 * kKiB}, {"sm_103a", 227 * kKiB},
                  {"sm_110a", 227 * kKiB}, {"sm_120a", 99 * kKiB},  {"sm_121a", 99 * kKiB}};
  for (const auto& [arch, smem] : expected) {
    const Architecture* listed = find_architecture(arch);
    ASSERT_NE(listed, nullptr) << arch;
    EXPECT_EQ(listed->max_smem_optin, smem) << arch;
    EXPECT_EQ(listed->max_registers_per_thread, 255) << arch;
    EXPECT_EQ(listed->registers_per_block, 64 * kKiB) << arch;
  }
}

TEST(Architectures, PtxTargetsTakeTheLimitsOfTheirArchitecture) {
  ASSERT_NE(find_architecture("compute_121"), nullptr);
  EXPECT_EQ(find_architecture("compute_121")->name, "sm_121");
  EXPECT_EQ(find_architecture("compute_100")->max_smem_optin, 227 * kKiB);
  EXPECT_TRUE(is_ptx_target("compute_121"));
  EXPECT_FALSE(is_ptx_target("sm_121a"));
  // Architecture-specific PTX runs on its own capability only, so it cannot serve a newer GPU.
  for (const char* arch :
       {"compute_90a", "compute_75", "sm_75", "sm_101", "sm_130", "", "sm_90a "}) {
    EXPECT_EQ(find_architecture(arch), nullptr) << arch;
  }
}

TEST(DeviceArch, ListedCapabilitiesRunTheirOwnCubin) {
  const struct {
    int major, minor;
    const char* arch;
  } expected[] = {{8, 0, "sm_80"},    {8, 6, "sm_86"},    {8, 7, "sm_87"},    {8, 9, "sm_89"},
                  {9, 0, "sm_90a"},   {10, 0, "sm_100a"}, {10, 3, "sm_103a"}, {11, 0, "sm_110a"},
                  {12, 0, "sm_120a"}, {12, 1, "sm_121a"}};
  for (const auto& [major, minor, arch] : expected) {
    const DeviceArch device = arch_for_device(major, minor);
    EXPECT_EQ(device.arch, arch) << major << "." << minor;
    EXPECT_FALSE(device.jit) << arch;
    EXPECT_TRUE(device.note.empty()) << arch;
  }
}

TEST(DeviceArch, ANewerGpuRunsPtxOfTheNewestListedArchitecture) {
  for (const auto& [major, minor] : {std::pair{12, 2}, std::pair{13, 0}, std::pair{15, 7}}) {
    const DeviceArch device = arch_for_device(major, minor);
    const std::string capability = std::to_string(major) + "." + std::to_string(minor);
    EXPECT_EQ(device.arch, "compute_121") << capability;
    EXPECT_TRUE(device.jit) << capability;
    for (const char* says : {"newer than every architecture sigattn lists", "(the newest is 12.1)",
                             "sm80 family", "compute_121 PTX", "JIT-compiles"}) {
      EXPECT_NE(device.note.find(says), std::string::npos) << device.note;
    }
    EXPECT_NE(device.note.find(capability), std::string::npos) << device.note;
  }
}

// PTX runs on its own compute capability and every later one, so an unlisted capability between
// listed ones takes the newest listed capability at or below it.
TEST(DeviceArch, AnUnlistedCapabilityRunsPtxOfTheListedOneBelowIt) {
  const struct {
    int major, minor;
    const char* arch;
  } expected[] = {{8, 8, "compute_87"},
                  {9, 1, "compute_90"},
                  {10, 1, "compute_100"},
                  {10, 7, "compute_103"},
                  {11, 5, "compute_110"}};
  for (const auto& [major, minor, arch] : expected) {
    const DeviceArch device = arch_for_device(major, minor);
    EXPECT_EQ(device.arch, arch) << major << "." << minor;
    EXPECT_TRUE(device.jit) << arch;
    EXPECT_NE(device.note.find("is not one sigattn lists"), std::string::npos) << device.note;
  }
}

TEST(DeviceArch, BeforeAmpereIsRefusedNamingTheCapability) {
  for (const auto& [major, minor] : {std::pair{7, 5}, std::pair{7, 0}, std::pair{6, 1}}) {
    try {
      arch_for_device(major, minor);
      ADD_FAILURE() << major << "." << minor << " accepted";
    } catch (const std::invalid_argument& error) {
      const std::string what = error.what();
      EXPECT_NE(what.find(std::to_string(major) + "." + std::to_string(minor)), std::string::npos)
          << what;
      EXPECT_NE(what.find("8.0 (Ampere) or newer"), std::string::npos) << what;
    }
  }
}

TEST(DeviceTarget, TakesTheListedLimitsUnlessTheDeviceHasLess) {
  const Target b200 = target_for_device(arch_for_device(10, 0), 227 * kKiB);
  EXPECT_EQ(b200.arch, "sm_100a");
  EXPECT_EQ(b200.max_smem_optin, 227 * kKiB);
  const Target rtx5090 = target_for_device(arch_for_device(12, 0), 99 * kKiB);
  EXPECT_EQ(rtx5090.arch, "sm_120a");
  EXPECT_EQ(rtx5090.max_smem_optin, 99 * kKiB);
  EXPECT_EQ(target_for_device(arch_for_device(12, 0), 64 * kKiB).max_smem_optin, 64 * kKiB);
  EXPECT_EQ(target_for_device(arch_for_device(10, 0), 300 * kKiB).max_smem_optin, 227 * kKiB);
}

// The limits of an architecture sigattn does not list are not known: the device's own count.
TEST(DeviceTarget, PtxForANewerGpuTakesTheDevicesSharedMemory) {
  const Target newer = target_for_device(arch_for_device(13, 0), 227 * kKiB);
  EXPECT_EQ(newer.arch, "compute_121");
  EXPECT_EQ(newer.max_smem_optin, 227 * kKiB);
  EXPECT_EQ(families(newer), std::vector<gen::Family>{gen::Family::sm80});
}

TEST(DeviceTarget, OnlyHopperRunsTheSm90Family) {
  for (const Architecture& a : architectures()) {
    const std::vector<gen::Family> expected =
        a.name == "sm_90a" ? std::vector<gen::Family>{gen::Family::sm90, gen::Family::sm80}
                           : std::vector<gen::Family>{gen::Family::sm80};
    EXPECT_EQ(families(target_for_arch(std::string(a.name))), expected) << a.name;
  }
}

}  // namespace
}  // namespace sigattn::policy
