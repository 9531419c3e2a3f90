// Host tests of the sm_90a prefill GEMM's layout and epilogue math (cuda/wgmma_gemm_layout.h): the
// 4-bit widening against format's nibble readers, the workspace regions, and an emulation of the
// whole path (widen X4 and W4 -> int8 rows, one int32 dot-product plane per part over the padded K
// the TMA GEMM sees, with garbage past each activation row, then fold_element) against
// resq::cpu::gemm_w4a4_w8a8_reference bit for bit, fp32 and bf16, on random ragged shapes. No GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/quantize.h"
#include "cuda/gpu_layout.h"
#include "cuda/wgmma_gemm_layout.h"
#include "kernels/gemm_problem.h"
#include "resq/format/packed.h"

namespace {

using namespace resq::gpu;  // NOLINT

TEST(WgmmaLayout, WidenedElementsAreTheNibblesZeroPaddedTo16) {
  std::mt19937 rng(7);
  for (int64_t K4 : {1, 2, 3, 15, 16, 17, 31, 77, 128, 4099}) {
    const int64_t rb = part4_row_bytes(K4), L = widened4_row_stride(K4);
    ASSERT_EQ(L % 16, 0);
    ASSERT_GE(L, K4);
    ASSERT_LT(L - K4, 16);
    std::vector<uint8_t> row(static_cast<size_t>(rb));
    for (auto& b : row) b = static_cast<uint8_t>(rng());
    for (int64_t k0 = 0; k0 < L; k0 += 4) {
      for (bool sgn : {false, true}) {
        const uint32_t word = widen4_word(row.data(), K4, k0, sgn);
        for (int e = 0; e < 4; ++e) {
          const int64_t k = k0 + e;
          const uint8_t got = static_cast<uint8_t>(word >> (8 * e));
          if (k >= K4) {
            EXPECT_EQ(got, 0) << "K4=" << K4 << " k=" << k;  // also the odd K4's pad nibble
          } else if (sgn) {
            EXPECT_EQ(static_cast<int8_t>(got), resq::format::int4_get(row.data(), k)) << "K4=" << K4 << " k=" << k;
          } else {
            EXPECT_EQ(got, resq::format::uint4_get(row.data(), k)) << "K4=" << K4 << " k=" << k;
          }
        }
      }
    }
  }
}

TEST(WgmmaLayout, WorkspaceRegionsAreAlignedAndDisjoint) {
  for (int64_t M : {1, 17, 2048}) {
    for (int64_t N : {1, 5, 4096, 28673}) {
      for (int64_t K4 : {0, 1, 3584}) {
        for (int64_t K8 : {0, 7, 512}) {
          const WgmmaWorkspace w = wgmma_workspace(M, N, K4, K8);
          const int64_t plane = M * acc_plane_stride(N) * 4;
          EXPECT_EQ(w.acc4_offset % 256, 0);
          EXPECT_EQ(w.acc8_offset % 256, 0);
          if (K4 > 0) {
            EXPECT_GE(w.acc4_offset, M * widened4_row_stride(K4));
            EXPECT_GE(w.acc8_offset, w.acc4_offset + plane);
          }
          if (K8 > 0) EXPECT_GE(w.bytes, w.acc8_offset + plane);
          EXPECT_EQ(acc_plane_stride(N) % 4, 0);
          EXPECT_LT(acc_plane_stride(N) - N, 4);
        }
      }
    }
  }
}

// ------------------------------------------------------------------ emulation vs CPU reference

using Case = resq::test::GemmCase;

void run_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE(resq::test::describe(c));
  std::mt19937 rng(seed);
  const resq::test::GemmReference ref = resq::test::random_gemm_reference(c, rng, 17, 20.0f, 1.0f, 0.9f);
  const std::vector<float>& want = ref.want;
  const std::vector<uint16_t>& want16 = ref.want16;
  const resq::format::PackedLinear g = resq::format::restride(ref.lin.view(), kGpuRowAlign);
  const GpuLinearView gw = gpu_linear_view(g.view());
  GpuActivationsHost gx = resq::test::activations_with_garbage(ref.xq, rng);
  const GpuActivationsView xv = gx.host_view();

  // The device path, step by step: widen (rows past N of the weights are zero: Np rows).
  const int64_t Np = acc_plane_stride(c.N), L4 = widened4_row_stride(c.K4), K8p = resq::gpu::round_up(c.K8, 16);
  std::vector<uint8_t> x4w(static_cast<size_t>(c.M * L4)), w4w(static_cast<size_t>(Np * L4), 0);
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t k0 = 0; k0 < L4; k0 += 4) {
      const uint32_t v = widen4_word(xv.xq4 + m * xv.ldx4, c.K4, k0, false);
      std::memcpy(&x4w[static_cast<size_t>(m * L4 + k0)], &v, 4);
    }
  }
  for (int64_t n = 0; n < c.N; ++n) {
    for (int64_t k0 = 0; k0 < L4; k0 += 4) {
      const uint32_t v = widen4_word(gw.w4 + n * gw.ldw4, c.K4, k0, true);
      std::memcpy(&w4w[static_cast<size_t>(n * L4 + k0)], &v, 4);
    }
  }
  // The wgmma GEMMs: u8 x s8 dot products over the padded K, int32 wrap-around like the tensor core.
  const int64_t ldacc = Np;
  std::vector<int32_t> acc4(static_cast<size_t>(c.M * ldacc), 0x5A5A5A5A), acc8(acc4);
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < Np; ++n) {
      uint32_t s4 = 0, s8 = 0;
      for (int64_t k = 0; k < L4; ++k) {
        s4 += static_cast<uint32_t>(x4w[static_cast<size_t>(m * L4 + k)]) *
              static_cast<uint32_t>(static_cast<int32_t>(static_cast<int8_t>(w4w[static_cast<size_t>(n * L4 + k)])));
      }
      for (int64_t k = 0; k < K8p; ++k) {
        const int32_t wv = n < c.N ? gw.w8[n * gw.ldw8 + k] : 0;
        s8 += static_cast<uint32_t>(xv.xq8 ? xv.xq8[m * xv.ldx8 + k] : 0) * static_cast<uint32_t>(wv);
      }
      acc4[static_cast<size_t>(m * ldacc + n)] = static_cast<int32_t>(s4);
      acc8[static_cast<size_t>(m * ldacc + n)] = static_cast<int32_t>(s8);
    }
  }
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < c.N; ++n) {
      const float v = fold_element(xv, gw, c.K4 ? acc4.data() : nullptr, c.K8 ? acc8.data() : nullptr, ldacc, m, n);
      uint32_t bits, wbits;
      std::memcpy(&bits, &v, 4);
      std::memcpy(&wbits, &want[static_cast<size_t>(m * c.N + n)], 4);
      ASSERT_EQ(bits, wbits) << "fp32 at m=" << m << " n=" << n;
      ASSERT_EQ(f32_bits_to_bf16(bits), want16[static_cast<size_t>(m * c.N + n)]) << "bf16 at m=" << m << " n=" << n;
    }
  }
}

TEST(WgmmaEmulation, EqualsCpuReferenceBitForBitOnRaggedShapes) {
  const Case cases[] = {{1, 1, 1, 0, false},   {3, 5, 0, 1, true},     {17, 7, 33, 19, true}, {20, 130, 127, 64, false},
                        {33, 9, 16, 16, true}, {129, 12, 200, 0, true}, {5, 66, 0, 300, true}, {64, 37, 1, 255, false},
                        {18, 131, 513, 77, true}};
  uint32_t seed = 1;
  for (const Case& c : cases) run_case(c, seed++);
}

}  // namespace
