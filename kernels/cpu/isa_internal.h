// Internal interface between the dispatching entry points (gemm.cpp, quantize.cpp) and the
// ISA-specific kernels (isa_avx2.cpp, isa_avx512.cpp). Not part of the public API.
#pragma once

#include <algorithm>
#include <cstdint>

#include "resq/format/packed.h"

namespace resq::cpu::detail {

// Where an integer GEMM puts its results: raw accumulators and/or the fp32 epilogue output.
struct GemmOutput {
  const format::QuantizedActivationsView* x = nullptr;
  const format::PackedLinearView* w = nullptr;
  int32_t* acc4 = nullptr;  // int32 [M][N] or null
  int32_t* acc8 = nullptr;  // int32 [M][N] or null
  float* y = nullptr;       // float [M][N] or null (epilogue applied)
};

// Hands one finished tile of accumulators to `out`: t4, t8 int32 [mr][nr] (row stride nr) hold
// acc4/acc8 of rows [m0, m0 + mr) and columns [n0, n0 + nr). Defined in gemm.cpp, compiled
// without fp contraction, so the fp32 epilogue follows format::epilogue_value bit for bit.
void emit_tile(const GemmOutput& out, int64_t m0, int64_t n0, int mr, int nr, const int32_t* t4,
               const int32_t* t8);

// Full integer GEMMs (dims already validated, M > 0, N > 0): call emit_tile for every tile.
void gemm_avx512_vnni(const format::QuantizedActivationsView& x,
                      const format::PackedLinearView& w, const GemmOutput& out);
void gemm_avx2(const format::QuantizedActivationsView& x, const format::PackedLinearView& w,
               const GemmOutput& out);

// One token's part: x float [K] -> out (bits == 4: packed uint4 [packed4_row_bytes(K)], pad
// nibble 0; bits == 8: uint8 [K]) with scale/zero as in format::activation_scale_zero.
void quantize_part_scalar(const float* x, int64_t K, int bits, float clip, uint8_t* out,
                          float* scale, int32_t* zero);
void quantize_part_avx512(const float* x, int64_t K, int bits, float clip, uint8_t* out,
                          float* scale, int32_t* zero);
void quantize_part_avx2(const float* x, int64_t K, int bits, float clip, uint8_t* out,
                        float* scale, int32_t* zero);

// Cache blocking shared by the AVX2 and AVX-512 GEMMs: per task ~256 KiB of weight rows, swept by
// up to 256 tokens whose prepared rows take ~512 KiB, so both stay in a 1 MiB L2 while consecutive
// tasks of a thread reuse the token block; the N block shrinks until there are >= 16 tasks to
// balance the threads. Task t covers tokens [mi*mb, ...) x outputs [ni*nb, ...), mi = t / n_blocks.
struct GemmBlocking {
  int64_t mb = 1, nb = 16, m_blocks = 1, n_blocks = 1;
  int64_t tasks() const { return m_blocks * n_blocks; }
};

inline GemmBlocking choose_gemm_blocking(int64_t M, int64_t N, int64_t w_row_bytes, int64_t x_row_stride) {
  GemmBlocking b;
  b.nb = std::max<int64_t>(16, (int64_t{256} << 10) / std::max<int64_t>(w_row_bytes, 1) / 16 * 16);
  const int64_t x_block_rows = (int64_t{512} << 10) / std::max<int64_t>(x_row_stride, 1) / 16 * 16;
  b.mb = std::min<int64_t>(M, std::clamp<int64_t>(x_block_rows, 16, 256));
  b.m_blocks = (M + b.mb - 1) / b.mb;
  while (b.nb > 16 && b.m_blocks * ((N + b.nb - 1) / b.nb) < 16) {
    b.nb = std::max<int64_t>(16, b.nb / 2 / 16 * 16);
  }
  b.n_blocks = (N + b.nb - 1) / b.nb;
  return b;
}

}  // namespace resq::cpu::detail
