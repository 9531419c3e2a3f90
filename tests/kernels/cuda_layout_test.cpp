// Host tests of the CUDA kernels' index math (cuda/mixed_gemm_layout.h, gpu_layout.h,
// act_transform.h) and of the CPU emulation of the mixed GEMM (tests/kernels/mixed_gemm_emulation.h): the
// emulated kernel decomposition (swizzled shared memory, cp.async zero-fill, ldmatrix, mma.sync
// fragments, both the sm_80 int4 path and the sm_90a int4->int8 path) must equal
// resq::cpu::gemm_w4a4_w8a8_reference bit for bit. No GPU needed: this is plain C++.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/quantize.h"
#include "cuda/act_transform.h"
#include "kernels/gemm_problem.h"
#include "kernels/mixed_gemm_emulation.h"
#include "cuda/gpu_layout.h"
#include "cuda/mixed_gemm_layout.h"
#include "resq/linalg/fwht.h"

namespace {

using namespace resq::gpu;  // NOLINT
using resq::gpu::emulation::MmaPath;

// ------------------------------------------------------------------ fragment tables

// Each (row, col) of each PTX fragment is held by exactly one (lane, element).
template <typename RowFn, typename ColFn>
void expect_bijective(int rows, int cols, int per_lane, RowFn row, ColFn col, const char* what) {
  std::vector<int> hits(static_cast<size_t>(rows * cols), 0);
  for (int l = 0; l < kWarpSize; ++l) {
    for (int i = 0; i < per_lane; ++i) {
      const int r = row(l, i), c = col(l, i);
      ASSERT_TRUE(r >= 0 && r < rows && c >= 0 && c < cols) << what << " lane " << l << " i " << i;
      ++hits[static_cast<size_t>(r * cols + c)];
    }
  }
  for (int h : hits) ASSERT_EQ(h, 1) << what;
}

TEST(CudaLayout, MmaFragmentsCoverTheirMatricesExactlyOnce) {
  expect_bijective(16, 64, 32, mma_k64_a_row, mma_k64_a_col, "k64 A");
  expect_bijective(64, 8, 16, mma_k64_b_row, mma_k64_b_col, "k64 B");
  expect_bijective(16, 32, 16, mma_k32_a_row, mma_k32_a_col, "k32 A");
  expect_bijective(32, 8, 8, mma_k32_b_row, mma_k32_b_col, "k32 B");
  expect_bijective(16, 8, 4, mma_c_row, mma_c_col, "C");
}

TEST(CudaLayout, PtxTableSpotChecks) {
  // Values read off the PTX ISA tables (lane 5: groupID 1, threadID_in_group 1).
  EXPECT_EQ(mma_k64_a_row(5, 0), 1);
  EXPECT_EQ(mma_k64_a_col(5, 0), 8);
  EXPECT_EQ(mma_k64_a_row(5, 8), 9);
  EXPECT_EQ(mma_k64_a_col(5, 16), 40);
  EXPECT_EQ(mma_k64_a_row(5, 24), 9);
  EXPECT_EQ(mma_k64_b_row(5, 8), 40);
  EXPECT_EQ(mma_k32_a_row(5, 4), 9);
  EXPECT_EQ(mma_k32_a_col(5, 8), 20);
  EXPECT_EQ(mma_k32_b_row(5, 4), 20);
  EXPECT_EQ(mma_c_row(5, 2), 9);
  EXPECT_EQ(mma_c_col(5, 1), 3);
}

// ------------------------------------------------------------------ shared memory + ldmatrix

TEST(CudaLayout, SwizzleIsABijectionOfAlignedChunks) {
  std::set<int> seen;
  for (int row = 0; row < 128; ++row) {
    for (int chunk = 0; chunk < kChunksPerRow; ++chunk) {
      const int off = smem_swizzle_offset(row, chunk);
      EXPECT_EQ(off % kChunkBytes, 0);
      EXPECT_GE(off, row * kStageRowBytes);
      EXPECT_LT(off, (row + 1) * kStageRowBytes);
      EXPECT_TRUE(seen.insert(off).second);
    }
  }
}

// The 8 row addresses of each 8x8 matrix of an ldmatrix.x4 fall in 8 distinct 16-byte bank
// groups (128-byte window), i.e. the shared-memory reads are free of bank conflicts.
TEST(CudaLayout, LdmatrixPhasesAreBankConflictFree) {
  for (int ks = 0; ks < kStepsPerStage; ++ks) {
    for (int base : {0, 16, 48}) {
      for (int j = 0; j < 4; ++j) {
        std::set<int> groups_a, groups_b;
        for (int l = 8 * j; l < 8 * j + 8; ++l) {
          groups_a.insert((smem_swizzle_offset(base + ldsm_a_row(l), ldsm_a_chunk(l, ks)) / 16) % 8);
          groups_b.insert((smem_swizzle_offset(base + ldsm_b_row(l), ldsm_b_chunk(l, ks)) / 16) % 8);
        }
        EXPECT_EQ(groups_a.size(), 8u);
        EXPECT_EQ(groups_b.size(), 8u);
      }
    }
  }
}

// ldmatrix.x4 through the swizzle gives each lane exactly the A / B fragment bytes the PTX tables
// prescribe (nibble i of A register j = element (mma_k64_a_row, mma_k64_a_col) of the tile).
TEST(CudaLayout, LdmatrixDeliversThePtxFragments) {
  std::mt19937 rng(7);
  std::vector<uint8_t> logical(32 * kStageRowBytes);  // 32 rows x 128 bytes
  for (auto& b : logical) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> smem(logical.size());
  for (int row = 0; row < 32; ++row) {
    for (int chunk = 0; chunk < kChunksPerRow; ++chunk) {
      std::memcpy(smem.data() + smem_swizzle_offset(row, chunk),
                  logical.data() + row * kStageRowBytes + chunk * kChunkBytes, kChunkBytes);
    }
  }
  auto nibble = [&](int row, int kbyte_base, int k) {
    const uint8_t b = logical[static_cast<size_t>(row * kStageRowBytes + kbyte_base + k / 2)];
    return (b >> ((k & 1) * 4)) & 0xF;
  };
  for (int ks = 0; ks < kStepsPerStage; ++ks) {
    for (int tile_row0 : {0, 16}) {
      int addr[kWarpSize];
      uint32_t a[kWarpSize][4];
      for (int l = 0; l < kWarpSize; ++l) {
        addr[l] = smem_swizzle_offset(tile_row0 + ldsm_a_row(l), ldsm_a_chunk(l, ks));
      }
      emulation::ldmatrix_x4(smem.data(), addr, a);
      for (int l = 0; l < kWarpSize; ++l) {
        for (int i = 0; i < 32; ++i) {
          const int got = (a[l][i / 8] >> (4 * (i % 8))) & 0xF;
          ASSERT_EQ(got, nibble(tile_row0 + mma_k64_a_row(l, i), ks * kStepBytes, mma_k64_a_col(l, i)))
              << "A lane " << l << " i " << i;
        }
        for (int i = 0; i < 16; ++i) {  // the same registers as the int8 A fragment
          const int got = (a[l][i / 4] >> (8 * (i % 4))) & 0xFF;
          const int want = logical[static_cast<size_t>((tile_row0 + mma_k32_a_row(l, i)) * kStageRowBytes +
                                                       ks * kStepBytes + mma_k32_a_col(l, i))];
          ASSERT_EQ(got, want) << "A8 lane " << l << " i " << i;
        }
      }
      uint32_t b[kWarpSize][4];
      for (int l = 0; l < kWarpSize; ++l) {
        addr[l] = smem_swizzle_offset(tile_row0 + ldsm_b_row(l), ldsm_b_chunk(l, ks));
      }
      emulation::ldmatrix_x4(smem.data(), addr, b);
      for (int l = 0; l < kWarpSize; ++l) {
        for (int half = 0; half < 2; ++half) {  // n8 tile 0: regs 0,1; n8 tile 1: regs 2,3
          for (int i = 0; i < 16; ++i) {
            const int got = (b[l][2 * half + i / 8] >> (4 * (i % 8))) & 0xF;
            const int wrow = tile_row0 + 8 * half + mma_k64_b_col(l, i);
            ASSERT_EQ(got, nibble(wrow, ks * kStepBytes, mma_k64_b_row(l, i)))
                << "B lane " << l << " i " << i << " half " << half;
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------ small helpers

TEST(CudaLayout, ChunkSourceBytes) {
  EXPECT_EQ(chunk_src_bytes(true, 0, 100), 16);
  EXPECT_EQ(chunk_src_bytes(true, 96, 100), 4);
  EXPECT_EQ(chunk_src_bytes(true, 112, 100), 0);
  EXPECT_EQ(chunk_src_bytes(false, 0, 100), 0);
  EXPECT_EQ(chunk_src_bytes(true, 80, 96), 16);
  EXPECT_EQ(stage_count(0), 0);
  EXPECT_EQ(stage_count(1), 1);
  EXPECT_EQ(stage_count(128), 1);
  EXPECT_EQ(stage_count(129), 2);
  EXPECT_EQ(gpu_row_stride(0), 0);
  EXPECT_EQ(gpu_row_stride(1), 16);
  EXPECT_EQ(gpu_row_stride(32), 32);
}

TEST(CudaLayout, Int4ToInt8UnpackIsExhaustivelyCorrect) {
  for (uint32_t v = 0; v < 65536; ++v) {
    const uint32_t word_lo = v | (0xA5C3u << 16);  // garbage in the other half must not leak
    const uint32_t word_hi = (v << 16) | 0x3C5Au;
    const uint32_t u_lo = u4_lo_to_u8(word_lo), u_hi = u4_hi_to_u8(word_hi);
    const uint32_t s_lo = s4_lo_to_s8(word_lo), s_hi = s4_hi_to_s8(word_hi);
    for (int e = 0; e < 4; ++e) {
      const int nib = static_cast<int>((v >> (4 * e)) & 0xF);
      ASSERT_EQ(static_cast<int>((u_lo >> (8 * e)) & 0xFF), nib);
      ASSERT_EQ(static_cast<int>((u_hi >> (8 * e)) & 0xFF), nib);
      ASSERT_EQ(static_cast<int>(static_cast<int8_t>((s_lo >> (8 * e)) & 0xFF)), (nib ^ 8) - 8);
      ASSERT_EQ(static_cast<int>(static_cast<int8_t>((s_hi >> (8 * e)) & 0xFF)), (nib ^ 8) - 8);
    }
  }
}

TEST(CudaLayout, Bf16ConversionMatchesTheCpuLibrary) {
  std::mt19937 rng(3);
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.5f, 3.0e38f, -3.4e38f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          -std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::denorm_min(), 1.00390625f, 1.01171875f};
  for (int i = 0; i < 100000; ++i) {
    uint32_t bits = static_cast<uint32_t>(rng());
    float f;
    std::memcpy(&f, &bits, 4);
    v.push_back(f);
  }
  std::vector<uint16_t> want(v.size());
  resq::cpu::convert_f32_to_bf16(v.data(), static_cast<int64_t>(v.size()), want.data());
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], 4);
    ASSERT_EQ(f32_bits_to_bf16(bits), want[i]) << "bits 0x" << std::hex << bits;
  }
}

// ------------------------------------------------------------------ emulated mma sensitivity

// The emulated mma is sensitive to the register order: swapping b0 and b1 changes the product
// (so the emulation comparisons below could fail if the fragment math were wrong).
TEST(CudaLayout, EmulatedMmaDetectsSwappedRegisters) {
  std::mt19937 rng(11);
  uint32_t a[kWarpSize][4], b[kWarpSize][2], bs[kWarpSize][2];
  for (int l = 0; l < kWarpSize; ++l) {
    for (auto& r : a[l]) r = static_cast<uint32_t>(rng());
    b[l][0] = static_cast<uint32_t>(rng());
    b[l][1] = static_cast<uint32_t>(rng());
    bs[l][0] = b[l][1];
    bs[l][1] = b[l][0];
  }
  for (int path = 0; path < 3; ++path) {
    int32_t c1[kWarpSize][4] = {}, c2[kWarpSize][4] = {};
    if (path == 0) {
      emulation::mma_m16n8k64_u4s4(a, b, c1);
      emulation::mma_m16n8k64_u4s4(a, bs, c2);
    } else if (path == 1) {
      emulation::mma_m16n8k32_u8s8(a, b, c1);
      emulation::mma_m16n8k32_u8s8(a, bs, c2);
    } else {
      emulation::mma_k64_via_int8(a, b, c1);
      emulation::mma_k64_via_int8(a, bs, c2);
    }
    EXPECT_NE(std::memcmp(c1, c2, sizeof(c1)), 0) << "path " << path;
  }
}

// The Hopper replacement (two int8 mmas on unpacked halves) equals the native int4 mma.
TEST(CudaLayout, Int8PathEqualsNativeInt4Mma) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 50; ++trial) {
    uint32_t a[kWarpSize][4], b[kWarpSize][2];
    for (int l = 0; l < kWarpSize; ++l) {
      for (auto& r : a[l]) r = static_cast<uint32_t>(rng());
      for (auto& r : b[l]) r = static_cast<uint32_t>(rng());
    }
    int32_t c1[kWarpSize][4] = {}, c2[kWarpSize][4] = {};
    emulation::mma_m16n8k64_u4s4(a, b, c1);
    emulation::mma_k64_via_int8(a, b, c2);
    ASSERT_EQ(std::memcmp(c1, c2, sizeof(c1)), 0);
  }
}

// ------------------------------------------------------------------ GPU layout of a packed linear

TEST(CudaLayout, RestrideForGpuPadsWithZerosAndKeepsTheRows) {
  std::mt19937 rng(1);
  const int64_t N = 5, K4 = 37, K8 = 19;
  std::vector<int8_t> q(static_cast<size_t>(N * (K4 + K8)));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K4 + K8; ++k) {
      q[static_cast<size_t>(n * (K4 + K8) + k)] =
          static_cast<int8_t>(k < K4 ? static_cast<int>(rng() % 16) - 8 : static_cast<int>(rng() % 256) - 128);
    }
  }
  std::vector<float> s4(N, 0.5f), s8(N, 0.25f), bias(N, 1.0f);
  resq::format::PackedLinear p = resq::format::pack_linear(q.data(), s4.data(), s8.data(), bias.data(), {N, K4, K8});
  // Garbage in the pad nibble of the source must not survive.
  const int64_t rb4 = resq::format::packed4_row_bytes(K4);
  for (int64_t n = 0; n < N; ++n) p.w4[static_cast<size_t>(n * rb4 + rb4 - 1)] |= 0xB0;
  const resq::format::PackedLinear g = resq::format::restride(p.view(), kGpuRowAlign);
  EXPECT_EQ(g.ldw4, 32);
  EXPECT_EQ(g.ldw8, 32);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K4; ++k) {
      ASSERT_EQ(resq::format::int4_get(g.w4.data() + n * g.ldw4, k), q[static_cast<size_t>(n * (K4 + K8) + k)]);
    }
    EXPECT_EQ(g.w4[static_cast<size_t>(n * g.ldw4 + rb4 - 1)] >> 4, 0);
    for (int64_t b = rb4; b < g.ldw4; ++b) EXPECT_EQ(g.w4[static_cast<size_t>(n * g.ldw4 + b)], 0);
    for (int64_t k = 0; k < K8; ++k) {
      ASSERT_EQ(g.w8[static_cast<size_t>(n * g.ldw8 + k)], q[static_cast<size_t>(n * (K4 + K8) + K4 + k)]);
    }
    for (int64_t b = K8; b < g.ldw8; ++b) EXPECT_EQ(g.w8[static_cast<size_t>(n * g.ldw8 + b)], 0);
  }
  EXPECT_EQ(g.rs4, p.rs4);
  EXPECT_EQ(g.rs8, p.rs8);
  EXPECT_EQ(g.sw4, p.sw4);
  EXPECT_EQ(g.sw8, p.sw8);
  EXPECT_EQ(g.bias, p.bias);
  // The GPU view takes the re-strided copy and refuses the compact one (strides not 16-byte multiples).
  const GpuLinearView v = gpu_linear_view(g.view());
  EXPECT_EQ(v.ldw4, 32);
  EXPECT_EQ(v.w8, g.w8.data());
  EXPECT_THROW(gpu_linear_view(p.view()), resq::ShapeError);
  // Back to compact: the original rows with the pad nibble cleared.
  const resq::format::PackedLinear c = resq::format::restride(g.view(), 1);
  EXPECT_EQ(c.ldw4, rb4);
  EXPECT_EQ(c.ldw8, K8);
  for (int64_t n = 0; n < N; ++n) p.w4[static_cast<size_t>(n * rb4 + rb4 - 1)] &= 0x0F;
  EXPECT_EQ(c.w4, p.w4);
  EXPECT_EQ(c.w8, p.w8);
  resq::format::PackedLinearView bad = p.view();
  bad.w4 = nullptr;
  EXPECT_THROW(resq::format::restride(bad, kGpuRowAlign), resq::ShapeError);
  bad = p.view();
  bad.ldw8 = K8 - 1;  // shorter than a row
  EXPECT_THROW(resq::format::restride(bad, kGpuRowAlign), resq::ShapeError);
}

