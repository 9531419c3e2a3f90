// Tests of the packed W4A4 + W8A8 integer GEMM (kernels/cpu/gemm.h): every optimized ISA path
// equals the scalar reference bit for bit (int32 accumulators and fp32 outputs) on ragged shapes
// and extreme values, results match a float64 product of the dequantized inputs, error paths.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernel_test_util.h"
#include "cpu/gemm.h"
#include "cpu/quantize.h"
#include "resq/common/error.h"

namespace {

using resq::cpu::CpuKernel;
using resq::format::packed4_row_bytes;
using resq::format::PackedLinearView;
using resq::format::QuantizedActivationsView;

// A problem held as plain integers (independent of the code under test) plus its packed form.
struct Problem {
  int64_t M = 0, N = 0, K4 = 0, K8 = 0;
  std::vector<int> xq;      // [M][K4 + K8], 0..15 then 0..255
  std::vector<int8_t> wq;   // [N][K4 + K8], -8..7 then -128..127
  std::vector<float> sx4, sx8, sw4, sw8, bias;
  std::vector<int32_t> zx4, zx8;
  // Packed storage.
  std::vector<uint8_t> xq4, xq8;
  resq::format::PackedLinear w;

  QuantizedActivationsView xview() const {
    return {M, K4, K8, xq4.data(), xq8.data(), sx4.data(), zx4.data(), sx8.data(), zx8.data()};
  }
};

enum class Fill { kRandom, kMinWeightsMaxActs, kMaxWeightsMaxActs, kMinWeightsZeroActs };

Problem make_problem(int64_t M, int64_t N, int64_t K4, int64_t K8, uint32_t seed,
                     Fill fill = Fill::kRandom, bool with_bias = true) {
  Problem p;
  p.M = M;
  p.N = N;
  p.K4 = K4;
  p.K8 = K8;
  const int64_t K = K4 + K8;
  std::mt19937 rng(seed);
  auto uni = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::uniform_real_distribution<float> scale(0.001f, 0.1f);
  p.xq.resize(M * K);
  p.wq.resize(N * K);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) {
      const int qmax = k < K4 ? 15 : 255;
      int v = uni(0, qmax);
      if (fill == Fill::kMinWeightsMaxActs || fill == Fill::kMaxWeightsMaxActs) v = qmax;
      if (fill == Fill::kMinWeightsZeroActs) v = 0;
      p.xq[m * K + k] = v;
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int lo = k < K4 ? -8 : -128, hi = k < K4 ? 7 : 127;
      int v = uni(lo, hi);
      if (fill == Fill::kMinWeightsMaxActs || fill == Fill::kMinWeightsZeroActs) v = lo;
      if (fill == Fill::kMaxWeightsMaxActs) v = hi;
      p.wq[n * K + k] = static_cast<int8_t>(v);
    }
  }
  for (int64_t m = 0; m < M; ++m) {
    p.sx4.push_back(scale(rng));
    p.sx8.push_back(scale(rng));
    p.zx4.push_back(uni(0, 15));
    p.zx8.push_back(uni(0, 255));
  }
  for (int64_t n = 0; n < N; ++n) {
    p.sw4.push_back(scale(rng));
    p.sw8.push_back(scale(rng));
    p.bias.push_back(scale(rng) * 10.0f - 0.5f);
  }
  // Activations packed by hand here (low nibble = even column), so the test does not rely on the
  // quantizer. The pad nibble of an odd K4 is deliberately garbage: kernels must ignore it.
  const int64_t rb = packed4_row_bytes(K4);
  p.xq4.assign(M * rb + 1, 0);
  p.xq8.assign(M * K8 + 1, 0);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K4; ++k) {
      p.xq4[m * rb + k / 2] |= static_cast<uint8_t>(p.xq[m * K + k] << (4 * (k % 2)));
    }
    if (K4 % 2 == 1) p.xq4[m * rb + K4 / 2] |= 0xB0;
    for (int64_t k = 0; k < K8; ++k) p.xq8[m * K8 + k] = static_cast<uint8_t>(p.xq[m * K + K4 + k]);
  }
  p.w = resq::format::pack_linear(p.wq.data(), p.sw4.data(), p.sw8.data(),
                               with_bias ? p.bias.data() : nullptr, {N, K4, K8});
  return p;
}

