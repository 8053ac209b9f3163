// sigattn generated kernel decode.bf16.d128.paged.causal+window.smod.fast.anylen/sm80.m16n64w4s3
// generator version 1, templates <template-hash>
#include "sigattn/decode_sm80.cuh"

namespace sigattn_generated {
struct Cfg {
  static constexpr bool kBf16 = true;
  static constexpr int kHeadDim = 128;
  static constexpr bool kPaged = true;
  static constexpr bool kCausal = true;
  static constexpr bool kWindow = true;
  static constexpr bool kScoreMod = true;
  static constexpr bool kAccurateSigmoid = false;
  static constexpr bool kSeqLenX128 = false;
  static constexpr int kBlockM = 16;
  static constexpr int kBlockN = 64;
  static constexpr int kWarps = 4;
  static constexpr int kStages = 3;
  static constexpr int kSmemBytes = 111104;
};
}  // namespace sigattn_generated
