// GPU tests of the CUDA kernels against the CPU references, bit for bit: act_quant (fp32 and bf16
// input, column gather, online Hadamard, dense rotation) vs cpu::quantize_activations_reference,
// mixed_gemm (fp32 and bf16 output, both tile configurations) vs cpu::gemm_w4a4_w8a8_reference,
// on random inputs with fixed seeds and ragged shapes. Every test that needs a device
// GTEST_SKIP()s when cudaGetDeviceCount reports none; argument checks run without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/quantize.h"
#include "cuda/act_quant.cuh"
#include "cuda/mixed_gemm.cuh"
#include "cuda/act_transform.h"
#include "resq/cuda/device.h"
#include "cuda/device_linear.h"
#include "cuda/gpu_layout.h"
#include "cuda/device_acts.h"
#include "resq/linalg/random.h"
#include "resq/linalg/rotation.h"

namespace {

using namespace resq::gpu;  // NOLINT
using resq::format::packed4_row_bytes;

class CudaDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount reports none)";
  }
};

std::vector<float> random_rows(int64_t M, int64_t K, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(M * K));
  for (auto& v : x) v = normal(rng) * (rng() % 23 == 0 ? 30.0f : 1.0f);
  // A few special rows: all zero, all positive, all negative.
  if (M > 3) {
    std::fill(x.begin(), x.begin() + K, 0.0f);
    for (int64_t k = 0; k < K; ++k) x[static_cast<size_t>(K + k)] = std::fabs(x[static_cast<size_t>(K + k)]);
    for (int64_t k = 0; k < K; ++k) x[static_cast<size_t>(2 * K + k)] = -std::fabs(x[static_cast<size_t>(2 * K + k)]);
  }
  return x;
}

// Device outputs of act_quant, downloaded, compared with the CPU reference of the rows `z`
// (already gathered / transformed on the host).
struct ActOut {
  int64_t M, K4, K8, ldq4, ldq8;
  DeviceBuffer<uint8_t> xq4, xq8;
  DeviceBuffer<float> sx4, sx8;
  DeviceBuffer<int32_t> zx4, zx8;
  ActOut(int64_t M_, int64_t K4_, int64_t K8_)
      : M(M_), K4(K4_), K8(K8_), ldq4(gpu_row_stride(packed4_row_bytes(K4_))),
        ldq8(gpu_row_stride(K8_)), xq4(static_cast<size_t>(M_ * ldq4)), xq8(static_cast<size_t>(M_ * ldq8)),
        sx4(static_cast<size_t>(M_)), sx8(static_cast<size_t>(M_)), zx4(static_cast<size_t>(M_)),
        zx8(static_cast<size_t>(M_)) {}
  ActQuantArgs args(float clip4, float clip8) {
    ActQuantArgs a;
    a.M = M;
    a.K4 = K4;
    a.K8 = K8;
    a.clip4 = clip4;
    a.clip8 = clip8;
    a.xq4 = xq4.get();
    a.ldq4 = ldq4;
    a.xq8 = xq8.get();
    a.ldq8 = ldq8;
    a.sx4 = sx4.get();
    a.zx4 = zx4.get();
    a.sx8 = sx8.get();
    a.zx8 = zx8.get();
    return a;
  }
  void expect_equals_reference(const std::vector<float>& z, float clip4, float clip8) const {
    const int64_t rb4 = packed4_row_bytes(K4);
    std::vector<uint8_t> w4(static_cast<size_t>(M * rb4)), w8(static_cast<size_t>(M * K8));
    std::vector<float> ws4(static_cast<size_t>(M)), ws8(static_cast<size_t>(M));
    std::vector<int32_t> wz4(static_cast<size_t>(M)), wz8(static_cast<size_t>(M));
    resq::cpu::quantize_activations_reference(z.data(), M, K4, K8, clip4, clip8, w4.data(), w8.data(),
                                              ws4.data(), wz4.data(), ws8.data(), wz8.data());
    const auto g4 = xq4.download(), g8 = xq8.download();
    const auto gs4 = sx4.download(), gs8 = sx8.download();
    const auto gz4 = zx4.download(), gz8 = zx8.download();
    for (int64_t m = 0; m < M; ++m) {
      ASSERT_EQ(std::memcmp(&gs4[m], &ws4[m], 4), 0) << "sx4 row " << m;
      ASSERT_EQ(gz4[m], wz4[m]) << "zx4 row " << m;
      ASSERT_EQ(std::memcmp(&gs8[m], &ws8[m], 4), 0) << "sx8 row " << m;
      ASSERT_EQ(gz8[m], wz8[m]) << "zx8 row " << m;
      for (int64_t b = 0; b < ldq4 && K4 > 0; ++b) {
        ASSERT_EQ(g4[static_cast<size_t>(m * ldq4 + b)], b < rb4 ? w4[static_cast<size_t>(m * rb4 + b)] : 0)
            << "xq4 row " << m << " byte " << b;
      }
      for (int64_t b = 0; b < ldq8 && K8 > 0; ++b) {
        ASSERT_EQ(g8[static_cast<size_t>(m * ldq8 + b)], b < K8 ? w8[static_cast<size_t>(m * K8 + b)] : 0)
            << "xq8 row " << m << " byte " << b;
      }
    }
  }
};