// ------------------------------------------------------------------ emulation vs CPU reference

struct EmuCase {
  int64_t M, N, K4, K8;
  bool bias;
  bool large;
};

// Random activations/weights (fixed seed) -> CPU reference and emulated kernel, compared bit for
// bit (fp32 via memcmp; bf16 against cpu::convert_f32_to_bf16 of the reference).
void run_emulation_case(const EmuCase& c, MmaPath path, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t K = c.K4 + c.K8;
  const resq::test::GemmInputs in = resq::test::draw_gemm_inputs(rng, c.M, K, c.N, K, 17, 20.0f);  // some outliers
  const resq::test::GemmReference ref =
      resq::test::gemm_reference(in.x.data(), in, c.bias, c.M, c.N, c.K4, c.K8, 1.0f, 0.9f);
  const resq::format::PackedLinear& lin = ref.lin;
  const resq::cpu::QuantizedActivations& xq = ref.xq;
  const std::vector<float>& want = ref.want;

  // GPU layout: weights re-strided; activations re-strided with garbage past each row (and, for an
  // odd K4, in the pad nibble) which the kernel must never use.
  const resq::format::PackedLinear g = resq::format::restride(lin.view(), kGpuRowAlign);
  const GpuLinearView gw = gpu_linear_view(g.view());
  const int64_t rb4 = part4_row_bytes(c.K4);
  const int64_t extra4 = rng() % 2 ? 16 : 0;  // also a stride larger than the minimum
  GpuActivationsHost gx = restride_activations_for_gpu(xq.view(), gpu_row_stride(rb4) + extra4, 0, 0xEE);
  if (c.K4 % 2 == 1) {
    for (int64_t m = 0; m < c.M; ++m) gx.xq4[static_cast<size_t>(m * gx.ldx4 + rb4 - 1)] |= 0xD0;
  }
  const int64_t ldy = c.N + 3;
  std::vector<float> got(static_cast<size_t>(c.M * ldy), -7.0f);
  std::vector<uint16_t> got16(static_cast<size_t>(c.M * ldy), 0xDEAD);
  if (c.large) {
    emulation::emulate_mixed_gemm<GemmTileLarge>(gx.host_view(), gw, got.data(), nullptr, ldy, path);
    emulation::emulate_mixed_gemm<GemmTileLarge>(gx.host_view(), gw, nullptr, got16.data(), ldy, path);
  } else {
    emulation::emulate_mixed_gemm<GemmTileSmall>(gx.host_view(), gw, got.data(), nullptr, ldy, path);
    emulation::emulate_mixed_gemm<GemmTileSmall>(gx.host_view(), gw, nullptr, got16.data(), ldy, path);
  }
  const std::vector<uint16_t>& want16 = ref.want16;
  int64_t mismatches = 0;
  for (int64_t m = 0; m < c.M; ++m) {
    ASSERT_EQ(std::memcmp(got.data() + m * ldy, want.data() + m * c.N, static_cast<size_t>(c.N) * 4), 0)
        << "fp32 row " << m << " differs (M=" << c.M << " N=" << c.N << " K4=" << c.K4 << " K8=" << c.K8
        << " large=" << c.large << " path=" << static_cast<int>(path) << ")";
    for (int64_t n = 0; n < c.N; ++n) mismatches += got16[static_cast<size_t>(m * ldy + n)] != want16[static_cast<size_t>(m * c.N + n)];
    for (int64_t n = c.N; n < ldy; ++n) {  // outside [N) untouched
      ASSERT_EQ(got[static_cast<size_t>(m * ldy + n)], -7.0f);
      ASSERT_EQ(got16[static_cast<size_t>(m * ldy + n)], 0xDEAD);
    }
  }
  EXPECT_EQ(mismatches, 0) << "bf16 output differs";
}