// Integer accumulators straight from the unpacked integers (int64, so overflow would show).
void expected_acc(const Problem& p, std::vector<int64_t>* a4, std::vector<int64_t>* a8) {
  const int64_t K = p.K4 + p.K8;
  a4->assign(p.M * p.N, 0);
  a8->assign(p.M * p.N, 0);
  for (int64_t m = 0; m < p.M; ++m) {
    for (int64_t n = 0; n < p.N; ++n) {
      int64_t s4 = 0, s8 = 0;
      for (int64_t k = 0; k < p.K4; ++k) s4 += int64_t{p.xq[m * K + k]} * p.wq[n * K + k];
      for (int64_t k = p.K4; k < K; ++k) s8 += int64_t{p.xq[m * K + k]} * p.wq[n * K + k];
      (*a4)[m * p.N + n] = s4;
      (*a8)[m * p.N + n] = s8;
    }
  }
}

std::vector<CpuKernel> all_kernels() {
  return {CpuKernel::kReference, CpuKernel::kAvx2, CpuKernel::kVnni};
}

class GemmIsa : public resq::test::IsaTest {
 protected:
  // Runs reference and GetParam() on p; checks accumulators against the integer expectation and
  // the fp32 output bit for bit against the reference.
  void check(const Problem& p, const std::string& what) {
    SCOPED_TRACE(what);
    const auto x = p.xview();
    const auto w = p.w.view();
    const size_t mn = static_cast<size_t>(p.M * p.N);
    std::vector<int32_t> r4(mn, -1), r8(mn, -1), o4(mn, -2), o8(mn, -2);
    resq::cpu::gemm_int_accumulate_reference(x, w, r4.data(), r8.data());
    resq::cpu::gemm_int_accumulate(x, w, o4.data(), o8.data(), GetParam());
    std::vector<int64_t> e4, e8;
    expected_acc(p, &e4, &e8);
    for (size_t i = 0; i < mn; ++i) {
      ASSERT_EQ(r4[i], e4[i]) << "reference acc4 at " << i;
      ASSERT_EQ(r8[i], e8[i]) << "reference acc8 at " << i;
      ASSERT_EQ(o4[i], e4[i]) << "acc4 at m=" << i / p.N << " n=" << i % p.N;
      ASSERT_EQ(o8[i], e8[i]) << "acc8 at m=" << i / p.N << " n=" << i % p.N;
    }
    std::vector<float> yr(mn, -1.0f), yo(mn, -2.0f);
    resq::cpu::gemm_w4a4_w8a8_reference(x, w, yr.data());
    resq::cpu::gemm_w4a4_w8a8(x, w, yo.data(), GetParam());
    ASSERT_EQ(0, std::memcmp(yr.data(), yo.data(), mn * sizeof(float)))
        << "fp32 output differs from the reference";
  }
};

