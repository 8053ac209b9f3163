// Host-side numerics of the GPU tests: bf16/fp16 bit conversions with round-to-nearest-even, the
// error bounds per dtype, and the comparison of a kernel output with a reference that reports
// relative L2 error, max error and the first mismatching element.
#pragma once

#include <cstdint>
#include <optional>
#include <sigattn/sigattn.hpp>
#include <string>
#include <vector>

namespace sigattn::test {

std::uint16_t float_to_bf16(float value);
float bf16_to_float(std::uint16_t bits);
std::uint16_t float_to_fp16(float value);
float fp16_to_float(std::uint16_t bits);

std::uint16_t to_bits(DType dtype, float value);
float from_bits(DType dtype, std::uint16_t bits);

// Largest accepted ||out - ref||_2 / ||ref||_2 and max|out - ref| / max|ref|.
struct Tolerance {
  double rel_l2 = 0.0;
  double max_rel = 0.0;
};

// The bounds for a kernel that reads inputs already in `dtype` and rounds to `dtype` twice: P
// before P.V, and O when it is stored.
Tolerance tolerance_for(DType dtype);

// One output element as the comparison sees it. `padding` rows (query rows past len_q in the
// padded layout) must hold exactly zero.
struct Element {
  std::int64_t offset = 0;  // index into the output and reference arrays
  int batch = 0;
  int row = 0;
  int head = 0;
  int dim = 0;
  bool padding = false;
};

struct Comparison {
  double rel_l2 = 0.0;
  double max_rel = 0.0;
  std::int64_t checked = 0;      // elements of valid rows compared
  std::int64_t non_finite = 0;   // NaN or Inf anywhere in the output
  std::int64_t bad_padding = 0;  // padding elements that are not zero
  bool passed = false;
  // The metrics against their bounds, the first mismatching element and the largest error.
  std::string summary;
};

// Accumulates the comparison element by element. An element mismatches when it is not finite,
// when it is padding and not zero, or when |out - ref| exceeds tolerance.max_rel * max|ref|.
class ErrorAccumulator {
 public:
  ErrorAccumulator(double max_abs_ref, Tolerance tolerance);
  void add(const Element& element, float out, double ref);
  Comparison result() const;

 private:
  double max_abs_ref_;
  Tolerance tolerance_;
  double sum_sq_error_ = 0.0;
  double sum_sq_ref_ = 0.0;
  double max_abs_error_ = 0.0;
  struct Sample {
    Element element;
    float out = 0.0f;
    double ref = 0.0;
    const char* why = "";
  };
  std::optional<Sample> first_mismatch_;
  std::optional<Sample> largest_error_;
  Comparison comparison_;
};

}  // namespace sigattn::test
