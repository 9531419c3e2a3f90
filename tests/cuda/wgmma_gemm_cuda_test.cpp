// GPU tests of the sm_90a prefill GEMM (kernels/cuda/wgmma_gemm.cu: widen + CUTLASS wgmma int32 GEMMs
// + fold) against cpu::gemm_w4a4_w8a8_reference bit for bit (fp32 memcmp, bf16 equal bits), on
// ragged shapes (M, N, K4, K8 not multiples of the 128 tiles; odd K4; N % 4 != 0; one part empty),
// and against mixed_gemm_cuda on the same inputs. Skip without a device; on a non-Hopper device or
// a binary built without CUTLASS the device tests skip saying so; argument checks run everywhere.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/quantize.h"
#include "cuda/device_linear.h"
#include "cuda/gpu_layout.h"
#include "cuda/device_acts.h"
#include "cuda/mixed_gemm.cuh"
#include "cuda/wgmma_gemm.cuh"
#include "kernels/gemm_problem.h"
#include "resq/cuda/check.h"
#include "resq/cuda/device.h"

namespace {

using namespace resq::gpu;  // NOLINT

class WgmmaGemmCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount reports none)";
    if (!wgmma_gemm_available()) {
      GTEST_SKIP() << "wgmma path unavailable: not an sm_90 device, or built without CUTLASS headers";
    }
  }
};

using Case = resq::test::GemmCase;

void run_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE(resq::test::describe(c));
  std::mt19937 rng(seed);
  const resq::test::GemmReference ref = resq::test::random_gemm_reference(c, rng, 19, 25.0f, 1.0f, 0.9f);
  const auto& lin = ref.lin;
  const auto& xq = ref.xq;
  const std::vector<float>& want = ref.want;
  const std::vector<uint16_t>& want16 = ref.want16;

  const DevicePackedLinear dw(lin.view());
  const WgmmaWeights ww(dw.view());
  // Activations in GPU layout with garbage past each row (never used).
  const resq::test::DeviceActs acts(restride_activations_for_gpu(xq.view(), 0, 0, 0xEE));
  const GpuActivationsView xv = acts.view();
  DeviceBuffer<uint8_t> ws(static_cast<size_t>(wgmma_workspace(c.M, c.N, c.K4, c.K8).bytes) + 1);
  DeviceBuffer<float> y(static_cast<size_t>(c.M * c.N));
  DeviceBuffer<uint16_t> y16(static_cast<size_t>(c.M * c.N));
  wgmma_gemm_cuda(xv, ww, y.get(), c.N, GemmOutput::kFloat32, ws.get(), nullptr);
  wgmma_gemm_cuda(xv, ww, y16.get(), c.N, GemmOutput::kBFloat16, ws.get(), nullptr);
  RESQ_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = y.download();
  const std::vector<uint16_t> got16 = y16.download();
  ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * 4)) << "fp32 output differs from the CPU reference";
  ASSERT_EQ(got16, want16) << "bf16 output differs";
}

TEST_F(WgmmaGemmCudaTest, EqualsCpuReferenceBitForBit) {
  const Case cases[] = {{1, 4, 16, 16, true},     {17, 7, 33, 19, true},    {130, 130, 127, 64, false},
                        {129, 257, 0, 300, true}, {300, 129, 513, 0, true}, {256, 384, 3584, 512, true},
                        {513, 1001, 1000, 77, false}};
  uint32_t seed = 11;
  for (const Case& c : cases) run_case(c, seed++);
}

TEST(WgmmaGemmArgs, BadDimsAndPointersThrowShapeError) {
  GpuActivationsView x;
  x.M = 4;
  x.K4 = 16;
  const WgmmaWeights empty;  // K4 = 0: mismatch
  EXPECT_THROW(widen4_rows_cuda(nullptr, 4, 2, 16, nullptr, false, nullptr), resq::ShapeError);  // stride < 8
  EXPECT_THROW(widen4_rows_cuda(nullptr, 16, 2, 16, nullptr, false, nullptr), resq::ShapeError);  // null
  float y[8];
  EXPECT_THROW(wgmma_gemm_cuda(x, empty, y, 8, GemmOutput::kFloat32, nullptr, nullptr), resq::ShapeError);
}

}  // namespace
