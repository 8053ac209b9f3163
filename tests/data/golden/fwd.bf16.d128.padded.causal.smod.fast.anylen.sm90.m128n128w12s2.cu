// sigattn generated kernel fwd.bf16.d128.padded.causal.smod.fast.anylen/sm90.m128n128w12s2
// generator version 1, templates <template-hash>
#include "sigattn/fwd_sm90.cuh"

namespace sigattn_generated {
struct Cfg {
  static constexpr bool kBf16 = true;
  static constexpr int kHeadDim = 128;
  static constexpr sigattn::Layout kLayout = sigattn::Layout::kPadded;
  static constexpr bool kCausal = true;
  static constexpr bool kWindow = false;
  static constexpr bool kScoreMod = true;
  static constexpr bool kAccurateSigmoid = false;
  static constexpr bool kSeqLenX128 = false;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = 128;
  static constexpr int kWarps = 12;
  static constexpr int kStages = 2;
  static constexpr bool kDynamicSchedule = false;
  static constexpr int kSmemBytes = 164992;
};
}  // namespace sigattn_generated
