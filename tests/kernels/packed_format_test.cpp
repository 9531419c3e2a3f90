// Tests of the packed 4/8-bit layout header (resq/format/packed.h): nibble order, sign extension,
// the reference packers and row sums, and the scalar activation / epilogue formulas.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "resq/format/packed.h"

namespace {

using namespace resq::format;

TEST(PackedFormat, ConstantsAndRowBytes) {
  EXPECT_EQ(kFormatVersion, 1);
  EXPECT_EQ(kNibbleOrder, NibbleOrder::kLowNibbleFirst);
  EXPECT_EQ(packed4_row_bytes(0), 0);
  EXPECT_EQ(packed4_row_bytes(1), 1);
  EXPECT_EQ(packed4_row_bytes(2), 1);
  EXPECT_EQ(packed4_row_bytes(7), 4);
  EXPECT_EQ(packed4_row_bytes(130), 65);
  PackedLinearDims d{3, 5, 2};
  EXPECT_EQ(d.K(), 7);
}

TEST(PackedFormat, NibbleOrderAndSignExtensionOnHandWrittenBytes) {
  // Byte 0x8F: low nibble 0xF (column 0) = -1 signed / 15 unsigned; high nibble 0x8 (column 1)
  // = -8 signed / 8 unsigned. Byte 0x70: column 2 = 0, column 3 = 7.
  // Byte 0x19: column 4 = 9 -> -7 signed, column 5 = 1.
  const uint8_t row[3] = {0x8F, 0x70, 0x19};
  const int expect_signed[6] = {-1, -8, 0, 7, -7, 1};
  const int expect_unsigned[6] = {15, 8, 0, 7, 9, 1};
  for (int k = 0; k < 6; ++k) {
    EXPECT_EQ(int4_get(row, k), expect_signed[k]) << "k = " << k;
    EXPECT_EQ(uint4_get(row, k), expect_unsigned[k]) << "k = " << k;
  }
}

TEST(PackedFormat, SetKeepsTheOtherNibble) {
  uint8_t row[2] = {0xAB, 0xCD};
  int4_set(row, 0, -2);  // low nibble of byte 0 becomes 0xE
  EXPECT_EQ(row[0], 0xAE);
  int4_set(row, 1, 3);  // high nibble of byte 0 becomes 0x3
  EXPECT_EQ(row[0], 0x3E);
  uint4_set(row, 3, 15);  // high nibble of byte 1
  EXPECT_EQ(row[1], 0xFD);
  uint4_set(row, 2, 0);
  EXPECT_EQ(row[1], 0xF0);
}

TEST(PackedFormat, PackWeightsOnHandExample) {
  // N = 2, K4 = 3 (odd: pad nibble), K8 = 2.
  const int8_t q[2 * 5] = {
      -8, 7, -1, /*8-bit*/ -128, 127,  //
      1, -2, 3, /*8-bit*/ 5, -6,
  };
  std::vector<uint8_t> w4(2 * 2, 0xEE);  // garbage that pack must overwrite
  std::vector<int8_t> w8(2 * 2);
  pack_weights_reference(q, 2, 3, 2, w4.data(), w8.data());
  // Row 0: byte0 = low -8 (0x8) | high 7 (0x7) = 0x78, byte1 = low -1 (0xF) | pad 0 = 0x0F.
  // Row 1: byte0 = low 1 | high -2 (0xE) = 0xE1, byte1 = low 3 = 0x03.
  EXPECT_EQ(w4[0], 0x78);
  EXPECT_EQ(w4[1], 0x0F);
  EXPECT_EQ(w4[2], 0xE1);
  EXPECT_EQ(w4[3], 0x03);
  EXPECT_EQ(w8[0], -128);
  EXPECT_EQ(w8[1], 127);
  EXPECT_EQ(w8[2], 5);
  EXPECT_EQ(w8[3], -6);
  int32_t rs4[2], rs8[2];
  weight_row_sums_reference(q, 2, 3, 2, rs4, rs8);
  EXPECT_EQ(rs4[0], -2);
  EXPECT_EQ(rs4[1], 2);
  EXPECT_EQ(rs8[0], -1);
  EXPECT_EQ(rs8[1], -1);
}

TEST(PackedFormat, PackUnpackRoundTripAndRowSumsOnRaggedShapes) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> d4(-8, 7), d8(-128, 127);
  for (int64_t N : {1, 3, 17}) {
    for (int64_t K4 : {0, 1, 2, 7, 64, 129}) {
      for (int64_t K8 : {0, 1, 9, 40}) {
        const int64_t K = K4 + K8;
        std::vector<int8_t> q(N * K);
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t k = 0; k < K; ++k) {
            q[n * K + k] = static_cast<int8_t>(k < K4 ? d4(rng) : d8(rng));
          }
        }
        std::vector<uint8_t> w4(N * packed4_row_bytes(K4));
        std::vector<int8_t> w8(N * K8);
        pack_weights_reference(q.data(), N, K4, K8, w4.data(), w8.data());
        if (K4 % 2 == 1) {
          for (int64_t n = 0; n < N; ++n) {
            EXPECT_EQ(w4[n * packed4_row_bytes(K4) + K4 / 2] >> 4, 0) << "pad nibble must be 0";
          }
        }
        std::vector<int8_t> back(N * K, 99);
        unpack_weights_reference(w4.data(), w8.data(), N, K4, K8, back.data());
        EXPECT_EQ(back, q) << "N=" << N << " K4=" << K4 << " K8=" << K8;
        std::vector<int32_t> rs4(N), rs8(N), prs4(N), prs8(N);
        weight_row_sums_reference(q.data(), N, K4, K8, rs4.data(), rs8.data());
        packed_weight_row_sums_reference(w4.data(), w8.data(), N, K4, K8, prs4.data(), prs8.data());
        for (int64_t n = 0; n < N; ++n) {
          int64_t s4 = 0, s8 = 0;  // independent sums straight from q
          for (int64_t k = 0; k < K4; ++k) s4 += q[n * K + k];
          for (int64_t k = K4; k < K; ++k) s8 += q[n * K + k];
          EXPECT_EQ(rs4[n], s4);
          EXPECT_EQ(rs8[n], s8);
          EXPECT_EQ(prs4[n], s4);
          EXPECT_EQ(prs8[n], s8);
        }
      }
    }
  }
}

