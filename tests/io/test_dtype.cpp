// Tests of DType names/sizes and the fp16/bf16 <-> float conversions: exhaustive over all 65536
// bit patterns against an independent ldexp reference, and at every rounding midpoint.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>

#include "resq/common/error.h"
#include "resq/io/dtype.h"

namespace resq {
namespace {

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

float float_of(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Reference decoding of a binary float with the given field widths, from the IEEE definition.
double reference_decode(uint32_t bits, int exponent_bits, int mantissa_bits) {
  const uint32_t mantissa = bits & ((1u << mantissa_bits) - 1);
  const uint32_t exponent = (bits >> mantissa_bits) & ((1u << exponent_bits) - 1);
  const bool negative = (bits >> (mantissa_bits + exponent_bits)) & 1u;
  const int bias = (1 << (exponent_bits - 1)) - 1;
  double magnitude;
  if (exponent == (1u << exponent_bits) - 1) {
    magnitude = mantissa ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<double>(mantissa), 1 - bias - mantissa_bits);
  } else {
    magnitude = std::ldexp(static_cast<double>(mantissa + (1u << mantissa_bits)),
                           static_cast<int>(exponent) - bias - mantissa_bits);
  }
  return negative ? -magnitude : magnitude;
}

bool is_fp16_nan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }
bool is_bf16_nan(uint16_t b) { return (b & 0x7f80u) == 0x7f80u && (b & 0x7fu) != 0; }

TEST(DType, NamesSizesAndParse) {
  struct Row {
    DType dtype;
    const char* name;
    size_t size;
  };
  const Row rows[] = {{DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2},
                      {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
                      {DType::I16, "I16", 2}, {DType::I8, "I8", 1}, {DType::U8, "U8", 1},
                      {DType::BOOL, "BOOL", 1}};
  for (const Row& row : rows) {
    EXPECT_EQ(dtype_name(row.dtype), row.name);
    EXPECT_EQ(dtype_size(row.dtype), row.size) << row.name;
    EXPECT_EQ(parse_dtype(row.name), row.dtype) << row.name;
  }
  EXPECT_TRUE(dtype_is_floating(DType::BF16));
  EXPECT_TRUE(dtype_is_floating(DType::F64));
  EXPECT_FALSE(dtype_is_floating(DType::I32));
  EXPECT_FALSE(dtype_is_floating(DType::BOOL));
}

TEST(DType, ParseRejectsUnknownNames) {
  for (const std::string bad : {"F8_E4M3", "U32", "f32", "float32", "", "F32 "}) {
    try {
      parse_dtype(bad);
      ADD_FAILURE() << "no exception for '" << bad << "'";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("'" + bad + "'"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("BF16"), std::string::npos) << e.what();
    }
  }
}

TEST(Fp16, DecodeMatchesReferenceForAllPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = fp16_to_float(static_cast<uint16_t>(h));
    const double want = reference_decode(h, 5, 10);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << h;
      EXPECT_EQ(std::signbit(got), (h & 0x8000u) != 0) << std::hex << h;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << h;
      ASSERT_EQ(std::signbit(got), (h & 0x8000u) != 0) << std::hex << h;  // -0 stays -0
    }
  }
}

TEST(Fp16, RoundTripsAllPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t back = float_to_fp16(fp16_to_float(static_cast<uint16_t>(h)));
    if (is_fp16_nan(static_cast<uint16_t>(h))) {
      EXPECT_TRUE(is_fp16_nan(back)) << std::hex << h << " -> " << back;
      EXPECT_EQ(back & 0x8000u, h & 0x8000u) << std::hex << h;
    } else {
      ASSERT_EQ(back, h) << std::hex << h;
    }
  }
}

// Every midpoint between consecutive finite halves (normal and subnormal) ties to the even
// pattern, and one float ulp either side goes to the nearer neighbour.
TEST(Fp16, RoundsToNearestEvenAtEveryMidpoint) {
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const uint16_t lo = static_cast<uint16_t>(sign | h), hi = static_cast<uint16_t>(sign | (h + 1));
      const double a = fp16_to_float(lo), b = fp16_to_float(hi);
      const float mid = static_cast<float>((a + b) / 2);  // 12 significant bits: exact in float
      ASSERT_EQ(static_cast<double>(mid), (a + b) / 2);
      ASSERT_EQ(float_to_fp16(mid), (h % 2 == 0) ? lo : hi) << std::hex << lo;
      ASSERT_EQ(float_to_fp16(std::nextafter(mid, static_cast<float>(a))), lo) << std::hex << lo;
      ASSERT_EQ(float_to_fp16(std::nextafter(mid, static_cast<float>(b))), hi) << std::hex << lo;
    }
  }
}

