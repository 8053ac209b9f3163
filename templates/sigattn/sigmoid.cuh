// The two sigmoid forms, and the slope the backward multiplies dP by. fast:
// 0.5 * tanh.approx(0.5 x) + 0.5, one special-function op per score, with the 0.5 folded into
// the caller's scale and bias. accurate: 1 / (1 + e^-x) with full-precision expf and IEEE
// division.
#pragma once

namespace sigattn {

__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Maps a raw score s to sigma(s * scale + shift), where `shift` is bias + score_mod. The fast
// form stores halved factors so that each score costs two FMAs and one tanh.
template <bool kAccurate>
struct Sigmoid {
  float scale;

  __device__ __forceinline__ explicit Sigmoid(float s) : scale(kAccurate ? s : 0.5f * s) {}

  __device__ __forceinline__ float shift(float bias_plus_mod) const {
    return kAccurate ? bias_plus_mod : 0.5f * bias_plus_mod;
  }

  // The shifts of keys col and col + 1: shift(bias + score_mod[key]) below len_k, else
  // shift_bias = shift(bias) (the masks zero keys past len_k).
  template <bool kScoreMod>
  __device__ __forceinline__ void column_shifts(float (&out)[2], float shift_bias, float bias,
                                                const float* score_mod, int col, int len_k) const {
    out[0] = out[1] = shift_bias;
    if constexpr (kScoreMod) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        if (col + c < len_k) out[c] = shift(bias + score_mod[col + c]);
      }
    }
  }

  // The shift of one key: shift(bias + score_mod[key]) below len_k, else shift(bias).
  template <bool kScoreMod>
  __device__ __forceinline__ float key_shift(float bias, const float* score_mod, int key,
                                             int len_k) const {
    float mod = 0.0f;
    if constexpr (kScoreMod) {
      if (key < len_k) mod = score_mod[key];
    }
    return shift(bias + mod);
  }

  __device__ __forceinline__ float operator()(float s, float shift_value) const {
    if constexpr (kAccurate) {
      float x = fmaf(s, scale, shift_value);
      return 1.0f / (1.0f + expf(-x));
    } else {
      return fmaf(0.5f, tanh_approx(fmaf(s, scale, shift_value)), 0.5f);
    }
  }
};

// sigma'(x) from p = sigma(x): p (1 - p), as p - p p in one FFMA.
__device__ __forceinline__ float sigmoid_slope(float p) { return fmaf(-p, p, p); }

}  // namespace sigattn