class CudaEmulation : public ::testing::TestWithParam<MmaPath> {};

TEST_P(CudaEmulation, SmallTilesEqualCpuReferenceOnRaggedShapes) {
  const EmuCase cases[] = {
      {1, 70, 256, 32, true, false},     // decode row, ragged N
      {5, 64, 1100, 300, false, false},  // > STAGES stages in the ring, ragged K8
      {33, 130, 77, 19, true, false},    // odd K4, K8 not a multiple of 16, ragged M and N
      {17, 9, 0, 45, true, false},       // no 4-bit part
      {40, 66, 513, 0, false, false},    // no 8-bit part (down_proj), odd K4
      {3, 20, 0, 0, true, false},        // both parts empty: y = bias
      {2, 8, 1, 1, false, false},        // tiniest parts
  };
  uint32_t seed = 100;
  for (const auto& c : cases) run_emulation_case(c, GetParam(), seed++);
}

TEST_P(CudaEmulation, LargeTilesEqualCpuReferenceOnRaggedShapes) {
  const EmuCase cases[] = {
      {150, 200, 1100, 300, true, true},  // 2 x 2 CTAs, ragged everywhere, 8 stages
      {128, 128, 512, 64, false, true},   // exact tile
      {7, 129, 65, 31, true, true},
  };
  uint32_t seed = 200;
  for (const auto& c : cases) run_emulation_case(c, GetParam(), seed++);
}