TEST_F(CudaDeviceTest, ActQuantEqualsCpuReference) {
  struct C { int64_t M, K4, K8; float c4, c8; };
  const C cases[] = {{1, 4096, 512, 1.0f, 1.0f}, {37, 77, 19, 0.9f, 1.0f}, {5, 0, 33, 1.0f, 0.8f},
                     {9, 1001, 0, 1.0f, 1.0f},   {300, 2048, 256, 0.95f, 0.9f}, {4, 0, 0, 1.0f, 1.0f}};
  uint32_t seed = 1;
  for (const auto& c : cases) {
    const int64_t K = c.K4 + c.K8;
    const auto x = random_rows(c.M, K, seed++);
    DeviceBuffer<float> dx(x);
    ActOut out(c.M, c.K4, c.K8);
    act_quant_cuda(dx.get(), out.args(c.c4, c.c8), nullptr);
    RESQ_CUDA_CHECK(cudaDeviceSynchronize());
    out.expect_equals_reference(x, c.c4, c.c8);
  }
}

TEST_F(CudaDeviceTest, ActQuantBf16InputAndGatherEqualCpuReference) {
  const int64_t M = 23, K4 = 448, K8 = 64, K = K4 + K8, ld = K + 5;
  std::mt19937 rng(4);
  std::vector<uint16_t> xb(static_cast<size_t>(M * ld));
  for (auto& v : xb) {
    const float f = std::normal_distribution<float>(0.0f, 2.0f)(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    v = static_cast<uint16_t>(bits >> 16);
  }
  std::vector<int32_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<float> z(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = 0; j < K; ++j) {
      const uint32_t bits = static_cast<uint32_t>(xb[static_cast<size_t>(m * ld + perm[static_cast<size_t>(j)])]) << 16;
      std::memcpy(&z[static_cast<size_t>(m * K + j)], &bits, 4);
    }
  }
  DeviceBuffer<uint16_t> dx(xb);
  DeviceBuffer<int32_t> dperm(perm);
  ActOut out(M, K4, K8);
  ActQuantArgs a = out.args(1.0f, 1.0f);
  a.ldx_in = ld;
  a.perm = dperm.get();
  act_quant_bf16_cuda(dx.get(), a, nullptr);
  RESQ_CUDA_CHECK(cudaDeviceSynchronize());
  out.expect_equals_reference(z, 1.0f, 1.0f);
}

// Online Hadamard of every model intermediate size (make-model shapes and families; factorizations
// in tests/kernels/act_hadamard_test.cpp): power of two, the GPU equals apply_online_hadamard(float)
// + the CPU quantizer; block > 1 (up to 344 for 11008 = 32 x 344, with the block mix staged in
// groups of columns), the fixed-order host reference of act_transform.h, bit for bit. Also a
// 4/8 split, bf16 input and more rows than SMs on the largest blocks.
TEST_F(CudaDeviceTest, ActQuantWithOnlineHadamardEqualsCpu) {
  struct C {
    int64_t n, K8, M;
    bool bf16;
  };
  const C cases[] = {{4096, 0, 17, false},  {8192, 0, 17, false},  {192, 0, 17, false},
                     {172, 0, 17, false},   {352, 0, 17, false},   {160, 0, 17, false},
                     {4864, 0, 17, false},  {11008, 0, 17, false}, {14336, 0, 17, false},
                     {18944, 0, 17, false}, {11008, 1376, 9, false}, {18944, 0, 9, true},
                     {11008, 0, 300, false}};
  for (const C& c : cases) {
    const int64_t n = c.n, M = c.M, K4 = n - c.K8;
    SCOPED_TRACE("n = " + std::to_string(n) + ", K8 = " + std::to_string(c.K8) + ", M = " + std::to_string(M) +
                 (c.bf16 ? ", bf16" : ""));
    resq::Rng rng(static_cast<uint64_t>(n));
    const resq::OnlineHadamard t = resq::make_online_hadamard(n, rng, /*random_signs=*/true);
    const HadamardRowHost h = make_hadamard_row_host(t.n, t.pow2, t.block, t.block_matrix, t.signs);
    auto x = random_rows(M, n, static_cast<uint32_t>(n + M));
    std::vector<uint16_t> xb;
    if (c.bf16) {
      // The kernel converts bf16 exactly; the host works on the same (truncated) values.
      xb.resize(x.size());
      for (size_t i = 0; i < x.size(); ++i) {
        uint32_t bits;
        std::memcpy(&bits, &x[i], 4);
        xb[i] = static_cast<uint16_t>(bits >> 16);
        bits = static_cast<uint32_t>(xb[i]) << 16;
        std::memcpy(&x[i], &bits, 4);
      }
    }
    std::vector<float> z = x;
    if (t.block == 1) {
      resq::apply_online_hadamard(t, z.data(), M);
    } else {
      for (int64_t m = 0; m < M; ++m) hadamard_row_reference(h.view(), z.data() + m * n);
    }
    DeviceBuffer<float> dx(x), dsigns(h.signs), dmix(h.mix);
    DeviceBuffer<uint16_t> dxb(xb);
    ActOut out(M, K4, c.K8);
    ActQuantArgs a = out.args(1.0f, 1.0f);
    a.transform = ActTransform::kHadamard;
    a.hadamard = h.view();
    a.hadamard.signs = dsigns.get();
    a.hadamard.mix = h.mix.empty() ? nullptr : dmix.get();
    if (c.bf16) {
      act_quant_bf16_cuda(dxb.get(), a, nullptr);
    } else {
      act_quant_cuda(dx.get(), a, nullptr);
    }
    RESQ_CUDA_CHECK(cudaDeviceSynchronize());
    out.expect_equals_reference(z, 1.0f, 1.0f);
  }
}

