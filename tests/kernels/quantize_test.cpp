// Tests of the CPU quantizers (kernels/cpu/quantize.h): hand-computed activation and weight
// examples, quantizer error bounds, fast == reference bit for bit on every ISA, error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/kernel_test_util.h"
#include "cpu/quantize.h"
#include "resq/common/error.h"

namespace {

using resq::cpu::CpuKernel;
using resq::format::packed4_row_bytes;

// Runs the activation quantizer (reference or a given fast path) into fresh buffers.
struct QuantOut {
  std::vector<uint8_t> xq4, xq8;
  std::vector<float> sx4, sx8;
  std::vector<int32_t> zx4, zx8;
};
QuantOut run_quant(const std::vector<float>& x, int64_t M, int64_t K4, int64_t K8, float c4,
                   float c8, bool reference, CpuKernel kernel = CpuKernel::kAuto) {
  QuantOut o;
  // Fill outputs with garbage so that a value the quantizer forgets to write shows up.
  o.xq4.assign(M * packed4_row_bytes(K4), 0xA5);
  o.xq8.assign(M * K8, 0xA5);
  o.sx4.assign(M, -7.0f);
  o.sx8.assign(M, -7.0f);
  o.zx4.assign(M, -7);
  o.zx8.assign(M, -7);
  if (reference) {
    resq::cpu::quantize_activations_reference(x.data(), M, K4, K8, c4, c8, o.xq4.data(),
                                              o.xq8.data(), o.sx4.data(), o.zx4.data(),
                                              o.sx8.data(), o.zx8.data());
  } else {
    resq::cpu::quantize_activations(x.data(), M, K4, K8, c4, c8, o.xq4.data(), o.xq8.data(),
                                    o.sx4.data(), o.zx4.data(), o.sx8.data(), o.zx8.data(), kernel);
  }
  return o;
}

class QuantizeIsa : public resq::test::IsaTest {};

TEST_P(QuantizeIsa, HandComputedExample) {
  // Token 0, 4-bit part x = [-1, 0.5, 2, 0.25]: min -1, max 2, s = 3/15 = 0.2, z = round(5) = 5.
  //   -1/0.2 = -5 -> 0;  0.5/0.2 = 2.5 -> 2 (half to even) -> 7;  2/0.2 = 10 -> 15;
  //   0.25/0.2 = 1.25 -> 1 -> 6.  Packed: [0 | 7<<4, 15 | 6<<4] = [0x70, 0x6F].
  // Token 0, 8-bit part x = [-0.5, 1, 0]: s = 1.5/255, z = round(0.5/s) = 85;
  //   q = [-85 + 85, 170 + 85, 0 + 85] = [0, 255, 85].
  // Token 1, 4-bit part [1, 2, 3, 0]: min raised to 0, s = 3/15, z = 0, q = [5, 10, 15, 0]
  //   -> [0xA5, 0x0F]; 8-bit part all zero: s = 1, z = 0, q = 0.
  const std::vector<float> x = {-1.0f, 0.5f, 2.0f, 0.25f, -0.5f, 1.0f, 0.0f,  //
                                1.0f,  2.0f, 3.0f, 0.0f,  0.0f,  0.0f, 0.0f};
  for (bool reference : {true, false}) {
    const QuantOut o = run_quant(x, 2, 4, 3, 1.0f, 1.0f, reference, GetParam());
    EXPECT_EQ(o.xq4, (std::vector<uint8_t>{0x70, 0x6F, 0xA5, 0x0F}));
    EXPECT_EQ(o.xq8, (std::vector<uint8_t>{0, 255, 85, 0, 0, 0}));
    EXPECT_EQ(o.sx4[0], 3.0f / 15.0f);
    EXPECT_EQ(o.zx4[0], 5);
    EXPECT_EQ(o.sx8[0], 1.5f / 255.0f);
    EXPECT_EQ(o.zx8[0], 85);
    EXPECT_EQ(o.sx4[1], 3.0f / 15.0f);
    EXPECT_EQ(o.zx4[1], 0);
    EXPECT_EQ(o.sx8[1], 1.0f);
    EXPECT_EQ(o.zx8[1], 0);
  }
}

TEST_P(QuantizeIsa, ClipRatioAndOddK4PadNibble) {
  // 4-bit part x = [-2, 4, 1] with clip 0.5: lo = -1, hi = 2, s = 0.2, z = 5;
  //   -2/0.2 = -10 -> -5 -> 0;  4/0.2 = 20 -> 25 -> 15;  1/0.2 = 5 -> 10. Bytes [0xF0, 0x0A]
  // (odd K4: the pad nibble is 0 although the quantized zero point is 5).
  const std::vector<float> x = {-2.0f, 4.0f, 1.0f};
  for (bool reference : {true, false}) {
    const QuantOut o = run_quant(x, 1, 3, 0, 0.5f, 1.0f, reference, GetParam());
    EXPECT_EQ(o.xq4, (std::vector<uint8_t>{0xF0, 0x0A}));
    EXPECT_EQ(o.zx4[0], 5);
    EXPECT_EQ(o.sx8[0], 1.0f) << "an empty part gets s = 1";
    EXPECT_EQ(o.zx8[0], 0);
  }
}

TEST_P(QuantizeIsa, AllZeroRowIsExact) {
  const int64_t K4 = 37, K8 = 21;
  const std::vector<float> x(3 * (K4 + K8), 0.0f);
  const QuantOut o = run_quant(x, 3, K4, K8, 1.0f, 1.0f, false, GetParam());
  for (int m = 0; m < 3; ++m) {
    EXPECT_EQ(o.sx4[m], 1.0f);
    EXPECT_EQ(o.zx4[m], 0);
    EXPECT_EQ(o.sx8[m], 1.0f);
    EXPECT_EQ(o.zx8[m], 0);
  }
  for (uint8_t b : o.xq4) EXPECT_EQ(b, 0);
  for (uint8_t b : o.xq8) EXPECT_EQ(b, 0);
}

// Random rows of several kinds: mixed sign, positive only, negative only, one outlier, tiny.
std::vector<float> random_rows(int64_t M, int64_t K, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(M * K);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) {
      float v = nd(rng);
      switch (m % 5) {
        case 1: v = std::fabs(v); break;
        case 2: v = -std::fabs(v) * 3.0f; break;
        case 3: v = (k == 5 % K) ? 40.0f : v; break;
        case 4: v *= 1e-20f; break;
        default: break;
      }
      x[m * K + k] = v;
    }
  }
  return x;
}

