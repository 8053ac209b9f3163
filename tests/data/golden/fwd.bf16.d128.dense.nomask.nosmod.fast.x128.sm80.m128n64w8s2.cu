// sigattn generated kernel fwd.bf16.d128.dense.nomask.nosmod.fast.x128/sm80.m128n64w8s2
// generator version 1, templates <template-hash>
#include "sigattn/fwd_sm80.cuh"

namespace sigattn_generated {
struct Cfg {
  static constexpr bool kBf16 = true;
  static constexpr int kHeadDim = 128;
  static constexpr sigattn::Layout kLayout = sigattn::Layout::kDense;
  static constexpr bool kCausal = false;
  static constexpr bool kWindow = false;
  static constexpr bool kScoreMod = false;
  static constexpr bool kAccurateSigmoid = false;
  static constexpr bool kSeqLenX128 = true;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = 64;
  static constexpr int kWarps = 8;
  static constexpr int kStages = 2;
  static constexpr int kSmemBytes = 104448;
};
}  // namespace sigattn_generated