TEST(PackedFormat, ActivationScaleZeroHandExamples) {
  float s = 0.0f;
  int32_t z = -1;
  // min -1, max 2, 4 bits: s = 3/15 = 0.2, z = round(1/0.2) = 5.
  activation_scale_zero(-1.0f, 2.0f, 1.0f, 15, &s, &z);
  EXPECT_EQ(s, 3.0f / 15.0f);
  EXPECT_EQ(z, 5);
  // Positive-only data: min is raised to 0, so z = 0 and s = 3/255.
  activation_scale_zero(1.0f, 3.0f, 1.0f, 255, &s, &z);
  EXPECT_EQ(s, 3.0f / 255.0f);
  EXPECT_EQ(z, 0);
  // Negative-only data: max is lowered to 0, so z = qmax.
  activation_scale_zero(-3.0f, -1.0f, 1.0f, 15, &s, &z);
  EXPECT_EQ(s, 3.0f / 15.0f);
  EXPECT_EQ(z, 15);
  // Clip 0.5 halves both ends: lo = -1, hi = 2 as in the first case.
  activation_scale_zero(-2.0f, 4.0f, 0.5f, 15, &s, &z);
  EXPECT_EQ(s, 3.0f / 15.0f);
  EXPECT_EQ(z, 5);
  // All zero: s = 1, z = 0 (no division by zero).
  activation_scale_zero(0.0f, 0.0f, 1.0f, 255, &s, &z);
  EXPECT_EQ(s, 1.0f);
  EXPECT_EQ(z, 0);
}

TEST(PackedFormat, QuantizeActivationValueRoundsHalfToEvenAndClamps) {
  // s = 1, z = 4: x = 2.5 -> round 2 (ties to even; std::round would give 3) -> 6.
  EXPECT_EQ(quantize_activation_value(2.5f, 1.0f, 4, 15), 6);
  EXPECT_EQ(quantize_activation_value(3.5f, 1.0f, 4, 15), 8);
  EXPECT_EQ(quantize_activation_value(-2.5f, 1.0f, 4, 15), 2);
  EXPECT_EQ(quantize_activation_value(-100.0f, 1.0f, 4, 15), 0);
  EXPECT_EQ(quantize_activation_value(100.0f, 1.0f, 4, 15), 15);
  EXPECT_EQ(quantize_activation_value(300.0f, 2.0f, 0, 255), 150);
  EXPECT_EQ(quantize_activation_value(1000.0f, 2.0f, 0, 255), 255);
}

TEST(PackedFormat, EpilogueValueHandExample) {
  // acc4 = 100, zx4 = 3, rs4 = 10 -> d4 = 70; sx4*sw4 = 0.5*0.25 = 0.125 -> t4 = 8.75.
  // acc8 = -40, zx8 = 2, rs8 = -5 -> d8 = -30; sx8*sw8 = 0.5*2 = 1 -> t8 = -30. y = -21.25 + 1.5.
  const auto y = [](bool has4, bool has8, bool has_bias) {
    return epilogue_value(has4, 100, 0.5f, 3, 0.25f, 10, has8, -40, 0.5f, 2, 2.0f, -5, has_bias,
                          1.5f);
  };
  EXPECT_EQ(y(true, true, true), -19.75f);
  EXPECT_EQ(y(true, true, false), -21.25f);
  // Empty parts drop their term: only t8, only t4, only the bias.
  EXPECT_EQ(y(false, true, false), -30.0f);
  EXPECT_EQ(y(true, false, false), 8.75f);
  EXPECT_EQ(y(false, false, true), 1.5f);
  // ... even when the dropped part's inputs are garbage.
  EXPECT_EQ(epilogue_value(false, 7, 1e30f, 9, 1e30f, 9, true, -40, 0.5f, 2, 2.0f, -5, false, 0),
            -30.0f);
  // The largest accumulators the format allows stay exact: K8 = 65536, xq - zx = 255, q = -128.
  const int32_t acc8 = 65536 * 255 * -128;
  EXPECT_EQ(epilogue_value(false, 0, 0, 0, 0, 0, true, acc8, 1.0f, 0, 1.0f, 0, false, 0.0f),
            static_cast<float>(acc8));
}

}  // namespace
