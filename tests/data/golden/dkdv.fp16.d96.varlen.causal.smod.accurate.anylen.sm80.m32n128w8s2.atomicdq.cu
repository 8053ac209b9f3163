// sigattn generated kernel dkdv.fp16.d96.varlen.causal.smod.accurate.anylen/sm80.m32n128w8s2.atomicdq
// generator version 1, templates <template-hash>
#include "sigattn/bwd_dkdv_sm80.cuh"

namespace sigattn_generated {
struct Cfg {
  static constexpr bool kBf16 = false;
  static constexpr int kHeadDim = 96;
  static constexpr sigattn::Layout kLayout = sigattn::Layout::kVarlen;
  static constexpr bool kCausal = true;
  static constexpr bool kWindow = false;
  static constexpr bool kScoreMod = true;
  static constexpr bool kAccurateSigmoid = true;
  static constexpr bool kSeqLenX128 = false;
  static constexpr int kBlockM = 32;
  static constexpr int kBlockN = 128;
  static constexpr int kWarps = 8;
  static constexpr int kStages = 2;
  static constexpr bool kAtomicDq = true;
  static constexpr int kSmemBytes = 90112;
};
}  // namespace sigattn_generated
