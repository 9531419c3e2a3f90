// The device-generic code paths of the torch side, run on CPU tensors against the CPU paths: the
// online Hadamard as torch ops (what CUDA tensors take) vs the raw loops, and --device parsing.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

#include "resq/common/error.h"
#include "resq/linalg/random.h"
#include "resq/linalg/rotation.h"
#include "resq/model/device.h"
#include "resq/transforms/online.h"

namespace resq {
namespace {

// The raw CPU transform of x [rows, n] (float32 or float64), through the flat-pointer API.
at::Tensor raw_hadamard(const OnlineHadamard& t, const at::Tensor& x) {
  at::Tensor y = x.contiguous().clone();
  if (y.scalar_type() == at::kDouble) {
    apply_online_hadamard(t, y.data_ptr<double>(), y.size(0));
  } else {
    apply_online_hadamard(t, y.data_ptr<float>(), y.size(0));
  }
  return y;
}

TEST(OnlineHadamardTorch, PowerOfTwoIsBitIdenticalToTheRawLoops) {
  for (int64_t n : {1, 2, 8, 64, 256}) {
    for (bool signs : {false, true}) {
      Rng rng(static_cast<uint64_t>(n) * 7 + signs);
      const OnlineHadamard t = make_online_hadamard(n, rng, signs);
      ASSERT_EQ(t.block, 1) << n;
      at::manual_seed(n);
      for (auto dt : {at::kFloat, at::kDouble}) {
        const at::Tensor x = at::randn({5, n}, at::TensorOptions().dtype(dt));
        const at::Tensor got = apply_online_hadamard_torch(t, x);
        EXPECT_TRUE(at::equal(got, raw_hadamard(t, x))) << "n=" << n << " signs=" << signs << " dtype=" << dt;
      }
    }
  }
}

TEST(OnlineHadamardTorch, BlockSizesMatchTheRawLoopsAndTheDenseMatrix) {
  // 12 = Paley block 12 x pow2 1; 172 = random orthogonal 43 x 4; 1000 = 125 x 8; 40 = 5 x 8 or Paley.
  for (int64_t n : {12, 40, 172, 1000}) {
    Rng rng(static_cast<uint64_t>(n));
    const OnlineHadamard t = make_online_hadamard(n, rng, /*random_signs=*/true);
    at::manual_seed(n);
    const at::Tensor x64 = at::randn({3, 2, n}, at::TensorOptions().dtype(at::kDouble));
    const at::Tensor got64 = apply_online_hadamard_torch(t, x64);
    ASSERT_EQ(got64.sizes(), x64.sizes());
    // Independent yardstick: the dense T built entry by entry from the formula.
    const MatrixXdR dense = online_hadamard_dense(t);
    const at::Tensor T = at::from_blob(const_cast<double*>(dense.data()), {n, n}, at::TensorOptions().dtype(at::kDouble));
    const at::Tensor want = at::matmul(x64, T);
    EXPECT_LT((got64 - want).abs().max().item<double>(), 1e-12) << n;
    EXPECT_LT((got64.reshape({-1, n}) - raw_hadamard(t, x64.reshape({-1, n}))).abs().max().item<double>(), 1e-12) << n;
    // float32: the same as the raw float loops up to the block GEMM's summation order.
    const at::Tensor x32 = x64.to(at::kFloat);
    const at::Tensor got32 = apply_online_hadamard_torch(t, x32);
    EXPECT_EQ(got32.scalar_type(), at::kFloat);
    EXPECT_LT((got32.reshape({-1, n}) - raw_hadamard(t, x32.reshape({-1, n}))).abs().max().item<float>(), 2e-5f) << n;
  }
}

TEST(OnlineHadamardTorch, Bf16InputIsComputedInFloatAndReturnedInBf16) {
  Rng rng(3);
  const OnlineHadamard t = make_online_hadamard(64, rng, true);
  const at::Tensor x = at::randn({4, 64}).to(at::kBFloat16);
  const at::Tensor got = apply_online_hadamard_torch(t, x);
  EXPECT_EQ(got.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(got, raw_hadamard(t, x.to(at::kFloat)).to(at::kBFloat16)));
}

TEST(OnlineHadamardTorch, WrongLastDimensionNamesBothSizes) {
  Rng rng(1);
  const OnlineHadamard t = make_online_hadamard(16, rng, true);
  try {
    apply_online_hadamard_torch(t, at::zeros({2, 8}));
    FAIL() << "no error";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("size 16"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("last dim 8"), std::string::npos) << e.what();
  }
}

TEST(ResolveDevice, ParsesCpuAutoAndRejectsOthersNamingTheFlag) {
  EXPECT_TRUE(resolve_device("--device", "cpu").is_cpu());
  EXPECT_EQ(resolve_device("--device", "auto").is_cuda(), cuda_usable());
  for (const char* bad : {"tpu", "cuda:", "cuda:x", "CUDA", "", "cuda:123456"}) {
    try {
      resolve_device("--device", bad);
      FAIL() << bad;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--device"), std::string::npos) << e.what();
    }
  }
}

TEST(ResolveDevice, CudaWithoutADeviceIsUnsupportedAndSaysWhy) {
  if (cuda_usable()) GTEST_SKIP() << "a CUDA device is visible here";
  for (const char* v : {"cuda", "cuda:0", "cuda:3"}) {
    try {
      resolve_device("--device", v);
      FAIL() << v;
    } catch (const UnsupportedError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("--device"), std::string::npos) << what;
      EXPECT_TRUE(what.find("no CUDA") != std::string::npos || what.find("does not exist") != std::string::npos) << what;
    }
  }
  EXPECT_FALSE(device_memory(at::Device(at::kCPU)).known);
  EXPECT_EQ(device_memory_note(at::Device(at::kCPU)), "");
  EXPECT_EQ(device_description(at::Device(at::kCPU)), "cpu");
}

}  // namespace
}  // namespace resq
