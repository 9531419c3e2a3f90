// Host tests of the row dequantization shared by kernels/cuda/kv_dequant.cu and its reference
// (gpu_layout.h: dequantize_activation_element / dequantize_activations_reference): x̂ = s · (q − z)
// on GPU-layout rows, bit for bit against an independent unpacking of the CPU quantizer's dense
// rows, with strided output rows left untouched past K, and the round trip within half a step.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/quantize.h"
#include "cuda/gpu_layout.h"

namespace {

using namespace resq::gpu;  // NOLINT

TEST(RowDequantReference, EqualsIndependentUnpackOfCpuQuantizerRows) {
  struct C { int64_t M, K4, K8; float clip; };
  const C cases[] = {{29, 112, 16, 1.0f}, {7, 13, 3, 0.9f}, {5, 0, 8, 1.0f},
                     {6, 7, 0, 1.0f},     {3, 128, 128, 0.95f}, {1, 1, 1, 1.0f}};
  uint32_t seed = 11;
  for (const C& c : cases) {
    const int64_t K = c.K4 + c.K8, ldo = K + 3;
    std::mt19937 rng(seed++);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    std::vector<float> x(static_cast<size_t>(c.M * K));
    for (auto& v : x) v = normal(rng);
    if (c.M > 2) std::fill(x.begin(), x.begin() + K, 0.0f);  // an all-zero row: s = 1, z = 0
    const resq::cpu::QuantizedActivations q =
        resq::cpu::quantize_activations(x.data(), c.M, c.K4, c.K8, c.clip, c.clip);
    // GPU layout with garbage past each row: the dequantization must not read it.
    const GpuActivationsHost g = restride_activations_for_gpu(q.view(), 0, 0, 0xAB);
    std::vector<float> out(static_cast<size_t>(c.M * ldo), -7.0f);
    dequantize_activations_reference(g.host_view(), out.data(), ldo);
    const int64_t rb4 = (c.K4 + 1) / 2;
    for (int64_t m = 0; m < c.M; ++m) {
      for (int64_t k = 0; k < K; ++k) {
        float want;
        float step;
        if (k < c.K4) {
          const int nib = (q.xq4[static_cast<size_t>(m * rb4 + k / 2)] >> (4 * (k % 2))) & 0xF;
          want = q.sx4[m] * static_cast<float>(nib - q.zx4[m]);
          step = q.sx4[m];
        } else {
          const int v = q.xq8[static_cast<size_t>(m * c.K8 + (k - c.K4))];
          want = q.sx8[m] * static_cast<float>(v - q.zx8[m]);
          step = q.sx8[m];
        }
        const float got = out[static_cast<size_t>(m * ldo + k)];
        ASSERT_EQ(std::memcmp(&got, &want, 4), 0) << "row " << m << " col " << k << ": " << got << " vs " << want;
        if (c.clip == 1.0f) {
          // Without clipping every value lies in the grid's range: error at most half a step, plus
          // fp32 rounding of the division and the product (|x| <= ~10 here).
          EXPECT_LE(std::fabs(got - x[static_cast<size_t>(m * K + k)]), 0.5f * step * 1.0001f + 4e-6f)
              << "row " << m << " col " << k;
        }
      }
      for (int64_t k = K; k < ldo; ++k) EXPECT_EQ(out[static_cast<size_t>(m * ldo + k)], -7.0f) << "padding written";
    }
  }
}

TEST(RowDequantReference, RejectsTooSmallOutputStride) {
  GpuActivationsView v;
  v.M = 2;
  v.K4 = 4;
  v.K8 = 4;
  std::vector<float> out(16);
  EXPECT_THROW(dequantize_activations_reference(v, out.data(), 7), resq::ShapeError);
}

}  // namespace
