// sigattn generated kernel fwd.fp16.d64.padded.causal.smod.accurate.anylen/sm80.m128n64w4s3
// generator version 1, templates <template-hash>
#include "sigattn/fwd_sm80.cuh"

namespace sigattn_generated {
struct Cfg {
  static constexpr bool kBf16 = false;
  static constexpr int kHeadDim = 64;
  static constexpr sigattn::Layout kLayout = sigattn::Layout::kPadded;
  static constexpr bool kCausal = true;
  static constexpr bool kWindow = false;
  static constexpr bool kScoreMod = true;
  static constexpr bool kAccurateSigmoid = true;
  static constexpr bool kSeqLenX128 = false;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = 64;
  static constexpr int kWarps = 4;
  static constexpr int kStages = 3;
  static constexpr int kSmemBytes = 73728;
};
}  // namespace sigattn_generated
