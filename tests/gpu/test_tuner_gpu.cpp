// The tuner's GPU runner on the device: every candidate tile of a small forward, backward and
// decode task (contiguous and paged caches) passes verification against the reference and comes
// back timed; a broken output is caught. The
// end-to-end checks of `sigattn tune` (quick preset, SIGKILL and resume, faulting and hanging
// candidates) are in scripts/tune_gpu_check.sh.
#include <gtest/gtest.h>

#include <cmath>

#include "gpu_test_env.hpp"
#include "tuner/gpu_runner.hpp"

namespace sigattn::test {
namespace {

class TunerGpu : public GpuTest {};

void expect_every_candidate_passes(const char* shape_text, const Gpu& gpu) {
  tune::GpuRunner runner(gpu.info.ordinal, std::nullopt);
  for (const tune::Task& task : tune::tasks_for(tune::parse_shape(shape_text))) {
    runner.set_task(task);
    for (const gen::TileConfig& tile : policy::candidates(task.spec, gpu.target)) {
      const tune::Measurement m = runner.measure(tile, {5, false}, [](std::string_view) {});
      EXPECT_EQ(m.status, cache::CandidateStatus::ok)
          << task.name() << " " << gen::to_string(tile) << ": " << m.message;
      if (m.status != cache::CandidateStatus::ok) continue;
      ASSERT_TRUE(m.timing);
      EXPECT_EQ(m.timing->repetitions, 5);
      EXPECT_GT(m.timing->min_ms, 0.0);
      EXPECT_TRUE(std::isfinite(m.timing->spread()));
    }
    EXPECT_FALSE(runner.context_lost());
  }
}

TEST_F(TunerGpu, ForwardCandidatesVerifyAndTime) {
  expect_every_candidate_passes("fwd.bf16.d64.L384.pad25.b3.h4x2.causal", gpu());
}

TEST_F(TunerGpu, BackwardCandidatesVerifyAndTime) {
  expect_every_candidate_passes("bwd.fp16.d128.L256.b2.h4", gpu());
}

TEST_F(TunerGpu, DecodeCandidatesVerifyAndTime) {
  // Mixed cache lengths, three causal query rows, blocks of 16 behind a shuffled table.
  expect_every_candidate_passes("dec.bf16.d128.L700.pad30.b3.h8x2.q3.paged16.causal", gpu());
  expect_every_candidate_passes("dec.fp16.d64.L300.b2.h4", gpu());
}

TEST(TunerGpuCompare, BrokenOutputsAreCaught) {
  const std::vector<float> expected = {1.0f, -2.0f, 0.5f, 0.0f};
  EXPECT_TRUE(tune::compare_outputs(expected, expected, {1e-2, 4e-2}, "O").empty());
  std::vector<float> broken = expected;
  broken[2] = NAN;
  EXPECT_NE(tune::compare_outputs(broken, expected, {1e-2, 4e-2}, "O").find("element 2"),
            std::string::npos);
  broken[2] = 1.5f;
  EXPECT_FALSE(tune::compare_outputs(broken, expected, {1e-2, 4e-2}, "O").empty());
}

}  // namespace
}  // namespace sigattn::test