TEST_P(GemmIsa, BitExactOnRaggedShapes) {
  uint32_t seed = 1;
  for (int64_t M : {1, 2, 3, 7, 16, 33}) {
    for (int64_t N : {1, 5, 8, 17, 64, 100}) {
      for (int64_t K4 : {0, 2, 6, 62, 64, 130}) {
        for (int64_t K8 : {0, 1, 8, 9, 32, 72}) {
          const bool with_bias = seed % 2 == 0;
          const Problem p = make_problem(M, N, K4, K8, seed++, Fill::kRandom, with_bias);
          check(p, "M=" + std::to_string(M) + " N=" + std::to_string(N) +
                       " K4=" + std::to_string(K4) + " K8=" + std::to_string(K8));
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST_P(GemmIsa, BitExactWithOddK4AndGarbagePadNibbles) {
  uint32_t seed = 500;
  for (int64_t M : {1, 4, 9}) {
    for (int64_t N : {3, 20}) {
      for (int64_t K4 : {1, 3, 63, 127, 129, 257}) {
        Problem p = make_problem(M, N, K4, 5, seed++);
        // Also break the weight pad nibble; the format says writers leave it 0, and the kernels
        // must not depend on it either way.
        for (int64_t n = 0; n < N; ++n) p.w.w4[n * packed4_row_bytes(K4) + K4 / 2] |= 0x90;
        check(p, "M=" + std::to_string(M) + " N=" + std::to_string(N) +
                     " K4=" + std::to_string(K4));
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_P(GemmIsa, ExtremeValuesDoNotSaturate) {
  // x = 15/255 against w = -8/-128 or 7/127 everywhere: u8*s8 pair sums reach 2*255*128 > 32767,
  // which an int16-saturating instruction would clip. Large K makes every int32 sum big.
  for (Fill fill :
       {Fill::kMinWeightsMaxActs, Fill::kMaxWeightsMaxActs, Fill::kMinWeightsZeroActs}) {
    for (auto [K4, K8] : {std::pair<int64_t, int64_t>{0, 4096}, {8192, 1024}, {130, 72}}) {
      const Problem p = make_problem(5, 11, K4, K8, 77, fill);
      check(p, "fill=" + std::to_string(static_cast<int>(fill)) + " K4=" + std::to_string(K4) +
                   " K8=" + std::to_string(K8));
      if (HasFatalFailure()) return;
    }
  }
}

TEST_P(GemmIsa, MatchesFloat64ProductOfDequantizedInputs) {
  for (auto [M, N, K4, K8] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{3, 40, 448, 64},
                              {17, 9, 130, 0},
                              {2, 33, 0, 72},
                              {1, 70, 1000, 125}}) {
    const Problem p = make_problem(M, N, K4, K8, 4242);
    std::vector<float> y(M * N);
    resq::cpu::gemm_w4a4_w8a8(p.xview(), p.w.view(), y.data(), GetParam());
    const int64_t K = K4 + K8;
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) {
        // y = sum_k xhat * what + bias in float64; `mag` bounds the fp32 rounding of the terms.
        double t4 = 0.0, t8 = 0.0;
        for (int64_t k = 0; k < K; ++k) {
          const bool four = k < K4;
          const double xhat = four ? double{p.sx4[m]} * (p.xq[m * K + k] - p.zx4[m])
                                   : double{p.sx8[m]} * (p.xq[m * K + k] - p.zx8[m]);
          const double what = four ? double{p.sw4[n]} * p.wq[n * K + k]
                                   : double{p.sw8[n]} * p.wq[n * K + k];
          (four ? t4 : t8) += xhat * what;
        }
        const double expect = t4 + t8 + p.bias[n];
        const double mag = std::fabs(t4) + std::fabs(t8) + std::fabs(p.bias[n]);
        EXPECT_NEAR(y[m * N + n], expect, 1e-6 * mag + 1e-30)
            << "m=" << m << " n=" << n << " M=" << M << " N=" << N << " K4=" << K4;
      }
    }
  }
}

TEST_P(GemmIsa, EndToEndFromFloatInputsIsCloseToFloatGemm) {
  // Quantize real-valued X and W, run the packed GEMM, compare to the float64 X @ W^T: the error
  // must be small relative to the output scale (W8A8 part tight, W4A4 part loose but bounded).
  const int64_t M = 6, N = 24, K4 = 224, K8 = 32, K = K4 + K8;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(M * K), w(N * K);
  for (auto& v : x) v = nd(rng);
  for (auto& v : w) v = nd(rng) * 0.05f;
  const auto qx = resq::cpu::quantize_activations(x.data(), M, K4, K8, 1.0f, 1.0f, GetParam());
  const auto pw = resq::cpu::quantize_linear_rtn(w.data(), nullptr, {N, K4, K8});
  std::vector<float> y(M * N);
  resq::cpu::gemm_w4a4_w8a8(qx.view(), pw.view(), y.data(), GetParam());
  double err2 = 0.0, ref2 = 0.0;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double r = 0.0;
      for (int64_t k = 0; k < K; ++k) r += double{x[m * K + k]} * w[n * K + k];
      err2 += (y[m * N + n] - r) * (y[m * N + n] - r);
      ref2 += r * r;
    }
  }
  // 4-bit quantization of both operands of a 224-long Gaussian dot product gives a relative
  // error of roughly 0.1-0.2; a wrong nibble order or scale gives ~1 or more.
  EXPECT_LT(std::sqrt(err2 / ref2), 0.3);
}

TEST_P(GemmIsa, EmptyDimensionsAreNoOps) {
  const Problem p = make_problem(0, 7, 10, 4, 1);
  EXPECT_NO_THROW(resq::cpu::gemm_w4a4_w8a8(p.xview(), p.w.view(), nullptr, GetParam()));
  const Problem q = make_problem(3, 0, 10, 4, 1);
  EXPECT_NO_THROW(resq::cpu::gemm_w4a4_w8a8(q.xview(), q.w.view(), nullptr, GetParam()));
  // K4 = K8 = 0: every output is the bias alone.
  const Problem r = make_problem(2, 5, 0, 0, 1);
  std::vector<float> y(10, -1.0f);
  resq::cpu::gemm_w4a4_w8a8(r.xview(), r.w.view(), y.data(), GetParam());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(y[i], r.bias[i % 5]);
}

INSTANTIATE_TEST_SUITE_P(Kernels, GemmIsa, ::testing::ValuesIn(all_kernels()),
                         [](const ::testing::TestParamInfo<CpuKernel>& info) {
                           return std::string(resq::cpu::cpu_kernel_name(info.param));
                         });

TEST(Gemm, ErrorPaths) {
  const Problem p = make_problem(2, 3, 6, 4, 9);
  std::vector<float> y(6);
  std::vector<int32_t> a(6), b(6);
  auto x = p.xview();
  auto w = p.w.view();
  using resq::ShapeError;
  EXPECT_THROW(resq::cpu::gemm_w4a4_w8a8(x, w, nullptr), ShapeError);
  EXPECT_THROW(resq::cpu::gemm_w4a4_w8a8_reference(x, w, nullptr), ShapeError);
  EXPECT_THROW(resq::cpu::gemm_int_accumulate(x, w, a.data(), nullptr), ShapeError);
  {
    auto bad = x;
    bad.M = -1;
    EXPECT_THROW(resq::cpu::gemm_w4a4_w8a8(bad, w, y.data()), ShapeError);
    EXPECT_THROW(resq::cpu::gemm_int_accumulate_reference(bad, w, a.data(), b.data()), ShapeError);
  }
  {
    auto bad = w;
    bad.dims.N = -3;
    EXPECT_THROW(resq::cpu::gemm_w4a4_w8a8(x, bad, y.data()), ShapeError);
  }
  {
    auto bad = x;
    bad.K4 = 8;  // mismatch with the weight's K4 = 6
    EXPECT_THROW(resq::cpu::gemm_w4a4_w8a8(bad, w, y.data()), ShapeError);
  }
  {
    auto bad = x;
    bad.xq4 = nullptr;
    EXPECT_THROW(resq::cpu::gemm_w4a4_w8a8(bad, w, y.data()), ShapeError);
  }
  {
    auto bad = w;
    bad.w8 = nullptr;
    EXPECT_THROW(resq::cpu::gemm_int_accumulate(x, bad, a.data(), b.data()), ShapeError);
  }
  {
    auto bad = w;
    bad.ldw8 += 16;  // a padded (GPU-layout) row: the CPU tiles read rows back to back
    EXPECT_THROW(resq::cpu::gemm_w4a4_w8a8(x, bad, y.data()), ShapeError);
    EXPECT_THROW(resq::cpu::gemm_int_accumulate_reference(x, bad, a.data(), b.data()), ShapeError);
  }
  {
    auto bad = w;
    bad.rs4 = nullptr;  // needed by the epilogue, not by the raw accumulators
    EXPECT_THROW(resq::cpu::gemm_w4a4_w8a8(x, bad, y.data()), ShapeError);
    EXPECT_NO_THROW(resq::cpu::gemm_int_accumulate(x, bad, a.data(), b.data()));
  }
  {
    auto bad = x;
    bad.sx8 = nullptr;
    EXPECT_THROW(resq::cpu::gemm_w4a4_w8a8_reference(bad, w, y.data()), ShapeError);
  }
  {
    auto bx = x;
    auto bw = w;
    bx.K8 = bw.dims.K8 = resq::format::kMaxPartDim + 1;
    EXPECT_THROW(resq::cpu::gemm_w4a4_w8a8(bx, bw, y.data()), ShapeError);
  }
}

TEST(CpuKernelSelection, ParseResolveAndEnvironment) {
  EXPECT_EQ(resq::cpu::parse_cpu_kernel("ref"), CpuKernel::kReference);
  EXPECT_EQ(resq::cpu::parse_cpu_kernel("avx2"), CpuKernel::kAvx2);
  EXPECT_EQ(resq::cpu::parse_cpu_kernel("vnni"), CpuKernel::kVnni);
  EXPECT_EQ(resq::cpu::parse_cpu_kernel("auto"), CpuKernel::kAuto);
  EXPECT_THROW(resq::cpu::parse_cpu_kernel("sse"), resq::ConfigError);
  EXPECT_EQ(resq::cpu::resolve_cpu_kernel(CpuKernel::kReference), CpuKernel::kReference);

  const char* saved = std::getenv("RESQ_CPU_KERNEL");
  const std::string saved_value = saved ? saved : "";
  ::setenv("RESQ_CPU_KERNEL", "ref", 1);
  EXPECT_EQ(resq::cpu::resolve_cpu_kernel(CpuKernel::kAuto), CpuKernel::kReference);
  // An explicit request wins over the environment.
  if (resq::cpu::cpu_kernel_available(CpuKernel::kAvx2)) {
    EXPECT_EQ(resq::cpu::resolve_cpu_kernel(CpuKernel::kAvx2), CpuKernel::kAvx2);
  }
  ::setenv("RESQ_CPU_KERNEL", "bogus", 1);
  EXPECT_THROW(resq::cpu::resolve_cpu_kernel(CpuKernel::kAuto), resq::ConfigError);
  ::unsetenv("RESQ_CPU_KERNEL");
  const CpuKernel best = resq::cpu::resolve_cpu_kernel(CpuKernel::kAuto);
  const auto f = resq::cpu::cpu_features();
  if (f.avx512f && f.avx512bw && f.avx512vnni) {
    EXPECT_EQ(best, CpuKernel::kVnni);
  } else if (f.avx2 && f.fma) {
    EXPECT_EQ(best, CpuKernel::kAvx2);
    EXPECT_THROW(resq::cpu::resolve_cpu_kernel(CpuKernel::kVnni), resq::UnsupportedError);
  } else {
    EXPECT_EQ(best, CpuKernel::kReference);
    EXPECT_THROW(resq::cpu::resolve_cpu_kernel(CpuKernel::kAvx2), resq::UnsupportedError);
  }
  if (saved) ::setenv("RESQ_CPU_KERNEL", saved_value.c_str(), 1);
  const std::string features = resq::cpu::cpu_features_string();
  EXPECT_EQ(features.find("avx2") != std::string::npos, f.avx2) << features;
}

TEST(Bf16, RoundsToNearestEvenAndKeepsSpecials) {
  auto from_bits = [](uint32_t b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f;
  };
  const std::vector<uint32_t> in = {
      0x3F800000,  // 1.0 -> 0x3F80
      0x3F808000,  // exact tie, even below -> 0x3F80
      0x3F818000,  // exact tie, odd below -> 0x3F82
      0x3F808001,  // just above the tie -> 0x3F81
      0x3F807FFF,  // just below the tie -> 0x3F80
      0x7F7FFFFF,  // FLT_MAX rounds up to inf -> 0x7F80
      0xFF800000,  // -inf
      0x80000000,  // -0
      0x7FC00001,  // quiet NaN -> 0x7FC0
      0x7F800001,  // signaling NaN with payload only in the low bits -> must stay NaN: 0x7FC0
      0xFF800001,  // negative NaN -> 0xFFC0
      0x00000001,  // smallest subnormal -> 0
  };
  const std::vector<uint16_t> expect = {0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x7F80,
                                        0xFF80, 0x8000, 0x7FC0, 0x7FC0, 0xFFC0, 0x0000};
  std::vector<float> src;
  for (uint32_t b : in) src.push_back(from_bits(b));
  std::vector<uint16_t> out(src.size());
  resq::cpu::convert_f32_to_bf16(src.data(), static_cast<int64_t>(src.size()), out.data());
  EXPECT_EQ(out, expect);
  EXPECT_THROW(resq::cpu::convert_f32_to_bf16(src.data(), -1, out.data()), resq::ShapeError);
  EXPECT_THROW(resq::cpu::convert_f32_to_bf16(nullptr, 2, out.data()), resq::ShapeError);
}

}  // namespace
