// CUDA row dequantization (x̂ = s · (q − z) per element, one rounded fp32 product): the read-back
// step of the GPU KV-cache fake quant (src/runtime/packed_cuda.cpp). One thread per element.
#include <string>

#include "cuda/kv_dequant.cuh"
#include "resq/cuda/device.h"

namespace resq::gpu {
namespace {

constexpr int kDequantThreads = 256;
// Grid cap; the kernel loops over the remaining elements (grid-stride).
constexpr int64_t kMaxDequantCtas = int64_t{1} << 20;

// out [q.M][ldo] float: element i of the flattened [M][K] row block.
__global__ void dequantize_rows_kernel(GpuActivationsView q, float* out, int64_t ldo) {
  const int64_t K = q.K4 + q.K8;
  const int64_t total = q.M * K;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t m = i / K;
    const int64_t k = i - m * K;
    out[m * ldo + k] = dequantize_activation_element(q, m, k);
  }
}

}  // namespace

void dequantize_rows_cuda(const GpuActivationsView& q, float* out, int64_t ldo, cudaStream_t stream) {
  const std::string fn = "dequantize_rows_cuda";
  const int64_t K = q.K4 + q.K8;
  if (ldo == 0) ldo = K;
  RESQ_CHECK_OR_THROW(q.M >= 0 && q.K4 >= 0 && q.K8 >= 0 && ldo >= K, ShapeError,
                      fn + ": M = " + std::to_string(q.M) + ", K4 = " + std::to_string(q.K4) + ", K8 = " +
                          std::to_string(q.K8) + ", ldo = " + std::to_string(ldo) + " (need ldo >= K4 + K8)");
  if (q.M == 0 || K == 0) return;
  RESQ_CHECK_OR_THROW(out != nullptr, ShapeError, fn + ": out is required");
  RESQ_CHECK_OR_THROW(q.K4 == 0 || (q.xq4 && q.sx4 && q.zx4 && q.ldx4 >= part4_row_bytes(q.K4)), ShapeError,
                      fn + ": xq4/sx4/zx4 are required and ldx4 = " + std::to_string(q.ldx4) +
                          " must be >= ceil(K4 / 2) = " + std::to_string(part4_row_bytes(q.K4)) + " when K4 > 0");
  RESQ_CHECK_OR_THROW(q.K8 == 0 || (q.xq8 && q.sx8 && q.zx8 && q.ldx8 >= q.K8), ShapeError,
                      fn + ": xq8/sx8/zx8 are required and ldx8 = " + std::to_string(q.ldx8) +
                          " must be >= K8 = " + std::to_string(q.K8) + " when K8 > 0");
  cudaFuncAttributes attr{};
  require_kernel_image(cudaFuncGetAttributes(&attr, dequantize_rows_kernel), fn.c_str());
  const int64_t total = q.M * K;
  int64_t ctas = (total + kDequantThreads - 1) / kDequantThreads;
  if (ctas > kMaxDequantCtas) ctas = kMaxDequantCtas;
  dequantize_rows_kernel<<<static_cast<unsigned>(ctas), kDequantThreads, 0, stream>>>(q, out, ldo);
  RESQ_CUDA_CHECK_LAUNCH("dequantize_rows_kernel");
}

}  // namespace resq::gpu
