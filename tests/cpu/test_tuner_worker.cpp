// The worker protocol against a real child process (tests/cpu/fake_worker): measurements come
// back through the socket; a compiler crash is blamed on the tile being compiled (after a retry
// without background compiles), a crash while timing is a launch_error, a hang is killed by the
// watchdog as a timeout, a lost context ends the worker; each time a fresh worker takes over and
// the run goes on. Also the measurement JSON and the reference program's compilation.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "generator/generator.hpp"
#include "runtime/nvrtc.hpp"
#include "tuner/reference.hpp"
#include "tuner/worker.hpp"

namespace sigattn::tune {
namespace {

using cache::CandidateStatus;

TEST(TunerWorker, MeasurementJsonRoundTrip) {
  Measurement m;
  m.status = CandidateStatus::ok;
  m.timing = Timing{30, 1.25, 1.2, 1.5};
  m.compile = {168, 8, 16};
  m.message = "fine";
  const Measurement back = measurement_from_json(nlohmann::json::parse(measurement_json(m).dump()));
  EXPECT_EQ(back.status, m.status);
  ASSERT_TRUE(back.timing);
  EXPECT_DOUBLE_EQ(back.timing->median_ms, 1.25);
  EXPECT_EQ(back.compile.spill_load_bytes, 16);
  EXPECT_EQ(back.message, "fine");
  const cache::DeviceKey device{"NVIDIA H200", "sm_90a", 132};
  EXPECT_EQ(device_from_json(device_json(device)), device);
}

TEST(TunerWorker, CrashesHangsAndLostContextsCostOneCandidateEach) {
  WorkerMeasurer worker({{SIGATTN_TUNER_FAKE_WORKER}, 10.0});
  EXPECT_EQ(worker.device().name, "Fake GPU");
  const Task task = tasks_for(parse_shape("fwd.bf16.d64.L1024")).front();
  // The fake's misbehaving tiles are sm80 ones; other families would only add ok tiles.
  std::vector<gen::TileConfig> tiles =
      policy::candidates(task.spec, policy::target_for_arch("sm_90a"));
  std::erase_if(tiles, [](const gen::TileConfig& t) { return t.family != gen::Family::sm80; });
  ASSERT_EQ(tiles.size(), 16u);
  worker.begin_task(task, tiles);
  std::map<std::string, Measurement> results;
  for (const gen::TileConfig& tile : tiles) {
    results[gen::to_string(tile)] = worker.measure(tile, {5, false});
  }
  const auto status = [&](const char* tile) { return results.at(tile).status; };
  EXPECT_EQ(status("sm80.m64n32w4s2"), CandidateStatus::compile_error)
      << results.at("sm80.m64n32w4s2").message;
  EXPECT_EQ(status("sm80.m128n32w4s3"), CandidateStatus::launch_error);
  EXPECT_NE(results.at("sm80.m128n32w4s3").message.find("SIGABRT"), std::string::npos)
      << results.at("sm80.m128n32w4s3").message;
  EXPECT_EQ(status("sm80.m64n128w4s2"), CandidateStatus::timeout);
  EXPECT_NE(results.at("sm80.m64n128w4s2").message.find("time phase"), std::string::npos);
  EXPECT_EQ(status("sm80.m128n128w8s3"), CandidateStatus::launch_error);
  int ok = 0;
  for (const auto& [tile, m] : results) {
    if (m.status != CandidateStatus::ok) continue;
    ++ok;
    ASSERT_TRUE(m.timing) << tile;
    const gen::TileConfig parsed = gen::parse_tile(tile);
    EXPECT_DOUBLE_EQ(m.timing->median_ms, (parsed.block_m + parsed.block_n) / 1000.0);
    EXPECT_EQ(m.timing->repetitions, 5);
  }
  EXPECT_EQ(ok, 12);
  // After the compiler crash, the crash while timing and the hang; the lost context is the last
  // tile, and a crash of a background compile may add a retry.
  EXPECT_GE(worker.restarts(), 3);
}

TEST(TunerWorker, AWorkerThatCannotStartIsATaskError) {
  WorkerMeasurer worker({{"/nonexistent/sigattn"}, 3.0});
  EXPECT_THROW(worker.device(), TaskError);
}

TEST(TunerReference, ProgramCompilesForEveryTargetFamily) {
  std::string why;
  if (nvrtc::try_api(&why) == nullptr) GTEST_SKIP() << why;
  for (const char* arch : {"sm_80", "sm_90a"}) {
    const auto binary = reference_binary(arch);
    EXPECT_FALSE(binary->cubin.empty()) << arch;
    EXPECT_EQ(binary->lowered_name, kReferenceForwardKernel);
  }
}

}  // namespace
}  // namespace sigattn::tune