INSTANTIATE_TEST_SUITE_P(Paths, CudaEmulation, ::testing::Values(MmaPath::kSm80, MmaPath::kSm90),
                         [](const ::testing::TestParamInfo<MmaPath>& i) {
                           return i.param == MmaPath::kSm80 ? std::string("sm80_int4_mma")
                                                            : std::string("sm90_int8_mma");
                         });

// ------------------------------------------------------------------ activation transforms

// block == 1: the kernel's order (signs, butterfly network, one scale multiply) is exactly what
// apply_online_hadamard(float) does, i.e. resq::fwht_butterfly then a multiply: bit-identical.
TEST(CudaActTransform, PowerOfTwoHadamardIsBitIdenticalToTheButterfly) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int64_t n : {2, 64, 512, 4096}) {
    std::vector<float> signs(static_cast<size_t>(n));
    for (auto& s : signs) s = rng() % 2 ? 1.0f : -1.0f;
    const HadamardRowHost h = make_hadamard_row_host(n, n, 1, {1.0}, signs);
    std::vector<float> z(static_cast<size_t>(n)), want;
    for (auto& v : z) v = normal(rng);
    want = z;
    for (int64_t i = 0; i < n; ++i) want[static_cast<size_t>(i)] *= signs[static_cast<size_t>(i)];
    resq::fwht_butterfly(want.data(), n);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
    for (auto& v : want) v *= scale;
    hadamard_row_reference(h.view(), z.data());
    ASSERT_EQ(std::memcmp(z.data(), want.data(), z.size() * 4), 0) << "n = " << n;
  }
}

