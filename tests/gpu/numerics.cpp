// bf16/fp16 conversions (round to nearest even, as the CUDA intrinsics do) and the error
// accumulation behind every numerical check of the GPU tests.
#include "numerics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

namespace sigattn::test {

std::uint16_t float_to_bf16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if (std::isnan(value)) return static_cast<std::uint16_t>((bits >> 16) | 0x0040);
  // Adding 0x7FFF plus the lowest kept bit rounds the 16 dropped bits to nearest, ties to even.
  const std::uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

float bf16_to_float(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

std::uint16_t float_to_fp16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000);
  const std::uint32_t magnitude = bits & 0x7FFFFFFF;
  if (magnitude > 0x7F800000) return sign | 0x7E00;   // NaN
  if (magnitude >= 0x477FF000) return sign | 0x7C00;  // |x| >= 65520 rounds to infinity
  if (magnitude >= 0x38800000) {
    // Normal fp16 (|x| >= 2^-14): rebias the exponent from 127 to 15 and round the 13 dropped
    // mantissa bits to nearest, ties to even; a mantissa carry moves into the exponent.
    const std::uint32_t rounded = magnitude + 0x0FFF + ((magnitude >> 13) & 1);
    return sign | static_cast<std::uint16_t>((rounded - 0x38000000) >> 13);
  }
  // Subnormal fp16: a multiple of 2^-24. Scaling by 2^24 is exact, and nearbyint rounds to
  // nearest even in the default rounding mode; 1024 becomes the smallest normal, 0x0400.
  const float units = std::nearbyint(std::bit_cast<float>(magnitude) * 16777216.0f);
  return sign | static_cast<std::uint16_t>(units);
}

float fp16_to_float(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1F;
  const std::uint32_t mantissa = bits & 0x3FF;
  if (exponent == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign != 0 ? -magnitude : magnitude;
  }
  if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000 | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

std::uint16_t to_bits(DType dtype, float value) {
  return dtype == DType::bf16 ? float_to_bf16(value) : float_to_fp16(value);
}

float from_bits(DType dtype, std::uint16_t bits) {
  return dtype == DType::bf16 ? bf16_to_float(bits) : fp16_to_float(bits);
}

// The inputs are exact in the dtype, so the kernel's own roundings are the whole difference from
// an fp32/fp64 reference: P in (0, 1) rounded before P.V and O rounded when stored, each with
// relative error up to the unit roundoff u (bf16 2^-8 = 3.9e-3, fp16 2^-11 = 4.9e-4). Over many
// keys these errors are independent, so each adds about u / sqrt(3) to the relative L2 error:
// about 3.2e-3 for bf16 and 4e-4 for fp16 together, where the bounds allow 1e-2 and 4e-3. The
// largest single error is one output rounding (u of the largest output) plus P roundings summed
// over keys: bounds of 10u (bf16) and 30u (fp16) of max|ref|.
Tolerance tolerance_for(DType dtype) {
  return dtype == DType::bf16 ? Tolerance{1e-2, 4e-2} : Tolerance{4e-3, 1.5e-2};
}

ErrorAccumulator::ErrorAccumulator(double max_abs_ref, Tolerance tolerance)
    : max_abs_ref_(max_abs_ref), tolerance_(tolerance) {}

void ErrorAccumulator::add(const Element& element, float out, double ref) {
  const auto mismatch = [&](const char* why) {
    if (!first_mismatch_) first_mismatch_ = Sample{element, out, ref, why};
  };
  if (!std::isfinite(out)) {
    ++comparison_.non_finite;
    mismatch("non-finite output");
    return;
  }
  if (element.padding) {
    if (out != 0.0f) {
      ++comparison_.bad_padding;
      mismatch("padding row not zero");
    }
    return;
  }
  const double error = std::abs(static_cast<double>(out) - ref);
  ++comparison_.checked;
  sum_sq_error_ += error * error;
  sum_sq_ref_ += ref * ref;
  if (error > max_abs_error_ || !largest_error_) {
    max_abs_error_ = error;
    largest_error_ = Sample{element, out, ref, "largest error"};
  }
  if (error > tolerance_.max_rel * max_abs_ref_) mismatch("error above the max bound");
}

namespace {

std::string describe(const Element& e, float out, double ref) {
  return fmt::format("offset {} (batch {}, row {}, head {}, dim {}): out {} ref {}", e.offset,
                     e.batch, e.row, e.head, e.dim, out, ref);
}

}  // namespace

Comparison ErrorAccumulator::result() const {
  constexpr double kInfinity = std::numeric_limits<double>::infinity();
  Comparison c = comparison_;
  c.rel_l2 = sum_sq_ref_ > 0.0     ? std::sqrt(sum_sq_error_ / sum_sq_ref_)
             : sum_sq_error_ > 0.0 ? kInfinity
                                   : 0.0;
  c.max_rel = max_abs_ref_ > 0.0     ? max_abs_error_ / max_abs_ref_
              : max_abs_error_ > 0.0 ? kInfinity
                                     : 0.0;
  c.passed = c.non_finite == 0 && c.bad_padding == 0 && c.rel_l2 <= tolerance_.rel_l2 &&
             c.max_rel <= tolerance_.max_rel;
  c.summary = fmt::format(
      "rel L2 {:.3e} (bound {:.1e}), max err / max|ref| {:.3e} (bound {:.1e}) with max|ref| "
      "{:.4g}; {} elements compared, {} non-finite, {} non-zero padding",
      c.rel_l2, tolerance_.rel_l2, c.max_rel, tolerance_.max_rel, max_abs_ref_, c.checked,
      c.non_finite, c.bad_padding);
  if (first_mismatch_) {
    const Sample& s = *first_mismatch_;
    c.summary +=
        fmt::format("\nfirst mismatch ({}) at {}", s.why, describe(s.element, s.out, s.ref));
  }
  if (largest_error_) {
    const Sample& s = *largest_error_;
    c.summary += fmt::format("\nlargest error at {}", describe(s.element, s.out, s.ref));
  }
  return c;
}

}  // namespace sigattn::test
