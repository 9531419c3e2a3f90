// Launchers of the sm_90a prefill GEMM: both parts of the mixed W4A4+W8A8 linear on warpgroup MMA
// (wgmma u8·s8 -> s32, TMA loads; CUTLASS 3.x collective mainloop), the 4-bit parts widened to int8
// once, then the exact epilogue of format::epilogue_value over the two int32 planes (a fold kernel),
// bit-identical to resq::cpu::gemm_w4a4_w8a8_reference. Plain C++ declarations (no CUTLASS, no torch).
// Built only with CUTLASS headers (RESQ_HAVE_WGMMA; see docs/CUDA.md "sm_90a prefill GEMM").
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/gpu_layout.h"
#include "cuda/mixed_gemm.cuh"
#include "cuda/wgmma_gemm_layout.h"
#include "resq/cuda/device.h"

namespace resq::gpu {

// Widens the 4-bit part of packed rows: src [rows][lds] (format/packed.h nibbles, K4 per row) ->
// dst [rows][widened4_row_stride(K4)] int8 bytes (widen4_element; is_signed: weights s4 -> s8,
// else activations u4 -> u8). Device pointers, 16-byte aligned; runs on `stream`. Throws ShapeError.
void widen4_rows_cuda(const uint8_t* src, int64_t lds, int64_t rows, int64_t K4, uint8_t* dst, bool is_signed,
                      cudaStream_t stream);

// The weights of one packed linear with the 4-bit part widened to int8 once, on the device (2x the
// 4-bit weight bytes: prefill is compute-bound, and it spares the widening in every K loop). Keeps a
// copy of `w` (the original GPU view, still used for scales, row sums, bias and the 8-bit part).
class WgmmaWeights {
 public:
  WgmmaWeights() = default;
  // w: a packed linear in GPU layout on the current device. Widens on `stream` (synchronized).
  explicit WgmmaWeights(const GpuLinearView& w, cudaStream_t stream = nullptr);
  const GpuLinearView& view() const { return w_; }
  bool empty() const { return !built_; }  // default-constructed: no weights
  // [acc_plane_stride(N)][widened4_row_stride(K4)] int8, rows past N zero.
  const int8_t* w4_wide() const { return reinterpret_cast<const int8_t*>(w4_wide_.get()); }
  // The 8-bit part as the GEMM reads it: [acc_plane_stride(N)][ldw8], w.w8 itself when N % 4 == 0,
  // else a zero-row-padded copy.
  const int8_t* w8_rows() const {
    return w8_pad_.size() ? reinterpret_cast<const int8_t*>(w8_pad_.get()) : w_.w8;
  }

 private:
  GpuLinearView w_;
  bool built_ = false;
  DeviceBuffer<uint8_t> w4_wide_;
  DeviceBuffer<uint8_t> w8_pad_;
};

// Whether this binary holds the wgmma path and the current device is sm_90 (Hopper).
bool wgmma_gemm_available();
// wgmma_gemm_available() and not turned off by the environment: RESQ_WGMMA=0 forces the mma.sync
// prefill kernel (mixed_gemm_cuda) on Hopper too, e.g. to compare the two.
bool wgmma_gemm_enabled();
// The prefill dispatch of PackedCudaLinear / `resq bench`: M rows go to wgmma_gemm_cuda (M above the
// decode kernel's 16 rows, the path enabled), else to mixed_gemm_cuda / decode_gemv_cuda.
inline bool wgmma_gemm_applies(int64_t M, bool enabled) { return enabled && M > 16; }

// y [M][ldy] (fp32 or bf16 bits) = epilogue(X4·W4ᵀ, X8·W8ᵀ): widen X4 (workspace), one CUTLASS
// wgmma GEMM per non-empty part into int32 planes (workspace), then the fold kernel. workspace: device
// bytes >= wgmma_workspace(M, N, K4, K8).bytes, 256-byte aligned. Throws ShapeError / UnsupportedError
// (not sm_90, no wgmma path compiled) / CudaError.
void wgmma_gemm_cuda(const GpuActivationsView& x, const WgmmaWeights& w, void* y, int64_t ldy, GemmOutput out,
                     void* workspace, cudaStream_t stream);

// "sm_90a: wgmma u8.s8 (CUTLASS 3.x TMA warp-specialized), int4 widened to int8 once, fold epilogue".
const char* wgmma_gemm_path_name();

}  // namespace resq::gpu
