// The int32 GEMM of the sm_90a prefill path, as a plain C++ declaration: the one translation unit
// that includes CUTLASS (kernels/cuda/sm90/wgmma_int8_gemm.cu, compiled for sm_90a only) defines it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace resq::gpu::sm90 {

// D [M][ldd] int32 = A [M][K] (uint8, row stride lda bytes) · B [N][K]ᵀ (int8, row stride ldb bytes)
// on wgmma m64nNk32 u8.s8 with TMA loads (CUTLASS 3.x KernelTmaWarpSpecializedCooperative, 128x128x128
// tiles). Exact (int32 wrap-around never occurs for |K| <= 65536 with 8-bit operands... nor is it
// relied on: the sum is the same int32 the CPU reference computes). Needs K % 16 == 0, N % 4 == 0,
// lda, ldb % 16 == 0, ldd % 4 == 0 and 16-byte aligned pointers; A rows past M are never read, B
// has N rows. Returns an empty string on success, else why CUTLASS refused (can_implement / launch).
const char* int8_gemm_s32(const uint8_t* A, int64_t lda, const int8_t* B, int64_t ldb, int32_t* D, int64_t ldd,
                          int64_t M, int64_t N, int64_t K, cudaStream_t stream);

// Shared memory bytes and threads per CTA of the kernel (for the docs and `resq bench`).
int int8_gemm_smem_bytes();
int int8_gemm_threads();

}  // namespace resq::gpu::sm90