TEST_F(CudaDeviceTest, ActQuantWithPerHeadRotationEqualsHostReference) {
  const int64_t tokens = 9, heads = 4, hd = 128, K8 = 16, K4 = hd - K8;
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  std::vector<float> R(static_cast<size_t>(hd * hd));
  for (auto& v : R) v = normal(rng);
  auto x = random_rows(tokens * heads, hd, 22);  // [tokens][heads * hd] == [tokens * heads][hd]
  std::vector<float> z = x;
  for (int64_t r = 0; r < tokens * heads; ++r) rotation_row_reference(R.data(), hd, z.data() + r * hd);
  DeviceBuffer<float> dx(x), dR(R);
  ActOut out(tokens * heads, K4, K8);
  ActQuantArgs a = out.args(1.0f, 1.0f);
  a.transform = ActTransform::kRotation;
  a.rotation = dR.get();
  act_quant_cuda(dx.get(), a, nullptr);
  RESQ_CUDA_CHECK(cudaDeviceSynchronize());
  out.expect_equals_reference(z, 1.0f, 1.0f);
}

// ------------------------------------------------------------------ mixed GEMM

using resq::test::DeviceActs;

TEST_F(CudaDeviceTest, MixedGemmEqualsCpuReference) {
  struct C { int64_t M, N, K4, K8; bool bias; };
  const C cases[] = {{1, 4096, 3584, 512, false}, {16, 1000, 2048, 256, true}, {129, 257, 1100, 300, true},
                     {300, 520, 2048, 256, false}, {33, 130, 77, 19, true},   {17, 9, 0, 45, true},
                     {40, 66, 513, 0, false},      {3, 20, 0, 0, true}};
  uint32_t seed = 50;
  for (const auto& c : cases) {
    const int64_t K = c.K4 + c.K8;
    std::mt19937 rng(seed++);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> w(static_cast<size_t>(c.N * K)), bias(static_cast<size_t>(c.N));
    for (auto& v : w) v = normal(rng) * 0.05f;
    for (auto& v : bias) v = normal(rng);
    const auto x = random_rows(c.M, K, seed * 7);
    const auto lin = resq::cpu::quantize_linear_rtn(w.data(), c.bias ? bias.data() : nullptr, {c.N, c.K4, c.K8});
    const auto xq = resq::cpu::quantize_activations(x.data(), c.M, c.K4, c.K8, 1.0f, 1.0f,
                                                    resq::cpu::CpuKernel::kReference);
    std::vector<float> want(static_cast<size_t>(c.M * c.N));
    resq::cpu::gemm_w4a4_w8a8_reference(xq.view(), lin.view(), want.data());
    std::vector<uint16_t> want16(want.size());
    resq::cpu::convert_f32_to_bf16(want.data(), static_cast<int64_t>(want.size()), want16.data());

    const DevicePackedLinear dw(lin.view());
    DeviceActs dxq(restride_activations_for_gpu(xq.view(), 0, 0, 0xEE));
    for (GemmTile tile : {GemmTile::kSmall, GemmTile::kLarge, GemmTile::kAuto}) {
      DeviceBuffer<float> y(static_cast<size_t>(c.M * c.N));
      DeviceBuffer<uint16_t> y16(static_cast<size_t>(c.M * c.N));
      mixed_gemm_cuda(dxq.view(), dw.view(), y.get(), c.N, GemmOutput::kFloat32, nullptr, tile);
      mixed_gemm_cuda(dxq.view(), dw.view(), y16.get(), c.N, GemmOutput::kBFloat16, nullptr, tile);
      RESQ_CUDA_CHECK(cudaDeviceSynchronize());
      const auto got = y.download();
      const auto got16 = y16.download();
      ASSERT_EQ(std::memcmp(got.data(), want.data(), want.size() * 4), 0)
          << "fp32 M=" << c.M << " N=" << c.N << " K4=" << c.K4 << " K8=" << c.K8 << " tile " << static_cast<int>(tile);
      ASSERT_EQ(got16, want16) << "bf16 M=" << c.M << " N=" << c.N << " tile " << static_cast<int>(tile);
    }
  }
}

