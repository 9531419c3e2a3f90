// Launchers of the CUDA decode kernel (M <= 16): a memory-bound mixed W4A4+W8A8 GEMV that streams
// every packed weight byte once with 16-byte loads into mma.sync fragments, split-K with exact
// int32 partial sums, both parts and the fp32 epilogue in one pass, and optionally the per-token
// activation quantization fused in. Bit-identical to resq::cpu::gemm_w4a4_w8a8_reference (and, with
// the fused quantizer, to cpu::quantize_activations_reference followed by it). Plain C++
// declarations (no torch, no CUDA types other than cudaStream_t).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/decode_gemv_layout.h"
#include "cuda/gpu_layout.h"
#include "cuda/mixed_gemm.cuh"

namespace resq::gpu {

// Pre-quantized activations (e.g. from act_quant_cuda): x [M][ldx4 / ldx8] in GPU layout, 1 <= M
// <= 16; w: device weights in GPU layout (DevicePackedLinear::view); y [M][ldy] float32 or bf16. Runs on
// `stream`. The split-K workspace is a per-device buffer of this module (grown on demand), so calls
// on different streams must not run concurrently (every resq caller uses one stream).
// Throws ShapeError (dims, strides, alignment, null pointers, M outside [1, 16]) before any CUDA
// call, UnsupportedError (device older than sm_80 / no kernel image), CudaError.
void decode_gemv_cuda(const GpuActivationsView& x, const GpuLinearView& w, void* y, int64_t ldy, GemmOutput out,
                      cudaStream_t stream);

// The same with the activation quantization fused in: x float32 or bf16 bits [M][ldx] (device),
// optionally gathered (z[j] = x[m, perm[j]], perm int32 [K4 + K8] on the device or null), then
// quantized per token and part with clip4 / clip8 exactly as act_quant_cuda (no transform). Needs
// M * (K4 + K8) <= kDecodeFusedMaxElems (decode_fused_quant_applies); otherwise ShapeError.
// ConfigError for a clip outside (0, 1].
void decode_quant_gemv_cuda(const float* x, int64_t M, int64_t ldx, const int32_t* perm, float clip4, float clip8,
                            const GpuLinearView& w, void* y, int64_t ldy, GemmOutput out, cudaStream_t stream);
void decode_quant_gemv_bf16_cuda(const uint16_t* x, int64_t M, int64_t ldx, const int32_t* perm, float clip4,
                                 float clip8, const GpuLinearView& w, void* y, int64_t ldy, GemmOutput out,
                                 cudaStream_t stream);

// Whether the decode kernel takes M rows (1..16), and whether it can also quantize them itself.
constexpr bool decode_gemv_applies(int64_t M) { return M >= 1 && M <= kDecodeMaxM; }
constexpr bool decode_fused_quant_applies(int64_t M, int64_t K) {
  return decode_gemv_applies(M) && M * K <= kDecodeFusedMaxElems;
}

// The plan a call on the current device would use (for `resq bench` and tests; needs a device).
DecodePlan decode_gemv_plan(int64_t M, const GpuLinearView& w);

// "decode: 16-byte loads -> mma.sync m16n8k64 u4.s4 + m16n8k32 u8.s8, split-K int32" (sm_80-89) or
// the sm_90a variant (int4 widened to int8 in registers).
const char* decode_gemv_path_name(int major, int minor);

}  // namespace resq::gpu
