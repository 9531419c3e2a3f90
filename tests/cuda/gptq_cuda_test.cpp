// GPTQ's torch path on CUDA tensors (what `resq quantize --device cuda` runs) against the host path on
// the CPU: the exact properties and closeness checks of tests/common/gptq_cases.h, plus one
// layer-sized case with its time printed. Skips without a GPU or a CUDA libtorch.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>

#include "common/gptq_cases.h"
#include "cuda_torch_test.h"
#include "resq/quant/quantizers.h"

namespace resq {
namespace {

using GptqCudaTest = test::CudaTorchTest;

// Closeness bars on CUDA. The same fp32 operations in the same order as the host path; the
// differences come from FMA contraction (nvcc fuses the product and sum of addcmul / addr: err and
// the in-block updates round once where the host loop rounds twice), cuBLAS's summation order in the
// lazy-update gemm, and cuSOLVER's Cholesky + triangular solve vs LAPACK's potrf + trtri in float64
// (U equal up to its last float32 bit). On CPU tensors (same ops, fewer contractions) the measured
// worst case is 0.999985 equal codes and 5.3e-6 proxy-loss difference (tests/quant/test_gptq_torch.cpp).
// On CUDA every err and update carries a ~1 ulp difference, so more scaled weights near a rounding
// boundary flip: NOT YET MEASURED on a GPU (no device when this was written); the bars allow ~10×
// the CPU's differences and the test prints the measured values to tighten them.
constexpr double kMinEqualCodes = 0.999;
constexpr double kMaxLossRelDiff = 2e-4;

TEST_F(GptqCudaTest, MatchesHostPath) {
  for (const test::GptqCase& c : test::gptq_comparison_cases()) {
    // weight_scales on CUDA runs the torch formula: bit-equal scales for the fixed clip; the MSE
    // search may break near-ties differently (quantizers.h), so only there scales are not compared.
    const test::GptqAgreement a = test::compare_gptq_paths(c, cuda(), /*same_scales=*/!c.mse_clip);
    std::printf("  %-45s equal codes %.6f, proxy loss rel. diff %.3g%s\n", c.name.c_str(), a.equal_codes,
                a.loss_rel_diff, a.bit_identical ? ", bit identical" : "");
    EXPECT_GE(a.equal_codes, kMinEqualCodes) << c.name;
    EXPECT_LE(a.loss_rel_diff, kMaxLossRelDiff) << c.name;
  }
}

// A layer-sized weight (2048 x 2048, blocksize 128, last 128 columns 8-bit): same checks, and the
// device time of the torch path printed (warm: a first call pays cuSOLVER/cuBLAS initialization).
TEST_F(GptqCudaTest, LayerSizedCaseAndTime) {
  const int64_t N = 2048, K = 2048;
  test::GptqCase c;
  c.name = "2048 x 2048, blocksize 128";
  c.w = test::randn_tensor({N, K}, 7401, 0.02);
  {
    // H = Xᵀ X of correlated inputs, computed on the device (float64).
    const at::Tensor z = test::randn_tensor({3 * K, K / 8}, 7402).to(cuda(), at::kDouble);
    const at::Tensor mix = test::randn_tensor({K / 8, K}, 7403).to(cuda(), at::kDouble);
    const at::Tensor X = z.matmul(mix) + 0.3 * test::randn_tensor({3 * K, K}, 7404).to(cuda(), at::kDouble);
    c.H = X.t().matmul(X).cpu();
  }
  c.mask = high_mask_last(K, 128);
  const test::GptqAgreement a = test::compare_gptq_paths(c, cuda(), /*same_scales=*/true);
  std::printf("  %s: equal codes %.6f, proxy loss rel. diff %.3g\n", c.name.c_str(), a.equal_codes, a.loss_rel_diff);
  EXPECT_GE(a.equal_codes, kMinEqualCodes);
  EXPECT_LE(a.loss_rel_diff, kMaxLossRelDiff);

  const at::Tensor w = c.w.to(cuda()), H = c.H.to(cuda());
  const auto t0 = std::chrono::steady_clock::now();
  const QuantizedWeight r = detail::gptq_quantize_weight_torch(w, H, c.mask, 4, 8, 0.01, 128, 1.0, false);
  (void)r.dequant.sum().item<float>();  // waits for the device
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const auto h0 = std::chrono::steady_clock::now();
  (void)gptq_quantize_weight(c.w, c.H, c.mask, 4, 8, 0.01, 128, 1.0, false);
  const double host_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - h0).count();
  std::printf("  time: torch path on CUDA %.1f ms (%.1f us per column), host path %.1f ms\n", ms,
              1e3 * ms / static_cast<double>(K), host_ms);
}

}  // namespace
}  // namespace resq
