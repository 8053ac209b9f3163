// sigattn generated kernel fwd.bf16.d40.varlen.causal+window.nosmod.fast.anylen/sm80.m64n32w4s2
// generator version 1, templates <template-hash>
#include "sigattn/fwd_sm80.cuh"

namespace sigattn_generated {
struct Cfg {
  static constexpr bool kBf16 = true;
  static constexpr int kHeadDim = 40;
  static constexpr sigattn::Layout kLayout = sigattn::Layout::kVarlen;
  static constexpr bool kCausal = true;
  static constexpr bool kWindow = true;
  static constexpr bool kScoreMod = false;
  static constexpr bool kAccurateSigmoid = false;
  static constexpr bool kSeqLenX128 = false;
  static constexpr int kBlockM = 64;
  static constexpr int kBlockN = 32;
  static constexpr int kWarps = 4;
  static constexpr int kStages = 2;
  static constexpr int kSmemBytes = 21504;
};
}  // namespace sigattn_generated
