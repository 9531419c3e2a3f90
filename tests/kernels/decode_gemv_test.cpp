// Host tests of the CUDA decode kernel (M <= 16): its plan and index math (cuda/decode_gemv_layout.h:
// splits partition K, every weight byte is loaded exactly once, staged activations stay inside the
// shared-memory budget and are bank-conflict free), its argument checks, and the CPU emulation of
// its CTAs / warps / lanes / mma fragments / split-K reduction (tests/kernels/decode_gemv_emulation.h)
// against resq::cpu::gemm_w4a4_w8a8_reference (after cpu::quantize_activations_reference for the
// fused quantizer) bit for bit, fp32 and bf16 output, on random ragged shapes. No GPU needed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/quantize.h"
#include "cuda/decode_gemv_layout.h"
#include "cuda/gpu_layout.h"
#include "kernels/decode_gemv_emulation.h"
#include "kernels/gemm_problem.h"

namespace {

using namespace resq::gpu;  // NOLINT
using resq::gpu::emulation::DecodeEmuInput;
using resq::gpu::emulation::MmaPath;

// ------------------------------------------------------------------ plan and index math

struct Shape {
  int64_t M, N, K4, K8;
};

std::vector<Shape> plan_shapes() {
  std::vector<Shape> s;
  const int64_t ns[] = {1, 7, 8, 9, 100, 2048, 4096, 28672};
  const int64_t ks[][2] = {{0, 0}, {1, 0}, {0, 1}, {77, 19}, {3584, 512}, {14336, 0}, {65536, 65536}, {127, 64}};
  for (int64_t M : {1, 2, 5, 8, 9, 16}) {
    for (int64_t N : ns) {
      for (const auto& k : ks) s.push_back({M, N, k[0], k[1]});
    }
  }
  return s;
}

TEST(DecodeGemvPlan, SplitsPartitionTheBlocksWithinTheSharedMemoryBudget) {
  for (int64_t sms : {1, 108, 132, 1000}) {
    for (const Shape& c : plan_shapes()) {
      const DecodePlan p = plan_decode_gemv(c.M, c.N, c.K4, c.K8, sms);
      const int64_t kb = p.total_blocks();
      ASSERT_EQ(p.kb4, ceil_div(part4_row_bytes(c.K4), 64));
      ASSERT_EQ(p.kb8, ceil_div(c.K8, 64));
      ASSERT_GE(p.splits, 1);
      ASSERT_LE(p.splits, std::max<int64_t>(kb, 1));
      ASSERT_LE(p.splits, kDecodeMaxSplits);
      ASSERT_LE(p.act_smem_bytes, kDecodeActSmemBudget) << c.M << " " << c.N << " " << c.K4 << " " << c.K8;
      ASSERT_EQ(p.act_stride % 128, 64);  // odd multiple of 64 bytes
      int64_t prev = 0;
      for (int64_t s = 0; s < p.splits; ++s) {
        const int64_t b = decode_split_begin(kb, p.splits, s), e = decode_split_begin(kb, p.splits, s + 1);
        ASSERT_EQ(b, prev);
        ASSERT_LE(e - b, p.max_split_blocks);
        ASSERT_LE(p.M * decode_act_offset(p, 0, e - b, 0), p.act_smem_bytes);
        prev = e;
      }
      ASSERT_EQ(prev, kb);
      // Enough CTAs to fill the device unless K is too short to split further.
      if (p.splits < kDecodeMaxSplits && kb / kDecodeMinBlocksPerSplit > p.splits) {
        ASSERT_GE(p.ctas(), kDecodeCtasPerSm * sms);
      }
    }
  }
  // Llama-3-8B down_proj at M = 16: 112 blocks of 16 staged rows need 3 splits to fit 40 KiB.
  const DecodePlan down = plan_decode_gemv(16, 4096, 14336, 0, 132);
  EXPECT_EQ(down.n_tiles, 512);
  EXPECT_GE(down.splits, 3);
  // qkv at M = 1 on 132 SMs: 768 tiles -> 2 splits (1056 CTAs wanted, 36 blocks allow 2).
  const DecodePlan qkv = plan_decode_gemv(1, 6144, 3584, 512, 132);
  EXPECT_EQ(qkv.n_tiles, 768);
  EXPECT_EQ(qkv.splits, 2);
}

// Every byte of every weight row and part is loaded by exactly one (CTA, warp, group, slot, lane),
// and every load is a whole 16-byte chunk inside the row stride.
TEST(DecodeGemvPlan, EveryWeightByteIsLoadedExactlyOnce) {
  const Shape cases[] = {{1, 21, 77, 19}, {16, 8, 1000, 0}, {3, 100, 0, 200}, {9, 17, 3584, 512}, {2, 5, 129, 65}};
  for (int64_t sms : {1, 132}) {
    for (const Shape& c : cases) {
      const DecodePlan p = plan_decode_gemv(c.M, c.N, c.K4, c.K8, sms);
      const int64_t ld[2] = {gpu_row_stride(p.rb4), gpu_row_stride(p.rb8)};
      std::vector<int> hits[2] = {std::vector<int>(static_cast<size_t>(c.N * ld[0]), 0),
                                  std::vector<int>(static_cast<size_t>(c.N * ld[1]), 0)};
      for (int64_t cta = 0; cta < p.ctas(); ++cta) {
        const int64_t tile = decode_cta_tile(p, cta), split = decode_cta_split(p, cta);
        const int64_t b0 = decode_split_begin(p.total_blocks(), p.splits, split);
        const int64_t len = decode_split_begin(p.total_blocks(), p.splits, split + 1) - b0;
        const int64_t groups = ceil_div(len, kDecodeUnroll);
        for (int warp = 0; warp < kDecodeWarps; ++warp) {
          for (int64_t gi = 0; decode_warp_group(warp, gi) < groups; ++gi) {
            for (int u = 0; u < kDecodeUnroll; ++u) {
              const int64_t i = decode_group_block(decode_warp_group(warp, gi), u);
              if (i >= len) continue;
              const int part = decode_block_part(p, b0 + i);
              for (int lane = 0; lane < kWarpSize; ++lane) {
                const int64_t n = decode_lane_row(tile, lane);
                const int64_t off = decode_block_byte(p, b0 + i) + decode_lane_byte(lane);
                if (n >= c.N || off >= decode_part_row_bytes(p, part)) continue;
                ASSERT_LE(off + 16, ld[part]);
                for (int e = 0; e < 16; ++e) ++hits[part][static_cast<size_t>(n * ld[part] + off + e)];
              }
            }
          }
        }
      }
      for (int part = 0; part < 2; ++part) {
        const int64_t rb = decode_part_row_bytes(p, part);
        for (int64_t n = 0; n < c.N; ++n) {
          for (int64_t b = 0; b < ld[part]; ++b) {
            ASSERT_EQ(hits[part][static_cast<size_t>(n * ld[part] + b)], b < round_up(rb, 16) ? 1 : 0)
                << "part " << part << " row " << n << " byte " << b;
          }
        }
      }
    }
  }
}

// One quarter-warp's 16-byte shared loads (lanes 8q .. 8q + 7: rows 2q, 2q + 1, 64 bytes each)
// touch 32 distinct 4-byte banks.
TEST(DecodeGemvPlan, StagedActivationLoadsAreBankConflictFree) {
  for (int64_t M : {2, 8, 16}) {
    const DecodePlan p = plan_decode_gemv(M, 64, 4096, 512, 132);
    for (int64_t i = 0; i < p.max_split_blocks; ++i) {
      for (int h = 0; h < 2; ++h) {
        for (int q = 0; q < 4; ++q) {
          std::vector<int> bank(32, 0);
          for (int lane = 8 * q; lane < 8 * q + 8; ++lane) {
            const int64_t m = frag_group(lane) + 8 * h;
            if (m >= M) continue;
            const int64_t off = decode_act_offset(p, m, i, decode_lane_byte(lane));
            ASSERT_EQ(off % 16, 0);
            for (int wd = 0; wd < 4; ++wd) ++bank[static_cast<size_t>((off / 4 + wd) % 32)];
          }
          for (int b = 0; b < 32; ++b) ASSERT_LE(bank[static_cast<size_t>(b)], 1) << "M " << M << " block " << i;
        }
      }
    }
  }
}

TEST(DecodeGemvPlan, FragmentWordsPairAandBOnTheSameBytes) {
  // mma j uses words 2j (register 0) and 2j + 1 (register 1) for both A and B: together the two
  // mmas of a block cover the 4 words of every lane exactly once.
  int seen[4] = {0, 0, 0, 0};
  for (int j = 0; j < 2; ++j) {
    for (int r = 0; r < 2; ++r) ++seen[decode_frag_word(j, r)];
  }
  for (int w : seen) EXPECT_EQ(w, 1);
}

// ------------------------------------------------------------------ argument checks

TEST(DecodeGemvArgs, BadDimsAndPointersThrowShapeError) {
  std::vector<uint8_t> w4(64 * 16, 0);
  std::vector<int8_t> w8(64 * 16, 0);
  std::vector<float> sw(64, 1.0f);
  std::vector<int32_t> rs(64, 0);
  GpuLinearView w;
  w.N = 8;
  w.K4 = 20;
  w.K8 = 10;
  w.w4 = w4.data();
  w.ldw4 = 16;
  w.w8 = w8.data();
  w.ldw8 = 16;
  w.sw4 = w.sw8 = sw.data();
  w.rs4 = w.rs8 = rs.data();
  float y[16 * 8] = {};
  float x[16 * 30] = {};
  const char* fn = "decode_gemv_cuda";
  EXPECT_NO_THROW(check_decode_gemv_args(fn, 16, w, y, 8, nullptr, x, 30));
  EXPECT_THROW(check_decode_gemv_args(fn, 0, w, y, 8, nullptr, x, 30), resq::ShapeError);
  EXPECT_THROW(check_decode_gemv_args(fn, 17, w, y, 8, nullptr, x, 30), resq::ShapeError);
  EXPECT_THROW(check_decode_gemv_args(fn, 1, w, nullptr, 8, nullptr, x, 30), resq::ShapeError);
  EXPECT_THROW(check_decode_gemv_args(fn, 1, w, y, 7, nullptr, x, 30), resq::ShapeError);
  EXPECT_THROW(check_decode_gemv_args(fn, 1, w, y, 8, nullptr, nullptr, 30), resq::ShapeError);
  EXPECT_THROW(check_decode_gemv_args(fn, 1, w, y, 8, nullptr, x, 29), resq::ShapeError);
  GpuLinearView bad = w;
  bad.w4 = nullptr;
  EXPECT_THROW(check_decode_gemv_args(fn, 1, bad, y, 8, nullptr, x, 30), resq::ShapeError);
  bad = w;
  bad.ldw8 = 8;  // below K8 and not a multiple of 16
  EXPECT_THROW(check_decode_gemv_args(fn, 1, bad, y, 8, nullptr, x, 30), resq::ShapeError);
  bad = w;
  bad.w8 = w8.data() + 1;  // misaligned
  EXPECT_THROW(check_decode_gemv_args(fn, 1, bad, y, 8, nullptr, x, 30), resq::ShapeError);
  bad = w;
  bad.K8 = -1;
  EXPECT_THROW(check_decode_gemv_args(fn, 1, bad, y, 8, nullptr, x, 30), resq::ShapeError);
  // Pre-quantized activations must match the weights.
  GpuActivationsView xa;
  xa.M = 2;
  xa.K4 = 20;
  xa.K8 = 10;
  xa.xq4 = w4.data();
  xa.ldx4 = 16;
  xa.xq8 = w4.data();
  xa.ldx8 = 16;
  xa.sx4 = xa.sx8 = sw.data();
  xa.zx4 = xa.zx8 = rs.data();
  EXPECT_NO_THROW(check_decode_gemv_args(fn, 2, w, y, 8, &xa, nullptr, 0));
  GpuActivationsView xb = xa;
  xb.K8 = 11;
  EXPECT_THROW(check_decode_gemv_args(fn, 2, w, y, 8, &xb, nullptr, 0), resq::ShapeError);
  xb = xa;
  xb.sx8 = nullptr;
  EXPECT_THROW(check_decode_gemv_args(fn, 2, w, y, 8, &xb, nullptr, 0), resq::ShapeError);
  xb = xa;
  xb.ldx4 = 8;
  EXPECT_THROW(check_decode_gemv_args(fn, 2, w, y, 8, &xb, nullptr, 0), resq::ShapeError);
  // N == 0 needs no pointers.
  GpuLinearView empty;
  EXPECT_NO_THROW(check_decode_gemv_args(fn, 3, empty, nullptr, 0, nullptr, nullptr, 0));
}

// ------------------------------------------------------------------ emulation vs CPU reference

struct EmuCase {
  int64_t M, N, K4, K8;
  bool bias;
  int64_t sms;  // plan for this many SMs (1: no split; large: many splits)
};

enum class Input { kPreQuantized, kF32, kBf16 };

float bf16_round(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  const uint32_t r = static_cast<uint32_t>(f32_bits_to_bf16(b)) << 16;
  float f;
  std::memcpy(&f, &r, 4);
  return f;
}

void run_case(const EmuCase& c, MmaPath path, Input input, bool with_perm, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << "M=" << c.M << " N=" << c.N << " K4=" << c.K4 << " K8=" << c.K8
                                    << " sms=" << c.sms << " input=" << static_cast<int>(input)
                                    << " perm=" << with_perm << " path=" << static_cast<int>(path));
  std::mt19937 rng(seed);
  const int64_t K = c.K4 + c.K8;
  const int64_t ldx = K + 5;
  resq::test::GemmInputs drawn = resq::test::draw_gemm_inputs(rng, c.M, ldx, c.N, K, 17, 20.0f);
  std::vector<float>& x = drawn.x;
  if (input == Input::kBf16) {
    for (auto& v : x) v = bf16_round(v);
  }
  if (c.M > 2) std::fill(x.begin() + ldx, x.begin() + 2 * ldx, 0.0f);  // an all-zero row (scale 1)
  std::vector<int32_t> perm;
  if (with_perm) {
    perm.resize(static_cast<size_t>(K));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
  }
  const float clip4 = 1.0f, clip8 = input == Input::kPreQuantized ? 0.9f : 0.95f;
  // Reference: gather, quantize, GEMM (all CPU reference functions).
  std::vector<float> z(static_cast<size_t>(c.M * K));
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t j = 0; j < K; ++j) z[static_cast<size_t>(m * K + j)] = x[static_cast<size_t>(m * ldx + (with_perm ? perm[static_cast<size_t>(j)] : j))];
  }
  const resq::test::GemmReference ref =
      resq::test::gemm_reference(z.data(), drawn, c.bias, c.M, c.N, c.K4, c.K8, clip4, clip8);
  const std::vector<float>& want = ref.want;
  const std::vector<uint16_t>& want16 = ref.want16;
  const resq::cpu::QuantizedActivations& xq = ref.xq;

  const resq::format::PackedLinear g = resq::format::restride(ref.lin.view(), kGpuRowAlign);
  const GpuLinearView gw = gpu_linear_view(g.view());
  GpuActivationsHost gx = resq::test::activations_with_garbage(xq, rng);
  const GpuActivationsView xv = gx.host_view();
  std::vector<uint16_t> xb(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    uint32_t b;
    std::memcpy(&b, &x[i], 4);
    xb[i] = static_cast<uint16_t>(b >> 16);  // exact: x already holds bf16 values
  }
  DecodeEmuInput in;
  in.M = c.M;
  in.ldx = ldx;
  in.perm = with_perm ? perm.data() : nullptr;
  in.clip4 = clip4;
  in.clip8 = clip8;
  if (input == Input::kPreQuantized) in.xq = &xv;
  if (input == Input::kF32) in.x_f32 = x.data();
  if (input == Input::kBf16) in.x_bf16 = xb.data();

  const DecodePlan p = plan_decode_gemv(c.M, c.N, c.K4, c.K8, c.sms);
  std::vector<int64_t> order(static_cast<size_t>(p.ctas()));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);  // any arrival order gives the same result
  const int64_t ldy = c.N + 3;
  std::vector<float> got(static_cast<size_t>(c.M * ldy), -7.0f);
  std::vector<uint16_t> got16(static_cast<size_t>(c.M * ldy), 0xDEAD);
  std::vector<int32_t> partials;
  std::vector<uint32_t> counters;
  emulation::emulate_decode_gemv(p, in, gw, got.data(), nullptr, ldy, path, order, partials, counters);
  std::reverse(order.begin(), order.end());
  emulation::emulate_decode_gemv(p, in, gw, nullptr, got16.data(), ldy, path, order, partials, counters);
  for (uint32_t cnt : counters) ASSERT_EQ(cnt, 0u) << "an arrival counter was not reset";
  for (int64_t m = 0; m < c.M; ++m) {
    ASSERT_EQ(std::memcmp(got.data() + m * ldy, want.data() + m * c.N, static_cast<size_t>(c.N) * 4), 0)
        << "fp32 row " << m << " differs (splits " << p.splits << ")";
    for (int64_t n = 0; n < c.N; ++n) {
      ASSERT_EQ(got16[static_cast<size_t>(m * ldy + n)], want16[static_cast<size_t>(m * c.N + n)]) << "bf16 " << m << "," << n;
    }
    for (int64_t n = c.N; n < ldy; ++n) {
      ASSERT_EQ(got[static_cast<size_t>(m * ldy + n)], -7.0f);
      ASSERT_EQ(got16[static_cast<size_t>(m * ldy + n)], 0xDEAD);
    }
  }
}