// block > 1: equals the dense float64 transform diag(s) kron(B, S) / sqrt(pow2) to rounding.
TEST(CudaActTransform, BlockHadamardMatchesTheDenseTransform) {
  std::mt19937 rng(10);
  std::normal_distribution<double> normal(0.0, 1.0);
  const int64_t pow2 = 16, block = 3, n = pow2 * block;
  // An orthogonal 3x3 block (a rotation), float64.
  const double c = std::cos(0.7), s = std::sin(0.7);
  const std::vector<double> B = {c, -s, 0, s, c, 0, 0, 0, 1};
  std::vector<float> signs(static_cast<size_t>(n));
  for (auto& v : signs) v = rng() % 2 ? 1.0f : -1.0f;
  const HadamardRowHost h = make_hadamard_row_host(n, pow2, block, B, signs);
  std::vector<float> z(static_cast<size_t>(n));
  for (auto& v : z) v = static_cast<float>(normal(rng));
  std::vector<double> want(static_cast<size_t>(n), 0.0);
  // y[j] = sum_i x[i] * T[i, j], T[i, j] = s_i * B[i / pow2, j / pow2] * S[i % pow2, j % pow2] / sqrt(pow2)
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < n; ++i) {
      const double sy = (__builtin_popcountll(static_cast<uint64_t>((i % pow2) & (j % pow2))) % 2) ? -1.0 : 1.0;
      want[static_cast<size_t>(j)] += z[static_cast<size_t>(i)] * signs[static_cast<size_t>(i)] *
                                      B[static_cast<size_t>((i / pow2) * block + j / pow2)] * sy / 4.0;
    }
  }
  hadamard_row_reference(h.view(), z.data());
  for (int64_t j = 0; j < n; ++j) EXPECT_NEAR(z[static_cast<size_t>(j)], want[static_cast<size_t>(j)], 1e-5) << j;
}

