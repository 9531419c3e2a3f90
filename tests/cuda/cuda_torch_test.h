// Fixture of the GPU tests that run torch CUDA tensors through resq's kernels: skips (never fails)
// without a device, without a CUDA libtorch, or when the packed CUDA runtime cannot run here.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

#include "resq/cuda/device.h"
#include "resq/runtime/packed_cuda.h"

namespace resq::test {

class CudaTorchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (gpu::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount reports none)";
    if (!at::hasCUDA()) GTEST_SKIP() << "this libtorch has no CUDA (at::hasCUDA() is false)";
    const std::string why = packed_cuda_unavailable_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
  static at::Device cuda() { return at::Device(at::kCUDA, 0); }
};

}  // namespace resq::test
