// GPTQ's torch path (detail::gptq_quantize_weight_torch, the device path) on CPU tensors against the
// host path (LAPACK + raw loops): exact properties, closeness of codes and proxy loss on random ragged
// cases, the RESQ_GPTQ_TORCH switch, and the error paths. tests/cuda/gptq_cuda_test.cpp runs the same
// comparison on CUDA tensors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include "common/gptq_cases.h"
#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/quant/quantizers.h"

namespace resq {
namespace {

using test::GptqAgreement;
using test::GptqCase;

// Sets an environment variable for one scope and restores the previous value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// Closeness bars. Both paths run the same fp32 operations in the same order; they differ only by
// FMA contraction (the torch path's addcmul/addr kernels and OpenBLAS's ger/gemm may fuse a product
// and a sum where the host loop rounds twice), the lazy update's gemm orientation (summation order
// over the block) and Cholesky + triangular solve vs potrf + trtri in float64 (U equal up to its last
// float32 bit). Each such difference is ~1 ulp of a weight; a code flips only when a scaled weight
// lies within that of a rounding boundary (x.5), and a flip changes that row's later columns through
// the error feedback. Measured on CPU tensors (libtorch 1.13, OpenBLAS, this repo's dev machine) over
// gptq_comparison_cases(): 8 of 9 cases give identical codes (6 bit-identical dequant; the 16-bit
// parts' dequant are the updated weights and show the ulp differences), the largest 0.999985 equal
// codes (2 of 133,120 flipped); worst proxy-loss difference 5.3e-6 (16-bit low part: small loss).
// The bars sit just below / above, with room for another CPU's BLAS kernels.
constexpr double kMinEqualCodes = 0.9999;
constexpr double kMaxLossRelDiff = 2e-5;

TEST(GptqTorch, MatchesHostPathOnCpuTensors) {
  double worst_codes = 1.0, worst_loss = 0.0;
  for (const GptqCase& c : test::gptq_comparison_cases()) {
    const GptqAgreement a = test::compare_gptq_paths(c, at::Device(at::kCPU), /*same_scales=*/true);
    std::printf("  %-45s equal codes %.6f, proxy loss rel. diff %.3g%s\n", c.name.c_str(), a.equal_codes,
                a.loss_rel_diff, a.bit_identical ? ", bit identical" : "");
    EXPECT_GE(a.equal_codes, kMinEqualCodes) << c.name;
    EXPECT_LE(a.loss_rel_diff, kMaxLossRelDiff) << c.name;
    worst_codes = std::min(worst_codes, a.equal_codes);
    worst_loss = std::max(worst_loss, a.loss_rel_diff);
  }
  std::printf("  worst: equal codes %.6f, proxy loss rel. diff %.3g\n", worst_codes, worst_loss);
}

// Nothing quantized (16/16): no column has an error, so the weights come back unchanged bit for bit
// (dead columns zeroed) and q is 0 — on both paths.
TEST(GptqTorch, NothingQuantizedReturnsTheWeights) {
  const test::Calib cal = test::make_calibration(200, 50, 7101);
  at::Tensor H = cal.H.clone();
  H.select(0, 7).zero_();
  H.select(1, 7).zero_();
  const at::Tensor w = test::randn_tensor({21, 50}, 7102, 0.05);
  const at::Tensor mask = high_mask_last(50, 6);
  const QuantizedWeight r = detail::gptq_quantize_weight_torch(w, H, mask, 16, 16, 0.01, 16, 1.0, false);
  at::Tensor expect = w.clone();
  expect.select(1, 7).zero_();
  EXPECT_TRUE(at::equal(r.dequant, expect));
  EXPECT_EQ(r.q.abs().sum().item<int64_t>(), 0);
  EXPECT_TRUE(at::equal(r.scale_low, at::ones({21})));
}

// Empty weights: shapes only, no factorization (the host path's early return).
TEST(GptqTorch, EmptyWeights) {
  const QuantizedWeight r = detail::gptq_quantize_weight_torch(at::zeros({0, 6}), -at::eye(6, at::kDouble),
                                                               high_mask_last(6, 2), 4, 8, 0.01, 4, 1.0, false);
  EXPECT_EQ(r.dequant.sizes(), (std::vector<int64_t>{0, 6}));
  EXPECT_EQ(r.q.sizes(), (std::vector<int64_t>{0, 6}));
  EXPECT_EQ(r.q.scalar_type(), at::kChar);
}

// The Hessian as workspace (float64, contiguous, on w's device): the torch path uses its buffer for
// the damped matrix; same results as without, also through a damping retry.
TEST(GptqTorch, HessianAsWorkspace) {
  const test::Calib cal = test::make_calibration(300, 64, 7201);
  const at::Tensor w = test::randn_tensor({20, 64}, 7202, 0.05);
  const at::Tensor mask = high_mask_last(64, 8);
  at::Tensor indefinite = cal.H.clone();
  const double h = std::sqrt(indefinite[10][10].item<double>() * indefinite[11][11].item<double>());
  indefinite[10][11] = 1.5 * h;
  indefinite[11][10] = 1.5 * h;
  for (const at::Tensor& H : {cal.H, indefinite}) {
    const QuantizedWeight ref = detail::gptq_quantize_weight_torch(w, H, mask, 4, 8, 0.0, 16, 1.0, false);
    at::Tensor ws = H.clone();
    const QuantizedWeight r = detail::gptq_quantize_weight_torch(w, ws, mask, 4, 8, 0.0, 16, 1.0, false, true);
    EXPECT_TRUE(at::equal(ref.q, r.q));
    EXPECT_TRUE(at::equal(ref.dequant, r.dequant));
    EXPECT_EQ(ref.damp_fraction, r.damp_fraction);
    EXPECT_FALSE(at::equal(ws, H)) << "the buffer was expected to be used as workspace";
  }
  EXPECT_GT(detail::gptq_quantize_weight_torch(w, indefinite, mask, 4, 8, 0.0, 16, 1.0, false).damp_fraction, 0.0);
}

// RESQ_GPTQ_TORCH=1 sends CPU tensors through the torch path (bit-identical to calling it), 0 through
// the host path; anything else is a UsageError naming the variable.
TEST(GptqTorch, EnvironmentSwitch) {
  // The largest case: there the two paths' results differ in a few codes (measured), which lets the
  // test tell which path ran.
  const GptqCase c = test::gptq_comparison_cases().back();
  const auto run = [&] {
    return gptq_quantize_weight(c.w, c.H, c.mask, c.bits_low, c.bits_high, c.percdamp, c.blocksize, 1.0, c.mse_clip);
  };
  const QuantizedWeight torch_path = detail::gptq_quantize_weight_torch(c.w, c.H, c.mask, c.bits_low, c.bits_high,
                                                                        c.percdamp, c.blocksize, 1.0, c.mse_clip);
  QuantizedWeight host_path;
  {
    ScopedEnv env("RESQ_GPTQ_TORCH", "0");
    host_path = run();
  }
  ASSERT_FALSE(at::equal(torch_path.dequant, host_path.dequant));
  {
    ScopedEnv env("RESQ_GPTQ_TORCH", "1");
    const QuantizedWeight r = run();
    EXPECT_TRUE(at::equal(r.dequant, torch_path.dequant));
    EXPECT_TRUE(at::equal(r.q, torch_path.q));
  }
  {
    ScopedEnv env("RESQ_GPTQ_TORCH", "yes");
    const std::string msg = test::message_of<UsageError>([&] { run(); });
    EXPECT_NE(msg.find("RESQ_GPTQ_TORCH"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'yes'"), std::string::npos) << msg;
  }
}

TEST(GptqTorch, ErrorPaths) {
  const int64_t N = 4, K = 8;
  const at::Tensor w = test::randn_tensor({N, K}, 7301);
  const at::Tensor H = at::eye(K, at::kDouble);
  const at::Tensor mask = high_mask_last(K, 1);
  const auto torch_path = [](const at::Tensor& w_, const at::Tensor& h_, const at::Tensor& m_, int bh, double pd,
                             int64_t bs) {
    return detail::gptq_quantize_weight_torch(w_, h_, m_, 4, bh, pd, bs, 1.0, false);
  };
  EXPECT_THROW(torch_path(w, at::eye(K + 1, at::kDouble), mask, 8, 0.01, 4), ShapeError);
  EXPECT_THROW(torch_path(w, H.flatten(), mask, 8, 0.01, 4), ShapeError);
  EXPECT_THROW(torch_path(w, H, high_mask_last(K - 1, 1), 8, 0.01, 4), ShapeError);
  EXPECT_THROW(torch_path(w.flatten(), H, mask, 8, 0.01, 4), ShapeError);
  EXPECT_THROW(torch_path(w.to(at::kInt), H, mask, 8, 0.01, 4), ShapeError);
  EXPECT_THROW(torch_path(at::Tensor(), H, mask, 8, 0.01, 4), ShapeError);
  EXPECT_THROW(torch_path(w, H, mask, 9, 0.01, 4), ConfigError);
  EXPECT_THROW(torch_path(w, H, mask, 8, -0.1, 4), ConfigError);
  EXPECT_THROW(torch_path(w, H, mask, 8, 0.01, 0), ConfigError);
  // Not positive definite whatever the damping (negative diagonal), or not finite: resq::Error with
  // the host path's message.
  at::Tensor nan_h = H.clone();
  nan_h[2][3] = std::nan("");
  nan_h[3][2] = std::nan("");
  for (const at::Tensor& bad : {at::Tensor(-H), nan_h}) {
    const std::string msg = test::message_of<Error>([&] { torch_path(w, bad, mask, 8, 0.01, 4); });
    EXPECT_NE(msg.find("Cholesky factorization of the damped Hessian [8, 8] failed even with dampening"),
              std::string::npos)
        << msg;
    EXPECT_EQ(msg, test::message_of<Error>([&] { gptq_quantize_weight(w, bad, mask, 4, 8, 0.01, 4, 1.0, false); }));
  }
}

}  // namespace
}  // namespace resq
