// Launcher of the CUDA mixed W4A4+W8A8 GEMM: Y = epilogue(X4·W4ᵀ, X8·W8ᵀ) in one kernel (tensor-core
// mma.sync, cp.async pipeline), bit-identical to resq::cpu::gemm_w4a4_w8a8_reference. Plain C++
// declarations (no torch, no CUDA types other than cudaStream_t), so g++ code can call it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/gpu_layout.h"

namespace resq::gpu {

enum class GemmOutput { kFloat32, kBFloat16 };
// kAuto: 128x128 tiles when they fill the GPU (ceil(M/128) * ceil(N/128) >= SM count), else 32x64.
enum class GemmTile { kAuto, kLarge, kSmall };

// x: device activations [M][ldx4 / ldx8] in GPU layout (cuda/gpu_layout.h), w: device weights
// from gpu_linear_view of a format::PackedLinear re-strided to 16 bytes (w4 [N][ldw4], w8 [N][ldw8]:
// zero padding), y: device output [M][ldy] float32 or bf16 bits (ldy >= N, elements). Runs on `stream`, asynchronously.
// y[m, n] = format::epilogue_value(acc4[m, n], acc8[m, n], ...) exactly (no FMA contraction).
// Throws ShapeError for inconsistent dims/strides/alignment/null pointers, UnsupportedError when
// the device is older than sm_80 or the binary has no kernel image for it, CudaError on CUDA
// failures (launch errors included; execution errors surface at the next checked call).
void mixed_gemm_cuda(const GpuActivationsView& x, const GpuLinearView& w, void* y, int64_t ldy,
                     GemmOutput out, cudaStream_t stream, GemmTile tile = GemmTile::kAuto);

// "sm_80/86/89: mma.sync m16n8k64 u4.s4 + m16n8k32 u8.s8" or "sm_90a: int4 unpacked to int8,
// mma.sync m16n8k32 u8.s8" for compute capability major.minor (what the kernel does there).
const char* mixed_gemm_path_name(int major, int minor);

}  // namespace resq::gpu