// GPU act_quant feeding the GPU GEMM equals the CPU quantizer + CPU GEMM.
TEST_F(CudaDeviceTest, QuantizeThenGemmEqualsCpuPipeline) {
  const int64_t M = 64, N = 384, K4 = 1792, K8 = 256, K = K4 + K8;
  std::mt19937 rng(77);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(N * K));
  for (auto& v : w) v = normal(rng) * 0.05f;
  const auto x = random_rows(M, K, 78);
  const auto lin = resq::cpu::quantize_linear_rtn(w.data(), nullptr, {N, K4, K8});
  const auto xq = resq::cpu::quantize_activations(x.data(), M, K4, K8, 1.0f, 1.0f, resq::cpu::CpuKernel::kReference);
  std::vector<float> want(static_cast<size_t>(M * N));
  resq::cpu::gemm_w4a4_w8a8_reference(xq.view(), lin.view(), want.data());

  const DevicePackedLinear dw(lin.view());
  DeviceBuffer<float> dx(x);
  ActOut out(M, K4, K8);
  const ActQuantArgs qa = out.args(1.0f, 1.0f);
  act_quant_cuda(dx.get(), qa, nullptr);
  const GpuActivationsView v = quantized_activations_view(qa);
  DeviceBuffer<float> y(static_cast<size_t>(M * N));
  mixed_gemm_cuda(v, dw.view(), y.get(), N, GemmOutput::kFloat32, nullptr);
  RESQ_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = y.download();
  ASSERT_EQ(std::memcmp(got.data(), want.data(), want.size() * 4), 0);
}

// ------------------------------------------------------------------ argument checks (no device)

TEST(CudaKernelArgs, ActQuantRejectsBadArguments) {
  ActQuantArgs a;
  a.M = 2;
  a.K4 = 33;
  a.K8 = 8;
  a.ldq4 = 16;  // < ceil(33/2) = 17
  a.ldq8 = 16;
  const float* x = reinterpret_cast<const float*>(16);
  EXPECT_THROW(act_quant_cuda(x, a, nullptr), resq::ShapeError);
  a.ldq4 = 32;
  a.clip4 = 0.0f;
  EXPECT_THROW(act_quant_cuda(x, a, nullptr), resq::ConfigError);
  a.clip4 = 1.0f;
  EXPECT_THROW(act_quant_cuda(x, a, nullptr), resq::ShapeError);  // null outputs
  a.K4 = -1;
  EXPECT_THROW(act_quant_cuda(x, a, nullptr), resq::ShapeError);
}

TEST(CudaKernelArgs, MixedGemmRejectsBadArguments) {
  GpuActivationsView x;
  GpuLinearView w;
  x.M = 4;
  x.K4 = 64;
  w.N = 8;
  w.K4 = 32;  // mismatch
  float* y = reinterpret_cast<float*>(16);
  EXPECT_THROW(mixed_gemm_cuda(x, w, y, 8, GemmOutput::kFloat32, nullptr), resq::ShapeError);
  w.K4 = 64;
  x.ldx4 = 20;  // not a multiple of 16
  w.ldw4 = 32;
  EXPECT_THROW(mixed_gemm_cuda(x, w, y, 8, GemmOutput::kFloat32, nullptr), resq::ShapeError);
  x.ldx4 = 32;
  EXPECT_THROW(mixed_gemm_cuda(x, w, y, 4, GemmOutput::kFloat32, nullptr), resq::ShapeError);  // ldy < N
  EXPECT_THROW(mixed_gemm_cuda(x, w, y, 8, GemmOutput::kFloat32, nullptr), resq::ShapeError);  // null xq4
}

}  // namespace
