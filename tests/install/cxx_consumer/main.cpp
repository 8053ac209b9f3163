// Runs against an installed sigattn without a GPU: the library's version matches the installed
// header, and a forward call on host memory fails with a sigattn::Error caught across the library
// boundary: not_available or driver_error without a driver, invalid_argument naming the pointer
// that is not device memory where a driver is present.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <sigattn/sigattn.hpp>
#include <string>
#include <vector>

int main() {
  std::printf("sigattn %s\n", sigattn::version());
  if (std::strcmp(sigattn::version(), SIGATTN_VERSION_STRING) != 0) {
    std::fprintf(stderr, "library version %s, header version %s\n", sigattn::version(),
                 SIGATTN_VERSION_STRING);
    return 1;
  }

  constexpr int kSeq = 16, kHeads = 2, kHeadDim = 64;
  std::vector<std::uint16_t> q(kSeq * kHeads * kHeadDim, 0x3c00), k(q), v(q), out(q.size());
  sigattn::ForwardArgs args;
  args.dtype = sigattn::DType::fp16;
  args.batch = 1;
  args.heads_q = kHeads;
  args.heads_kv = kHeads;
  args.head_dim = kHeadDim;
  args.max_seqlen_q = kSeq;
  args.max_seqlen_k = kSeq;
  args.q = sigattn::bthd(q.data(), kSeq, kHeads, kHeadDim);
  args.k = sigattn::bthd(k.data(), kSeq, kHeads, kHeadDim);
  args.v = sigattn::bthd(v.data(), kSeq, kHeads, kHeadDim);
  args.out = sigattn::bthd(out.data(), kSeq, kHeads, kHeadDim);
  try {
    sigattn::forward(args, nullptr);
  } catch (const sigattn::Error& error) {
    const std::string message = error.what();
    const bool without_driver = error.status() == sigattn::Status::not_available ||
                                error.status() == sigattn::Status::driver_error;
    const bool host_memory_rejected = error.status() == sigattn::Status::invalid_argument &&
                                      message.find("not a device pointer") != std::string::npos;
    std::printf("forward: status %d: %s\n", static_cast<int>(error.status()), message.c_str());
    return (without_driver || host_memory_rejected) && !message.empty() ? 0 : 1;
  }
  std::fprintf(stderr, "forward on host memory did not fail\n");
  return 1;
}
