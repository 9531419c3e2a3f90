// Launcher of the CUDA row dequantization: quantized 4/8-bit rows in GPU layout -> fp32 rows,
// x̂ = s · (q − z) (the read-back of the GPU KV-cache fake quant, bit-identical to
// resq::PackedKvCacheQuant::unpack). Plain C++ declarations, plain pointers, no torch types.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/gpu_layout.h"

namespace resq::gpu {

// q: device rows [q.M] in GPU layout (e.g. act_quant_cuda's outputs through
// quantized_activations_view), out: device float [q.M][ldo] (ldo >= K4 + K8, 0 = K4 + K8; elements
// past K4 + K8 of a row are not written). out[m][k] = dequantize_activation_element(q, m, k)
// exactly (gpu_layout.h; host reference dequantize_activations_reference). Runs on `stream`,
// asynchronously. Throws ShapeError (negative dims, ldo too small, null pointers of a non-empty part)
// before any CUDA call, UnsupportedError when the binary has no kernel image for the device,
// CudaError on CUDA failures.
void dequantize_rows_cuda(const GpuActivationsView& q, float* out, int64_t ldo, cudaStream_t stream);

}  // namespace resq::gpu
