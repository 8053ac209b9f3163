// sigattn generated kernel dq.bf16.d64.padded.window.nosmod.fast.anylen/sm90.m128n64w12s3.dynamic
// generator version 1, templates <template-hash>
#include "sigattn/bwd_dq_sm90.cuh"

namespace sigattn_generated {
struct Cfg {
  static constexpr bool kBf16 = true;
  static constexpr int kHeadDim = 64;
  static constexpr sigattn::Layout kLayout = sigattn::Layout::kPadded;
  static constexpr bool kCausal = false;
  static constexpr bool kWindow = true;
  static constexpr bool kScoreMod = false;
  static constexpr bool kAccurateSigmoid = false;
  static constexpr bool kSeqLenX128 = false;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = 64;
  static constexpr int kWarps = 12;
  static constexpr int kStages = 3;
  static constexpr bool kDynamicSchedule = true;
  static constexpr int kSmemBytes = 83072;
};
}  // namespace sigattn_generated