const EmuCase kCases[] = {
    {1, 70, 256, 32, true, 132},     // decode row, ragged N, split-K
    {16, 37, 1101, 300, false, 132}, // M = 16 (rows g + 8), odd K4, ragged everything
    {9, 19, 77, 19, true, 1},        // M = 9, no split
    {5, 9, 0, 45, true, 132},        // no 4-bit part
    {3, 24, 513, 0, false, 132},     // no 8-bit part (down_proj), odd K4
    {2, 11, 0, 0, true, 132},        // both parts empty: y = bias
    {4, 8, 1, 1, false, 132},        // tiniest parts
    {12, 13, 2048, 257, true, 1000}, // many splits
    {7, 130, 3000, 130, false, 2},   // several groups per warp, double buffer
};

class DecodeGemvEmulation : public ::testing::TestWithParam<MmaPath> {};

TEST_P(DecodeGemvEmulation, PreQuantizedEqualsCpuReferenceBitForBit) {
  uint32_t seed = 300;
  for (const auto& c : kCases) run_case(c, GetParam(), Input::kPreQuantized, false, seed++);
}

TEST_P(DecodeGemvEmulation, FusedQuantizerEqualsCpuReferenceBitForBit) {
  uint32_t seed = 400;
  for (const auto& c : kCases) {
    run_case(c, GetParam(), Input::kF32, false, seed++);
    run_case(c, GetParam(), Input::kBf16, true, seed++);
  }
}

TEST_P(DecodeGemvEmulation, EveryMUpTo16) {
  uint32_t seed = 500;
  for (int64_t M = 1; M <= 16; ++M) {
    run_case({M, 21, 131, 33, M % 2 == 0, M % 3 == 0 ? 1 : 132}, GetParam(),
             M % 3 == 0 ? Input::kPreQuantized : (M % 3 == 1 ? Input::kF32 : Input::kBf16), M % 4 == 1, seed++);
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, DecodeGemvEmulation, ::testing::Values(MmaPath::kSm80, MmaPath::kSm90),
                         [](const ::testing::TestParamInfo<MmaPath>& i) {
                           return i.param == MmaPath::kSm80 ? std::string("sm80_int4_mma")
                                                            : std::string("sm90_int8_mma");
                         });

}  // namespace
