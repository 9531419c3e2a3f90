// GPU tests of the decode kernel (kernels/cuda/decode_gemv.cu, M <= 16) against the CPU references
// bit for bit: decode_gemv_cuda on pre-quantized rows vs cpu::gemm_w4a4_w8a8_reference, and the
// fused decode_quant_gemv(_bf16)_cuda on fp32 / bf16 rows (with and without a column gather) vs
// cpu::quantize_activations_reference + the GEMM reference, fp32 and bf16 outputs, ragged shapes,
// every M in 1..16, shapes that split K (so the split-K workspace and its counters are reused by
// successive calls). Device tests GTEST_SKIP() without a device; argument checks run everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/quantize.h"
#include "cuda/decode_gemv.cuh"
#include "cuda/device_linear.h"
#include "cuda/gpu_layout.h"
#include "cuda/device_acts.h"
#include "resq/cuda/check.h"
#include "resq/cuda/device.h"

namespace {

using namespace resq::gpu;  // NOLINT

class DecodeGemvCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount reports none)";
  }
};

uint16_t bf16_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return f32_bits_to_bf16(b);
}

struct Case {
  int64_t M, N, K4, K8;
  bool bias;
};

// Runs every path of one case and compares with the CPU reference (fp32 memcmp, bf16 equal bits).
void run_case(const Case& c, bool perm_on, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << "M=" << c.M << " N=" << c.N << " K4=" << c.K4 << " K8=" << c.K8
                                    << " perm=" << perm_on);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t K = c.K4 + c.K8, ldx = K + 3;
  std::vector<float> x(static_cast<size_t>(c.M * ldx)), w(static_cast<size_t>(c.N * K)), bias(static_cast<size_t>(c.N));
  for (auto& v : x) v = normal(rng) * (rng() % 19 == 0 ? 25.0f : 1.0f);
  for (auto& v : w) v = normal(rng) * 0.05f;
  for (auto& v : bias) v = normal(rng);
  std::vector<int32_t> perm;
  if (perm_on) {
    perm.resize(static_cast<size_t>(K));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
  }
  const auto lin = resq::cpu::quantize_linear_rtn(w.data(), c.bias ? bias.data() : nullptr, {c.N, c.K4, c.K8});
  const DevicePackedLinear dw(lin.view());
  const float clip4 = 1.0f, clip8 = 0.9f;
  // Reference of rows `src` (fp32 values): gather, quantize, GEMM.
  auto reference = [&](const std::vector<float>& src, resq::cpu::QuantizedActivations* q_out) {
    std::vector<float> z(static_cast<size_t>(c.M * K));
    for (int64_t m = 0; m < c.M; ++m) {
      for (int64_t j = 0; j < K; ++j) {
        z[static_cast<size_t>(m * K + j)] = src[static_cast<size_t>(m * ldx + (perm_on ? perm[static_cast<size_t>(j)] : j))];
      }
    }
    auto q = resq::cpu::quantize_activations(z.data(), c.M, c.K4, c.K8, clip4, clip8, resq::cpu::CpuKernel::kReference);
    std::vector<float> y(static_cast<size_t>(c.M * c.N));
    resq::cpu::gemm_w4a4_w8a8_reference(q.view(), lin.view(), y.data());
    if (q_out) *q_out = std::move(q);
    return y;
  };
  auto check = [&](const std::vector<float>& want, const DeviceBuffer<float>& y, const DeviceBuffer<uint16_t>& y16,
                   int64_t ldy, const char* what) {
    const auto got = y.download();
    const auto got16 = y16.download();
    for (int64_t m = 0; m < c.M; ++m) {
      ASSERT_EQ(std::memcmp(got.data() + m * ldy, want.data() + m * c.N, static_cast<size_t>(c.N) * 4), 0)
          << what << ": fp32 row " << m;
      for (int64_t n = 0; n < c.N; ++n) {
        ASSERT_EQ(got16[static_cast<size_t>(m * ldy + n)], bf16_bits(want[static_cast<size_t>(m * c.N + n)]))
            << what << ": bf16 " << m << ", " << n;
      }
    }
  };
  const int64_t ldy = c.N + 5;
  DeviceBuffer<float> y(static_cast<size_t>(c.M * ldy));
  DeviceBuffer<uint16_t> y16(static_cast<size_t>(c.M * ldy));

  // Pre-quantized (act_quant's layout; garbage past each row, which the kernel must not use).
  if (!perm_on) {
    resq::cpu::QuantizedActivations q;
    const auto want = reference(x, &q);
    const resq::test::DeviceActs acts(restride_activations_for_gpu(q.view(), 0, 0, 0xEE));
    const GpuActivationsView v = acts.view();
    decode_gemv_cuda(v, dw.view(), y.get(), ldy, GemmOutput::kFloat32, nullptr);
    decode_gemv_cuda(v, dw.view(), y16.get(), ldy, GemmOutput::kBFloat16, nullptr);
    RESQ_CUDA_CHECK(cudaDeviceSynchronize());
    check(want, y, y16, ldy, "decode_gemv_cuda");
  }
  // Fused quantizer, fp32 and bf16 input.
  if (decode_fused_quant_applies(c.M, K)) {
    DeviceBuffer<int32_t> dperm(perm);
    const int32_t* p = perm_on ? dperm.get() : nullptr;
    {
      const auto want = reference(x, nullptr);
      DeviceBuffer<float> dx(x);
      decode_quant_gemv_cuda(dx.get(), c.M, ldx, p, clip4, clip8, dw.view(), y.get(), ldy, GemmOutput::kFloat32, nullptr);
      decode_quant_gemv_cuda(dx.get(), c.M, ldx, p, clip4, clip8, dw.view(), y16.get(), ldy, GemmOutput::kBFloat16,
                             nullptr);
      RESQ_CUDA_CHECK(cudaDeviceSynchronize());
      check(want, y, y16, ldy, "decode_quant_gemv_cuda (fp32 in)");
    }
    {
      std::vector<uint16_t> xb(x.size());
      std::vector<float> xr(x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        xb[i] = bf16_bits(x[i]);
        const uint32_t bits = static_cast<uint32_t>(xb[i]) << 16;
        std::memcpy(&xr[i], &bits, 4);
      }
      const auto want = reference(xr, nullptr);
      DeviceBuffer<uint16_t> dx(xb);
      decode_quant_gemv_bf16_cuda(dx.get(), c.M, ldx, p, clip4, clip8, dw.view(), y.get(), ldy, GemmOutput::kFloat32,
                                  nullptr);
      decode_quant_gemv_bf16_cuda(dx.get(), c.M, ldx, p, clip4, clip8, dw.view(), y16.get(), ldy,
                                  GemmOutput::kBFloat16, nullptr);
      RESQ_CUDA_CHECK(cudaDeviceSynchronize());
      check(want, y, y16, ldy, "decode_quant_gemv_bf16_cuda (bf16 in)");
    }
  }
}

