// Element types of safetensors files (the subset resq reads and writes) and the scalar
// conversions between float and the two 16-bit float formats (IEEE fp16 and bfloat16), bit-exact
// without hardware half-precision support.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace resq {

// Names follow the safetensors header spelling ("F32", "BF16", ...); see dtype_name().
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

// Bytes per element: 8, 4, 2, 2, 8, 4, 2, 1, 1, 1.
size_t dtype_size(DType dtype);

// The safetensors header spelling: "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8",
// "BOOL".
std::string dtype_name(DType dtype);

// Inverse of dtype_name (exact, case-sensitive match). Throws FormatError naming the string and
// listing the accepted names for anything else (including safetensors dtypes resq does not read,
// such as "F8_E4M3" or "U32").
DType parse_dtype(const std::string& name);

// True for F64, F32, F16, BF16.
bool dtype_is_floating(DType dtype);

// The scalar conversions below are inline: they sit in per-element loops (tensor loading,
// fake quantization), where a call per element would cost more than the conversion.
namespace detail {
inline uint32_t float_to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}
inline float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}
}  // namespace detail

// IEEE binary16 bits -> float. Exact for every input (subnormals, ±0, ±inf); NaN stays NaN with
// its sign and payload (shifted into the top mantissa bits).
inline float fp16_to_float(uint16_t bits) {
  constexpr uint32_t kExponentMask = 0x7c00u << 13;  // half exponent field, moved to float position
  uint32_t out = static_cast<uint32_t>(bits & 0x7fffu) << 13;
  const uint32_t exponent = out & kExponentMask;
  out += (127u - 15u) << 23;  // rebias
  if (exponent == kExponentMask) {
    out += (128u - 16u) << 23;  // inf/NaN: float exponent all ones
  } else if (exponent == 0) {
    // Zero/subnormal: read the bits as 2^-14 * (1 + m/1024) and subtract 2^-14, which is exact
    // and leaves m * 2^-24 normalized.
    out += 1u << 23;
    out = detail::float_to_bits(detail::bits_to_float(out) - detail::bits_to_float(113u << 23));
  }
  return detail::bits_to_float(out | (static_cast<uint32_t>(bits & 0x8000u) << 16));
}

// bfloat16 bits -> float. Exact (bf16 is the top half of a float).
inline float bf16_to_float(uint16_t bits) { return detail::bits_to_float(static_cast<uint32_t>(bits) << 16); }

// float -> bfloat16 bits, round-to-nearest-even; overflow rounds to ±inf as IEEE does; NaN stays
// NaN (quiet, sign kept).
inline uint16_t float_to_bf16(float value) {
  const uint32_t bits = detail::float_to_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN: truncate and force the quiet bit
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  // Round to nearest even on the low 16 bits; a carry into the exponent is the correct result
  // (including overflow of the largest finite values to inf).
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

// float -> IEEE binary16 bits, round-to-nearest-even, including correct rounding into and out of
// the subnormal range; values >= 65520 in magnitude become ±inf; NaN stays NaN (quiet, sign kept).
inline uint16_t float_to_fp16(float value) {
  const uint32_t bits = detail::float_to_bits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;

  if (magnitude > 0x7f800000u) {  // NaN: keep the top payload bits, force the quiet bit
    return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  }
  // 65520 = halfway between 65504 (largest half) and 65536; the tie goes to the even
  // neighbour 65536, which is out of range: everything from 65520 up (and inf) is inf.
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);

  if (magnitude < 0x38800000u) {  // below 2^-14: result is a half subnormal (or zero)
    const uint32_t exponent = magnitude >> 23;
    if (exponent < 102) return sign;  // < 2^-25: rounds to zero (2^-25 itself ties to 0)
    // value = significand * 2^(exponent-150); in units of 2^-24 that is significand >> shift.
    const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exponent;  // 14 .. 24
    uint32_t result = significand >> shift;
    const uint32_t remainder = significand & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (remainder > half || (remainder == half && (result & 1u))) ++result;
    return static_cast<uint16_t>(sign | result);  // 0x400 (smallest normal) is correct too
  }

  // Normal range: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to
  // nearest even without a branch (adding 0xfff + lsb carries exactly when RNE rounds up; a
  // carry into the exponent is the correct result).
  const uint32_t rebased = magnitude - 0x38000000u;
  return static_cast<uint16_t>(sign | ((rebased + 0x0fffu + ((rebased >> 13) & 1u)) >> 13));
}

}  // namespace resq
