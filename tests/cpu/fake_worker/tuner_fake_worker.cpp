// A tuning worker without a GPU for the CPU tests of the worker protocol: it speaks the real
// protocol (tune::serve_worker) over a runner whose behaviour is fixed per tile, so the parent's
// watchdog, restarts and blame are tested against a real child process that crashes and hangs.
//   m64n32w4s2:   the compiler "crashes" (SIGSEGV) whenever this tile is compiled
//   m128n32w4s3:  the worker crashes (abort) while timing
//   m64n128w4s2:  the worker hangs while timing
//   m128n128w8s3: a sticky launch error: reported with the context lost, then the worker exits
//   anything else:    ok, median block_m + block_n microseconds
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <thread>

#include "tuner/worker.hpp"

namespace {

using sigattn::cache::CandidateStatus;
using sigattn::gen::TileConfig;

bool crashes_compiler(const TileConfig& t) {
  return t.block_m == 64 && t.block_n == 32 && t.warps == 4 && t.stages == 2;
}
bool crashes_timing(const TileConfig& t) {
  return t.block_m == 128 && t.block_n == 32 && t.warps == 4 && t.stages == 3;
}
bool hangs(const TileConfig& t) {
  return t.block_m == 64 && t.block_n == 128 && t.warps == 4 && t.stages == 2;
}
bool loses_context(const TileConfig& t) {
  return t.block_m == 128 && t.block_n == 128 && t.warps == 8 && t.stages == 3;
}

class FakeRunner : public sigattn::tune::CandidateRunner {
 public:
  sigattn::cache::DeviceKey device() override { return {"Fake GPU", "sm_90a", 132}; }
  void set_task(const sigattn::tune::Task&) override {}
  sigattn::tune::CompileInfo compile(const sigattn::gen::Variant& variant) override {
    if (crashes_compiler(variant.tile)) raise(SIGSEGV);
    return {128, 0, 0};
  }
  sigattn::tune::Measurement measure(const TileConfig& tile,
                                     const sigattn::tune::MeasureRequest& request,
                                     const std::function<void(std::string_view)>& phase) override {
    sigattn::tune::Measurement m;
    phase("compile");
    m.compile = compile({{}, tile});
    phase("time");
    if (crashes_timing(tile)) std::abort();
    if (hangs(tile)) {
      while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    if (loses_context(tile)) {
      m.status = CandidateStatus::launch_error;
      m.message = "CUDA_ERROR_ILLEGAL_ADDRESS";
      lost_ = true;
      return m;
    }
    const double us = tile.block_m + tile.block_n;
    m.timing = sigattn::tune::Timing{request.repetitions, us / 1000, us / 1000, us / 1000};
    return m;
  }
  bool context_lost() const override { return lost_; }

 private:
  bool lost_ = false;
};

}  // namespace

int main() {
  FakeRunner runner;
  return sigattn::tune::serve_worker(std::cin, std::cout, runner, 2);
}
