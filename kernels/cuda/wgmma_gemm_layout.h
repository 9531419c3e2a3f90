// Operand and workspace layout of the sm_90a prefill GEMM (kernels/cuda/wgmma_gemm.cu) as plain
// __host__ __device__ functions: the 4-bit parts widened once to int8 rows (activations u4 -> u8,
// weights s4 -> s8), the int32 accumulator planes of the two parts, and the fold of both planes into
// format::epilogue_value. The kernels and the CPU emulation (tests/kernels/wgmma_gemm_test.cpp) call
// the very same functions.
#pragma once

#include <cstdint>

#include "cuda/gpu_layout.h"
#include "resq/common/host_device.h"

namespace resq::gpu {

// Row stride (bytes = elements) of a widened 4-bit part: K4 int8 values, padded with zeros to a
// multiple of 16 so that TMA sees a 16-byte aligned row pitch (the zero columns add 0 to every dot
// product, in both operands).
RESQ_HOST_DEVICE constexpr int64_t widened4_row_stride(int64_t K4) { return round_up(K4, 16); }

// Row stride (elements) of an int32 accumulator plane [M][ldacc]: 4 int32 = 16 bytes (the CUTLASS
// epilogue's 128-bit store alignment).
RESQ_HOST_DEVICE constexpr int64_t acc_plane_stride(int64_t N) { return round_up(N, 4); }

// Byte k of a widened row from a packed 4-bit row (low nibble first, format/packed.h): element k of
// [0, K4) as uint8 (activations, 0..15) or as int8 bit pattern (weights, -8..7 sign-extended);
// k in [K4, widened4_row_stride(K4)) is 0.
RESQ_HOST_DEVICE constexpr uint8_t widen4_element(const uint8_t* packed_row, int64_t K4, int64_t k, bool is_signed) {
  if (k >= K4) return 0;
  const uint32_t nib = (packed_row[k >> 1] >> ((k & 1) * 4)) & 0xFu;
  return static_cast<uint8_t>(is_signed && (nib & 0x8u) ? (nib | 0xF0u) : nib);
}

// Four widened bytes k0 .. k0+3 (k0 % 4 == 0) as one little-endian word: what one thread of the
// widening kernel stores (2 packed bytes in, 4 bytes out).
RESQ_HOST_DEVICE constexpr uint32_t widen4_word(const uint8_t* packed_row, int64_t K4, int64_t k0, bool is_signed) {
  return static_cast<uint32_t>(widen4_element(packed_row, K4, k0, is_signed)) |
         (static_cast<uint32_t>(widen4_element(packed_row, K4, k0 + 1, is_signed)) << 8) |
         (static_cast<uint32_t>(widen4_element(packed_row, K4, k0 + 2, is_signed)) << 16) |
         (static_cast<uint32_t>(widen4_element(packed_row, K4, k0 + 3, is_signed)) << 24);
}

// The fold: y[m, n] from the two int32 planes acc4 / acc8 [M][ldacc] (either may be null when its
// part is empty) -- exactly epilogue_element of the existing kernels, so results stay bit-exact.
RESQ_HOST_DEVICE inline float fold_element(const GpuActivationsView& x, const GpuLinearView& w, const int32_t* acc4,
                                           const int32_t* acc8, int64_t ldacc, int64_t m, int64_t n) {
  const int32_t a4 = x.K4 > 0 ? acc4[m * ldacc + n] : 0;
  const int32_t a8 = x.K8 > 0 ? acc8[m * ldacc + n] : 0;
  return epilogue_element(x, w, m, n, a4, a8);
}

// Device workspace of one call: widened activations [M][widened4_row_stride(K4)] (uint8) and the two
// accumulator planes [M][acc_plane_stride(N)] int32, each region 256-byte aligned. Byte offsets.
struct WgmmaWorkspace {
  int64_t x4_offset = 0;
  int64_t acc4_offset = 0;
  int64_t acc8_offset = 0;
  int64_t bytes = 0;
};
RESQ_HOST_DEVICE constexpr int64_t align256(int64_t b) { return round_up(b, 256); }
RESQ_HOST_DEVICE inline WgmmaWorkspace wgmma_workspace(int64_t M, int64_t N, int64_t K4, int64_t K8) {
  WgmmaWorkspace s;
  const int64_t plane = align256(M * acc_plane_stride(N) * 4);
  s.x4_offset = 0;
  s.acc4_offset = K4 > 0 ? align256(M * widened4_row_stride(K4)) : 0;
  s.acc8_offset = s.acc4_offset + (K4 > 0 ? plane : 0);
  s.bytes = s.acc8_offset + (K8 > 0 ? plane : 0);
  return s;
}

}  // namespace resq::gpu
