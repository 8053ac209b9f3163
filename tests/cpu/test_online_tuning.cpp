// Online tuning without a GPU: which calls can be described as a tuning shape, and the queue that
// runs `sigattn tune` once per shape in a child process (here a stand-in script that records its
// arguments), after which the runtime reads the tuning results again; and the runtime's hook that
// reaches the tuner.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>

#include "generator/kernel_spec.hpp"
#include "runtime/forward.hpp"
#include "runtime/online_tuning_hook.hpp"
#include "runtime/persistent_cache.hpp"
#include "temp_dir.hpp"
#include "tuner/online_tuning.hpp"

namespace sigattn::tune {
namespace {

using sigattn::testing::TempDir;

ForwardArgs dense_call() {
  ForwardArgs args;
  args.batch = 2;
  args.heads_q = 8;
  args.heads_kv = 2;
  args.head_dim = 64;
  args.max_seqlen_q = args.max_seqlen_k = 1024;
  return args;
}

gen::KernelSpec spec_of(const std::string& text) { return gen::parse_spec(text); }

// A stand-in `sigattn` program ($SIGATTN_EXECUTABLE while this lives) that records the arguments
// of every run.
class RecordingProgram {
 public:
  RecordingProgram() {
    const std::filesystem::path program = dir_ / "sigattn";
    std::ofstream(program) << "#!/bin/sh\necho \"$@\" >> " << record().string() << "\n";
    ::chmod(program.c_str(), 0755);
    ::setenv("SIGATTN_EXECUTABLE", program.c_str(), 1);
  }
  ~RecordingProgram() { ::unsetenv("SIGATTN_EXECUTABLE"); }

  const TempDir& dir() const { return dir_; }
  // One line of arguments per run.
  std::string calls() const {
    std::ifstream in(record());
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

 private:
  std::filesystem::path record() const { return dir_ / "calls.txt"; }
  TempDir dir_;
};

TEST(OnlineTuning, ShapeOfACall) {
  ForwardArgs args = dense_call();
  args.causal = true;
  const auto shape = online_shape(args, spec_of("fwd.bf16.d64.dense.causal.nosmod.fast.x128"));
  ASSERT_TRUE(shape);
  EXPECT_EQ(to_string(*shape), "fwd.bf16.d64.L1024.b2.h8x2.causal");
  const auto padded = online_shape(args, spec_of("fwd.fp16.d64.padded.causal.nosmod.fast.anylen"));
  ASSERT_TRUE(padded);
  EXPECT_EQ(padded->padding_percent, 25);
  EXPECT_EQ(padded->dtype, gen::DType::fp16);
}

TEST(OnlineTuning, CallsTheShapesCannotDescribeAreNotTuned) {
  ForwardArgs args = dense_call();
  EXPECT_FALSE(online_shape(args, spec_of("fwd.bf16.d64.varlen.nomask.nosmod.fast.anylen")));
  EXPECT_FALSE(online_shape(args, spec_of("fwd.bf16.d64.dense.window.nosmod.fast.x128")));
  EXPECT_FALSE(online_shape(args, spec_of("fwd.bf16.d64.dense.nomask.smod.fast.x128")));
  args.max_seqlen_k = 2048;
  EXPECT_FALSE(online_shape(args, spec_of("fwd.bf16.d64.dense.nomask.nosmod.fast.x128")));
}

TEST(OnlineTuning, RunsTheTunerOncePerShapeInAChildProcess) {
  RecordingProgram program;
  const std::filesystem::path database = program.dir() / "user.db";
  OnlineTuner& tuner = OnlineTuner::instance();
  tuner.set_enabled(true);
  const auto shape =
      online_shape(dense_call(), spec_of("fwd.bf16.d64.dense.nomask.nosmod.fast.x128"));
  ASSERT_TRUE(shape);
  EXPECT_TRUE(tuner.request(*shape, database));
  EXPECT_FALSE(tuner.request(*shape, database));
  tuner.wait_idle();
  tuner.set_enabled(false);
  Shape other = *shape;
  other.seqlen = 2048;
  EXPECT_FALSE(tuner.request(other, database));

  EXPECT_EQ(program.calls(), "tune --shape fwd.bf16.d64.L1024.b2.h8x2 --db " + database.string() +
                                 " --strategy random --budget 8\n");
}

TEST(OnlineTuning, TheRuntimeReachesTheTunerThroughItsHook) {
  RecordingProgram program;
  const gen::KernelSpec spec = spec_of("fwd.bf16.d64.dense.nomask.nosmod.fast.x128");
  ForwardArgs off = dense_call();
  off.max_seqlen_q = off.max_seqlen_k = 3072;
  ForwardArgs on = dense_call();
  on.max_seqlen_q = on.max_seqlen_k = 4096;
  OnlineTuner& tuner = OnlineTuner::instance();
  request_online_tuning(off, spec);
  tuner.set_enabled(true);
  request_online_tuning(on, spec);
  tuner.wait_idle();
  tuner.set_enabled(false);

  EXPECT_EQ(program.calls(), "tune --shape fwd.bf16.d64.L4096.b2.h8x2 --db " +
                                 PersistentCache::instance().database_path().string() +
                                 " --strategy random --budget 8\n");
}

TEST(OnlineTuning, AProgramThatCannotStartIsAWarning) {
  TempDir dir;
  ::setenv("SIGATTN_EXECUTABLE", (dir / "missing" / "sigattn").c_str(), 1);
  OnlineTuner& tuner = OnlineTuner::instance();
  tuner.set_enabled(true);
  Shape shape = *online_shape(dense_call(), spec_of("fwd.bf16.d64.dense.nomask.nosmod.fast.x128"));
  shape.seqlen = 512;
  ::testing::internal::CaptureStderr();
  EXPECT_TRUE(tuner.request(shape, dir / "user.db"));
  tuner.wait_idle();
  const std::string printed = ::testing::internal::GetCapturedStderr();
  tuner.set_enabled(false);
  ::unsetenv("SIGATTN_EXECUTABLE");
  EXPECT_NE(printed.find("sigattn: warning: online tuning cannot start"), std::string::npos)
      << printed;
  EXPECT_NE(printed.find("missing/sigattn"), std::string::npos) << printed;
}

TEST(OnlineTuning, ExecutableFollowsTheEnvironment) {
  ::setenv("SIGATTN_EXECUTABLE", "/opt/sigattn/bin/sigattn", 1);
  EXPECT_EQ(tune_executable(), "/opt/sigattn/bin/sigattn");
  ::unsetenv("SIGATTN_EXECUTABLE");
  EXPECT_EQ(tune_executable().filename(), "sigattn");
}

}  // namespace
}  // namespace sigattn::tune