TEST_P(QuantizeIsa, FastEqualsReferenceBitExactOnRaggedShapes) {
  uint32_t seed = 7;
  for (int64_t M : {1, 2, 5, 13}) {
    for (int64_t K4 : {0, 1, 2, 15, 16, 17, 63, 130}) {
      for (int64_t K8 : {0, 1, 7, 16, 33, 72}) {
        for (float clip : {1.0f, 0.9f}) {
          const auto x = random_rows(M, K4 + K8, seed++);
          const QuantOut r = run_quant(x, M, K4, K8, clip, clip * 0.95f, true);
          const QuantOut f = run_quant(x, M, K4, K8, clip, clip * 0.95f, false, GetParam());
          SCOPED_TRACE("M=" + std::to_string(M) + " K4=" + std::to_string(K4) +
                       " K8=" + std::to_string(K8) + " clip=" + std::to_string(clip));
          EXPECT_EQ(f.xq4, r.xq4);
          EXPECT_EQ(f.xq8, r.xq8);
          EXPECT_EQ(f.sx4, r.sx4);
          EXPECT_EQ(f.zx4, r.zx4);
          EXPECT_EQ(f.sx8, r.sx8);
          EXPECT_EQ(f.zx8, r.zx8);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, QuantizeIsa,
                         ::testing::Values(CpuKernel::kReference, CpuKernel::kAvx2,
                                           CpuKernel::kVnni),
                         [](const ::testing::TestParamInfo<CpuKernel>& info) {
                           return std::string(resq::cpu::cpu_kernel_name(info.param));
                         });

TEST(QuantizeActivations, DequantizedValuesAreWithinHalfAStepOfClippedInput) {
  const int64_t M = 10, K4 = 45, K8 = 19, K = K4 + K8;
  for (float clip : {1.0f, 0.8f}) {
    const auto x = random_rows(M, K, 99);
    const QuantOut o = run_quant(x, M, K4, K8, clip, clip, true);
    for (int64_t m = 0; m < M; ++m) {
      for (int part = 0; part < 2; ++part) {
        const int64_t k0 = part == 0 ? 0 : K4, kn = part == 0 ? K4 : K8;
        const int qmax = part == 0 ? 15 : 255;
        const double s = part == 0 ? o.sx4[m] : o.sx8[m];
        const int z = part == 0 ? o.zx4[m] : o.zx8[m];
        double lo = 0.0, hi = 0.0;
        for (int64_t k = 0; k < kn; ++k) {
          lo = std::min(lo, static_cast<double>(x[m * K + k0 + k]));
          hi = std::max(hi, static_cast<double>(x[m * K + k0 + k]));
        }
        lo *= clip;
        hi *= clip;
        EXPECT_NEAR(s, (hi - lo) / qmax, 1e-6 * (hi - lo) / qmax) << "m=" << m << " part=" << part;
        EXPECT_GE(z, 0);
        EXPECT_LE(z, qmax);
        EXPECT_NEAR(z, -lo / s, 0.5 + 1e-4);
        for (int64_t k = 0; k < kn; ++k) {
          const int q = part == 0 ? resq::format::uint4_get(&o.xq4[m * packed4_row_bytes(K4)], k)
                                  : o.xq8[m * K8 + k];
          const double xc = std::min(std::max(static_cast<double>(x[m * K + k0 + k]), lo), hi);
          const double xhat = s * (q - z);
          EXPECT_LE(std::fabs(xhat - xc), s * (0.5 + 1e-4))
              << "m=" << m << " part=" << part << " k=" << k << " x=" << x[m * K + k0 + k];
        }
      }
    }
  }
}

TEST(QuantizeActivations, OwningOverloadMatchesPointerVersion) {
  const auto x = random_rows(4, 30, 5);
  const auto q = resq::cpu::quantize_activations(x.data(), 4, 22, 8, 1.0f, 1.0f);
  const QuantOut r = run_quant(x, 4, 22, 8, 1.0f, 1.0f, true);
  EXPECT_EQ(q.xq4, r.xq4);
  EXPECT_EQ(q.xq8, r.xq8);
  EXPECT_EQ(q.sx4, r.sx4);
  EXPECT_EQ(q.zx8, r.zx8);
  const auto v = q.view();
  EXPECT_EQ(v.M, 4);
  EXPECT_EQ(v.K4, 22);
  EXPECT_EQ(v.xq4, q.xq4.data());
}

TEST(QuantizeActivations, ErrorPaths) {
  std::vector<float> x(8, 1.0f);
  std::vector<uint8_t> b(8);
  std::vector<float> s(2);
  std::vector<int32_t> z(2);
  using resq::cpu::quantize_activations_reference;
  EXPECT_THROW(quantize_activations_reference(x.data(), -1, 4, 4, 1, 1, b.data(), b.data(),
                                              s.data(), z.data(), s.data(), z.data()),
               resq::ShapeError);
  EXPECT_THROW(quantize_activations_reference(x.data(), 1, -4, 4, 1, 1, b.data(), b.data(),
                                              s.data(), z.data(), s.data(), z.data()),
               resq::ShapeError);
  EXPECT_THROW(quantize_activations_reference(x.data(), 1, 4, 4, 1, 1, nullptr, b.data(), s.data(),
                                              z.data(), s.data(), z.data()),
               resq::ShapeError);
  EXPECT_THROW(quantize_activations_reference(nullptr, 1, 4, 4, 1, 1, b.data(), b.data(), s.data(),
                                              z.data(), s.data(), z.data()),
               resq::ShapeError);
  EXPECT_THROW(resq::cpu::quantize_activations(x.data(), 1, 4, 4, 1, 1, b.data(), b.data(),
                                               s.data(), z.data(), nullptr, z.data()),
               resq::ShapeError);
  EXPECT_THROW(quantize_activations_reference(x.data(), 1, 4, 4, 0.0f, 1, b.data(), b.data(),
                                              s.data(), z.data(), s.data(), z.data()),
               resq::ConfigError);
  EXPECT_THROW(resq::cpu::quantize_activations(x.data(), 1, 4, 4, 1, 1.5f, b.data(), b.data(),
                                               s.data(), z.data(), s.data(), z.data()),
               resq::ConfigError);
  EXPECT_THROW(quantize_activations_reference(x.data(), 1, resq::format::kMaxPartDim + 1, 0, 1, 1,
                                              b.data(), b.data(), s.data(), z.data(), s.data(),
                                              z.data()),
               resq::ShapeError);
  // An empty 8-bit part needs no 8-bit pointers.
  EXPECT_NO_THROW(quantize_activations_reference(x.data(), 2, 4, 0, 1, 1, b.data(), nullptr,
                                                 s.data(), z.data(), nullptr, nullptr));
}

TEST(QuantizeWeights, HandComputedExample) {
  // N = 1, K4 = 4, K8 = 3. 4-bit part [0.7, -0.3, 0.1, -0.7]: s4 = 0.7/7 = 0.1,
  //   q4 = [7, -3, 1, -7]. 8-bit part [1.27, -0.5, 0]: s8 = 1.27/127 = 0.01, q8 = [127, -50, 0].
  const std::vector<float> w = {0.7f, -0.3f, 0.1f, -0.7f, 1.27f, -0.5f, 0.0f};
  std::vector<int8_t> q(7);
  float s4 = 0, s8 = 0;
  resq::cpu::quantize_weights_rtn_reference(w.data(), 1, 4, 3, 1.0f, 1.0f, q.data(), &s4, &s8);
  EXPECT_EQ(q, (std::vector<int8_t>{7, -3, 1, -7, 127, -50, 0}));
  EXPECT_FLOAT_EQ(s4, 0.1f);
  EXPECT_FLOAT_EQ(s8, 0.01f);
}

TEST(QuantizeWeights, ClipClampsToTheIntRangeAndZeroRowsGetUnitScale) {
  // Clip 0.5 on [1, -1, 0.5]: s4 = 0.5/7; 1/s4 = 14 -> 7, -1/s4 = -14 -> -8 (the extra negative
  // code), 0.5/s4 = 7 -> 7. Row 1 is all zero: s = 1, q = 0.
  const std::vector<float> w = {1.0f, -1.0f, 0.5f, 0.0f, 0.0f, 0.0f};
  std::vector<int8_t> q(6, 99);
  float s4[2], s8[2];
  resq::cpu::quantize_weights_rtn_reference(w.data(), 2, 3, 0, 0.5f, 1.0f, q.data(), s4, s8);
  EXPECT_EQ(q, (std::vector<int8_t>{7, -8, 7, 0, 0, 0}));
  EXPECT_FLOAT_EQ(s4[0], 0.5f / 7.0f);
  EXPECT_EQ(s4[1], 1.0f);
  EXPECT_EQ(s8[0], 1.0f);
}

TEST(QuantizeWeights, RoundTripErrorIsAtMostHalfAStep) {
  const int64_t N = 9, K4 = 33, K8 = 10, K = K4 + K8;
  std::mt19937 rng(21);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> w(N * K);
  for (auto& v : w) v = nd(rng);
  std::vector<int8_t> q(N * K);
  std::vector<float> s4(N), s8(N);
  resq::cpu::quantize_weights_rtn_reference(w.data(), N, K4, K8, 1.0f, 1.0f, q.data(), s4.data(),
                                            s8.data());
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const double s = k < K4 ? s4[n] : s8[n];
      EXPECT_LE(std::fabs(s * q[n * K + k] - w[n * K + k]), s * (0.5 + 1e-5));
      EXPECT_GE(q[n * K + k], k < K4 ? -7 : -127) << "no clipping without a clip ratio";
      EXPECT_LE(q[n * K + k], k < K4 ? 7 : 127);
    }
  }
}

}  // namespace
