// The library's own host time per forward_with_kvcache call, timed against the stand-in driver
// (stand_in_driver.cpp) on a machine without a GPU: a decode step like bench/decode.py's (GQA
// 32:8, d 128, bf16, a contiguous cache, one new token per sequence, trust_lengths, the workspace
// the call asks for). Prints the median and range of five timed runs. Usage:
// decode_host_time [batch] [context] [calls per run]. Built and run by scripts/host_probe.sh.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sigattn/sigattn.hpp>
#include <vector>

namespace {

void* host_buffer(std::size_t bytes) { return std::aligned_alloc(256, (bytes + 255) / 256 * 256); }

}  // namespace

int main(int argc, char** argv) {
  const int batch = argc > 1 ? std::atoi(argv[1]) : 16;
  const int context = argc > 2 ? std::atoi(argv[2]) : 4096;
  const int calls = argc > 3 ? std::atoi(argv[3]) : 20000;
  constexpr int kHeadsQ = 32, kHeadsKv = 8, kHeadDim = 128, kWarmUp = 200;
  const std::size_t row = std::size_t{2} * kHeadDim;  // bytes of one head's row
  sigattn::KvCacheArgs args;
  args.batch = batch;
  args.heads_q = kHeadsQ;
  args.heads_kv = kHeadsKv;
  args.head_dim = kHeadDim;
  args.seqlen_q = 1;
  args.q = sigattn::bthd(host_buffer(batch * kHeadsQ * row), 1, kHeadsQ, kHeadDim);
  args.out = sigattn::bthd(host_buffer(batch * kHeadsQ * row), 1, kHeadsQ, kHeadDim);
  const std::size_t cache_bytes = std::size_t(batch) * context * kHeadsKv * row;
  args.k_cache = sigattn::bthd(host_buffer(cache_bytes), context, kHeadsKv, kHeadDim);
  args.v_cache = sigattn::bthd(host_buffer(cache_bytes), context, kHeadsKv, kHeadDim);
  args.max_cache_len = context;
  auto* lengths = static_cast<std::int32_t*>(host_buffer(batch * sizeof(std::int32_t)));
  for (int b = 0; b < batch; ++b) lengths[b] = context / 2 + b;
  args.cache_seqlens = lengths;
  args.k_new = sigattn::bthd(host_buffer(batch * kHeadsKv * row), 1, kHeadsKv, kHeadDim);
  args.v_new = sigattn::bthd(host_buffer(batch * kHeadsKv * row), 1, kHeadsKv, kHeadDim);
  args.seqlen_new = 1;
  args.trust_lengths = true;
  args.workspace_bytes = sigattn::kvcache_workspace_bytes(args);
  args.workspace = host_buffer(std::max<std::size_t>(args.workspace_bytes, 16));

  for (int i = 0; i < kWarmUp; ++i) sigattn::forward_with_kvcache(args, nullptr);
  std::vector<double> microseconds;
  for (int run = 0; run < 5; ++run) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) sigattn::forward_with_kvcache(args, nullptr);
    const std::chrono::duration<double, std::micro> spent =
        std::chrono::steady_clock::now() - start;
    microseconds.push_back(spent.count() / calls);
  }
  std::sort(microseconds.begin(), microseconds.end());
  std::printf(
      "decode step B %d, context %d: %.2f us per call (median of 5 runs of %d; %.2f to %.2f)\n",
      batch, context, microseconds[2], calls, microseconds.front(), microseconds.back());
  std::printf("%d calls in all; the stand-in driver's counts of its entry points follow\n",
              kWarmUp + 5 * calls);
  std::fflush(stdout);
  return 0;
}