TEST_F(DecodeGemvCudaTest, EqualsCpuReferenceOnRaggedShapes) {
  const Case cases[] = {
      {1, 4096, 3584, 512, false},   // llama-3-8b o_proj at M = 1 (split-K)
      {16, 1000, 2048, 256, true},   // M = 16, ragged N
      {1, 70, 256, 32, true},        // many splits over few tiles
      {16, 37, 1101, 300, false},    // odd K4
      {5, 9, 0, 45, true},           // no 4-bit part
      {3, 24, 513, 0, false},        // no 8-bit part, odd K4
      {2, 11, 0, 0, true},           // both parts empty: y = bias
      {4, 8, 1, 1, false},           // tiniest parts
      {9, 130, 3000, 130, true},     // M > 8 with a ragged tile
      {1, 2048, 8192, 0, false},     // down_proj-like (K4 only, long rows)
      {16, 256, 14336, 0, true},     // staged rows above the budget: forced splits
  };
  uint32_t seed = 900;
  for (const auto& c : cases) {
    run_case(c, false, seed++);
    run_case(c, true, seed++);
  }
}

TEST_F(DecodeGemvCudaTest, EveryMUpTo16) {
  uint32_t seed = 950;
  for (int64_t M = 1; M <= 16; ++M) run_case({M, 100, 333, 64, M % 2 == 1}, M % 3 == 0, seed++);
}