TEST(Fp16, OverflowUnderflowAndSpecials) {
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_fp16(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7c00);  // tie between 65504 (odd) and 65536 -> inf
  EXPECT_EQ(float_to_fp16(-65520.0f), 0xfc00);
  EXPECT_EQ(float_to_fp16(1e10f), 0x7c00);
  EXPECT_EQ(float_to_fp16(std::numeric_limits<float>::max()), 0x7c00);
  EXPECT_EQ(float_to_fp16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(float_to_fp16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -24)), 0x0001);   // smallest subnormal
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -25)), 0x0000);   // tie to even (zero)
  EXPECT_EQ(float_to_fp16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(float_to_fp16(-std::ldexp(1.0f, -26)), 0x8000);  // -0 keeps its sign
  EXPECT_EQ(float_to_fp16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(float_to_fp16(std::ldexp(1023.5f, -24)), 0x0400);  // rounds up into the normals
  EXPECT_EQ(float_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_fp16(0.1f), 0x2e66);
  // NaNs stay NaN (including a signaling NaN whose payload lies only in the dropped bits).
  for (uint32_t nan_bits : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0xffffffffu}) {
    const uint16_t h = float_to_fp16(float_of(nan_bits));
    EXPECT_TRUE(is_fp16_nan(h)) << std::hex << nan_bits << " -> " << h;
    EXPECT_EQ((h & 0x8000u) != 0, (nan_bits & 0x80000000u) != 0);
  }
}

// Random floats across the half range: the result is at least as close as both neighbours.
TEST(Fp16, RandomFloatsRoundToNearest) {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> exponent(-27.0f, 16.0f);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  for (int i = 0; i < 20000; ++i) {
    float x = std::ldexp(mantissa(rng), static_cast<int>(std::floor(exponent(rng))));
    if (i % 2) x = -x;
    if (std::fabs(x) >= 65520.0f) continue;
    const uint16_t h = float_to_fp16(x);
    const double err = std::fabs(static_cast<double>(fp16_to_float(h)) - x);
    const uint16_t magnitude = h & 0x7fffu;
    if (magnitude > 0) {
      const uint16_t toward_zero = static_cast<uint16_t>(h - 1);
      EXPECT_LE(err, std::fabs(static_cast<double>(fp16_to_float(toward_zero)) - x)) << x;
    }
    if (magnitude < 0x7bff) {
      const uint16_t away = static_cast<uint16_t>(h + 1);
      EXPECT_LE(err, std::fabs(static_cast<double>(fp16_to_float(away)) - x)) << x;
    }
  }
}

TEST(Bf16, DecodeMatchesReferenceForAllPatterns) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float got = bf16_to_float(static_cast<uint16_t>(b));
    const double want = reference_decode(b, 8, 7);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << b;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << std::hex << b;
      ASSERT_EQ(std::signbit(got), (b & 0x8000u) != 0) << std::hex << b;
    }
  }
}

TEST(Bf16, RoundTripsAllPatterns) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t back = float_to_bf16(bf16_to_float(static_cast<uint16_t>(b)));
    if (is_bf16_nan(static_cast<uint16_t>(b))) {
      EXPECT_TRUE(is_bf16_nan(back)) << std::hex << b;
      EXPECT_EQ(back & 0x8000u, b & 0x8000u) << std::hex << b;
    } else {
      ASSERT_EQ(back, b) << std::hex << b;
    }
  }
}

TEST(Bf16, RoundsToNearestEvenAtEveryMidpoint) {
  for (uint32_t b = 0; b < 0x7f7f; ++b) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const uint16_t lo = static_cast<uint16_t>(sign | b), hi = static_cast<uint16_t>(sign | (b + 1));
      const double a = bf16_to_float(lo), c = bf16_to_float(hi);
      const float mid = static_cast<float>((a + c) / 2);  // 9 significant bits: exact
      ASSERT_EQ(static_cast<double>(mid), (a + c) / 2);
      ASSERT_EQ(float_to_bf16(mid), (b % 2 == 0) ? lo : hi) << std::hex << lo;
      ASSERT_EQ(float_to_bf16(std::nextafter(mid, static_cast<float>(a))), lo) << std::hex << lo;
      ASSERT_EQ(float_to_bf16(std::nextafter(mid, static_cast<float>(c))), hi) << std::hex << lo;
    }
  }
}

TEST(Bf16, OverflowAndSpecials) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(float_of(0x7f7f7fffu)), 0x7f7f);  // just below the top midpoint
  EXPECT_EQ(float_to_bf16(float_of(0x7f7f8000u)), 0x7f80);  // tie, 0x7f7f odd -> inf
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(float_to_bf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(float_to_bf16(float_of(0x00008000u)), 0x0000);  // subnormal tie to even
  EXPECT_EQ(float_to_bf16(float_of(0x00018000u)), 0x0002);
  for (uint32_t nan_bits : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
    const uint16_t b = float_to_bf16(float_of(nan_bits));
    EXPECT_TRUE(is_bf16_nan(b)) << std::hex << nan_bits << " -> " << b;
    EXPECT_EQ((b & 0x8000u) != 0, (nan_bits & 0x80000000u) != 0);
  }
  EXPECT_EQ(bits_of(bf16_to_float(0xc0a0)), 0xc0a00000u);  // -5
}

}  // namespace
}  // namespace resq