TEST(CudaActTransform, RotationMatchesFloat64) {
  std::mt19937 rng(12);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t n = 24;
  std::vector<float> R(static_cast<size_t>(n * n)), z(static_cast<size_t>(n));
  for (auto& v : R) v = normal(rng);
  for (auto& v : z) v = normal(rng);
  std::vector<double> want(static_cast<size_t>(n), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < n; ++i) want[static_cast<size_t>(j)] += double(z[static_cast<size_t>(i)]) * R[static_cast<size_t>(i * n + j)];
  }
  rotation_row_reference(R.data(), n, z.data());
  for (int64_t j = 0; j < n; ++j) EXPECT_NEAR(z[static_cast<size_t>(j)], want[static_cast<size_t>(j)], 1e-4) << j;
}

TEST(CudaActTransform, FwhtPairsEnumerateEveryButterflyOnce) {
  const int64_t pow2 = 32, n = 3 * pow2;
  for (int64_t h = 1; h < pow2; h *= 2) {
    std::vector<int> hits(static_cast<size_t>(n), 0);
    for (int64_t q = 0; q < n / 2; ++q) {
      int64_t lo = 0, hi = 0;
      fwht_pair(q, h, pow2, &lo, &hi);
      ASSERT_EQ(hi - lo, h);
      ASSERT_EQ(lo / pow2, hi / pow2);     // same chunk
      ASSERT_EQ((lo % pow2) & h, 0);       // lo has bit h clear
      ++hits[static_cast<size_t>(lo)];
      ++hits[static_cast<size_t>(hi)];
    }
    for (int v : hits) ASSERT_EQ(v, 1);
  }
}

}  // namespace
