// Integer GEMM of the packed W4A4 + W8A8 linear (resq/format/packed.h): scalar reference and the
// optimized AVX2 / AVX-512 VNNI kernels (chosen at run time), plus the fp32 -> bf16 conversion.
#pragma once

#include <cstdint>

#include "cpu/features.h"
#include "resq/format/packed.h"

namespace resq::cpu {

// Raw integer accumulators (exact, identical for every implementation):
//   acc4[m, n] = sum_{k < K4} xq4[m, k] * q4[n, k],  acc8[m, n] = sum_{k < K8} xq8[m, k] * q8[n, k]
// x: M rows with xq4/xq8 (scales and zeros unused, may be null); w: w4/w8 (scales, row sums and
// bias unused, may be null). acc4, acc8: int32 [M][N], both required.
// Throws resq::ShapeError for negative or mismatched dims (x.K4 != w.dims.K4, ...), a part larger
// than format::kMaxPartDim or a missing required pointer.
void gemm_int_accumulate_reference(const format::QuantizedActivationsView& x,
                                   const format::PackedLinearView& w, int32_t* acc4,
                                   int32_t* acc8);
void gemm_int_accumulate(const format::QuantizedActivationsView& x,
                         const format::PackedLinearView& w, int32_t* acc4, int32_t* acc8,
                         CpuKernel kernel = CpuKernel::kAuto);

// y float [M][N] = format::epilogue_value applied to the accumulators above:
//   y[m, n] = sx4[m]*sw4[n]*(acc4 - zx4[m]*rs4[n]) + sx8[m]*sw8[n]*(acc8 - zx8[m]*rs8[n]) + bias[n]
// in the fixed fp32 operation order documented in packed.h, so every implementation gives the
// same bits. Needs scales/zeros/row sums of non-empty parts; bias optional. Throws like above.
void gemm_w4a4_w8a8_reference(const format::QuantizedActivationsView& x,
                              const format::PackedLinearView& w, float* y);
void gemm_w4a4_w8a8(const format::QuantizedActivationsView& x, const format::PackedLinearView& w,
                    float* y, CpuKernel kernel = CpuKernel::kAuto);

// fp32 [n] -> bfloat16 bits [n], round to nearest even; overflow gives +-inf; NaN stays a quiet
// NaN with its sign. Throws resq::ShapeError for n < 0 or null pointers with n > 0.
void convert_f32_to_bf16(const float* src, int64_t n, uint16_t* dst);

}  // namespace resq::cpu
