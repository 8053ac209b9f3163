// sigattn generated kernel fwd.bf16.d128.varlen.causal.nosmod.fast.anylen/sm90.m128n128w12s3.dynamic
// generator version 1, templates <template-hash>
#include "sigattn/fwd_sm90.cuh"

namespace sigattn_generated {
struct Cfg {
  static constexpr bool kBf16 = true;
  static constexpr int kHeadDim = 128;
  static constexpr sigattn::Layout kLayout = sigattn::Layout::kVarlen;
  static constexpr bool kCausal = true;
  static constexpr bool kWindow = false;
  static constexpr bool kScoreMod = false;
  static constexpr bool kAccurateSigmoid = false;
  static constexpr bool kSeqLenX128 = false;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = 128;
  static constexpr int kWarps = 12;
  static constexpr int kStages = 3;
  static constexpr bool kDynamicSchedule = true;
  static constexpr int kSmemBytes = 230528;
};
}  // namespace sigattn_generated