TEST_F(DecodeGemvCudaTest, RepeatedCallsGiveIdenticalResults) {
  // The split-K counters are reset by the last CTA of each tile: a second (and third) call with the
  // same and with another shape must give the same bits.
  for (int rep = 0; rep < 3; ++rep) {
    run_case({1, 512, 2048, 256, true}, false, 990);
    run_case({7, 96, 4000, 100, false}, false, 991);
  }
}

// ------------------------------------------------------------------ argument checks (no device)

TEST(DecodeGemvCudaArgs, LaunchersRejectBadArgumentsBeforeAnyCudaCall) {
  GpuLinearView w;
  w.N = 8;
  w.K4 = 64;
  w.K8 = 0;
  w.ldw4 = 32;
  float* y = reinterpret_cast<float*>(256);
  const float* x = reinterpret_cast<const float*>(256);
  GpuActivationsView xa;
  xa.M = 4;
  xa.K4 = 64;
  EXPECT_THROW(decode_gemv_cuda(xa, w, y, 8, GemmOutput::kFloat32, nullptr), resq::ShapeError);  // null w4
  w.w4 = reinterpret_cast<const uint8_t*>(256);
  w.sw4 = reinterpret_cast<const float*>(256);
  w.rs4 = reinterpret_cast<const int32_t*>(256);
  EXPECT_THROW(decode_gemv_cuda(xa, w, y, 8, GemmOutput::kFloat32, nullptr), resq::ShapeError);  // null xq4
  xa.M = 17;
  EXPECT_THROW(decode_gemv_cuda(xa, w, y, 8, GemmOutput::kFloat32, nullptr), resq::ShapeError);  // M > 16
  EXPECT_THROW(decode_quant_gemv_cuda(x, 17, 64, nullptr, 1.0f, 1.0f, w, y, 8, GemmOutput::kFloat32, nullptr),
               resq::ShapeError);
  EXPECT_THROW(decode_quant_gemv_cuda(x, 0, 64, nullptr, 1.0f, 1.0f, w, y, 8, GemmOutput::kFloat32, nullptr),
               resq::ShapeError);
  EXPECT_THROW(decode_quant_gemv_cuda(x, 2, 64, nullptr, 1.0f, 1.0f, w, y, 7, GemmOutput::kFloat32, nullptr),
               resq::ShapeError);  // ldy < N
  EXPECT_THROW(decode_quant_gemv_cuda(nullptr, 2, 64, nullptr, 1.0f, 1.0f, w, y, 8, GemmOutput::kFloat32, nullptr),
               resq::ShapeError);
  EXPECT_THROW(decode_quant_gemv_cuda(x, 2, 63, nullptr, 1.0f, 1.0f, w, y, 8, GemmOutput::kFloat32, nullptr),
               resq::ShapeError);  // ldx < K
  EXPECT_THROW(decode_quant_gemv_bf16_cuda(reinterpret_cast<const uint16_t*>(256), 2, 64, nullptr, 1.5f, 1.0f, w, y, 8,
                                           GemmOutput::kFloat32, nullptr),
               resq::ConfigError);  // clip > 1
  GpuLinearView big = w;
  big.K4 = 9000;
  big.ldw4 = 4512;
  EXPECT_THROW(decode_quant_gemv_cuda(x, 2, 9000, nullptr, 1.0f, 1.0f, big, y, 8, GemmOutput::kFloat32, nullptr),
               resq::ShapeError);  // M * K above the fused quantizer's limit
}

}  // namespace
