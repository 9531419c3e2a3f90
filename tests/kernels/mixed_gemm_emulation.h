// CPU emulation of the CUDA mixed W4A4+W8A8 GEMM (kernels/cuda/mixed_gemm.cu): runs the kernel's
// exact CTA / stage / warp / lane decomposition, its swizzled shared memory, cp.async zero-fill,
// ldmatrix.x4 distribution and mma.sync fragment layouts (PTX ISA), built on the same index
// functions as the kernel (cuda/mixed_gemm_layout.h, cuda/gpu_layout.h). Host-only, slow; it
// is the correctness evidence for the fragment math on machines without a GPU.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/gpu_layout.h"
#include "cuda/mixed_gemm_layout.h"

namespace resq::gpu::emulation {

// Which tensor-core path to emulate: kSm80 = native m16n8k64 .u4.s4 (sm_80/86/89) for the 4-bit
// part; kSm90 = the Hopper path (each int4 register unpacked into two int8 registers, two
// m16n8k32 .u8.s8). The 8-bit part is m16n8k32 .u8.s8 on both.
enum class MmaPath { kSm80, kSm90 };

using LaneRegs4 = uint32_t[kWarpSize][4];
using LaneRegs2 = uint32_t[kWarpSize][2];
using LaneAcc = int32_t[kWarpSize][4];

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane l supplies row_offset[l] (byte offset of a
// 16-byte row in `smem`); lane l receives in register j the 4 bytes at byte 4 * (l % 4) of the row
// supplied by lane 8 * j + l / 4.
inline void ldmatrix_x4(const uint8_t* smem, const int row_offset[kWarpSize], LaneRegs4 out) {
  for (int l = 0; l < kWarpSize; ++l) {
    for (int j = 0; j < 4; ++j) {
      std::memcpy(&out[l][j], smem + row_offset[ldsm_source_lane(l, j)] + ldsm_source_byte(l), 4);
    }
  }
}

// Throws unless every (row, col) of a rows x cols fragment was written exactly once.
inline void check_coverage(const std::vector<int>& hits, const char* what) {
  for (int h : hits) {
    if (h != 1) throw std::logic_error(std::string("fragment layout does not cover ") + what +
                                       " exactly once");
  }
}

// mma.sync.aligned.m16n8k64.row.col.s32.u4.s4.s32: D = A[16x64] (uint4) * B[64x8] (int4) + C,
// with every lane's registers scattered per the PTX fragment tables.
inline void mma_m16n8k64_u4s4(const LaneRegs4 a, const uint32_t b[kWarpSize][2], LaneAcc c) {
  int A[16][64];
  int B[64][8];
  std::vector<int> ha(16 * 64, 0), hb(64 * 8, 0), hc(16 * 8, 0);
  for (int l = 0; l < kWarpSize; ++l) {
    for (int i = 0; i < 32; ++i) {
      const int r = mma_k64_a_row(l, i), k = mma_k64_a_col(l, i);
      A[r][k] = static_cast<int>((a[l][i / 8] >> (4 * (i % 8))) & 0xFu);
      ++ha[r * 64 + k];
    }
    for (int i = 0; i < 16; ++i) {
      const int k = mma_k64_b_row(l, i), n = mma_k64_b_col(l, i);
      const int nib = static_cast<int>((b[l][i / 8] >> (4 * (i % 8))) & 0xFu);
      B[k][n] = (nib ^ 8) - 8;
      ++hb[k * 8 + n];
    }
  }
  check_coverage(ha, "A (m16n8k64)");
  check_coverage(hb, "B (m16n8k64)");
  for (int l = 0; l < kWarpSize; ++l) {
    for (int i = 0; i < 4; ++i) {
      const int r = mma_c_row(l, i), n = mma_c_col(l, i);
      ++hc[r * 8 + n];
      int32_t s = 0;
      for (int k = 0; k < 64; ++k) s += A[r][k] * B[k][n];
      c[l][i] += s;
    }
  }
  check_coverage(hc, "C (m16n8)");
}

// mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32: D = A[16x32] (uint8) * B[32x8] (int8) + C.
inline void mma_m16n8k32_u8s8(const LaneRegs4 a, const uint32_t b[kWarpSize][2], LaneAcc c) {
  int A[16][32];
  int B[32][8];
  std::vector<int> ha(16 * 32, 0), hb(32 * 8, 0), hc(16 * 8, 0);
  for (int l = 0; l < kWarpSize; ++l) {
    for (int i = 0; i < 16; ++i) {
      const int r = mma_k32_a_row(l, i), k = mma_k32_a_col(l, i);
      A[r][k] = static_cast<int>((a[l][i / 4] >> (8 * (i % 4))) & 0xFFu);
      ++ha[r * 32 + k];
    }
    for (int i = 0; i < 8; ++i) {
      const int k = mma_k32_b_row(l, i), n = mma_k32_b_col(l, i);
      B[k][n] = static_cast<int8_t>((b[l][i / 4] >> (8 * (i % 4))) & 0xFFu);
      ++hb[k * 8 + n];
    }
  }
  check_coverage(ha, "A (m16n8k32)");
  check_coverage(hb, "B (m16n8k32)");
  for (int l = 0; l < kWarpSize; ++l) {
    for (int i = 0; i < 4; ++i) {
      const int r = mma_c_row(l, i), n = mma_c_col(l, i);
      ++hc[r * 8 + n];
      int32_t s = 0;
      for (int k = 0; k < 32; ++k) s += A[r][k] * B[k][n];
      c[l][i] += s;
    }
  }
  check_coverage(hc, "C (m16n8)");
}

// The sm_90a replacement of one m16n8k64 .u4.s4: unpack each register's halves to int8 and issue
// two m16n8k32 .u8.s8 (low halves, then high halves), as mixed_gemm.cu does.
inline void mma_k64_via_int8(const LaneRegs4 a, const uint32_t b[kWarpSize][2], LaneAcc c) {
  uint32_t alo[kWarpSize][4], ahi[kWarpSize][4], blo[kWarpSize][2], bhi[kWarpSize][2];
  for (int l = 0; l < kWarpSize; ++l) {
    for (int j = 0; j < 4; ++j) {
      alo[l][j] = u4_lo_to_u8(a[l][j]);
      ahi[l][j] = u4_hi_to_u8(a[l][j]);
    }
    for (int j = 0; j < 2; ++j) {
      blo[l][j] = s4_lo_to_s8(b[l][j]);
      bhi[l][j] = s4_hi_to_s8(b[l][j]);
    }
  }
  mma_m16n8k32_u8s8(alo, blo, c);
  mma_m16n8k32_u8s8(ahi, bhi, c);
}

// Emulates mixed_gemm for tile configuration Cfg: y[m * ldy + n] (float, or bf16 bits when
// y_bf16 is non-null and y is null) for m < M, n < N. x and w point to host memory in the GPU
// layout. Elements of y outside [M) x [N) are not touched.
template <class Cfg>
void emulate_mixed_gemm(const GpuActivationsView& x, const GpuLinearView& w, float* y,
                        uint16_t* y_bf16, int64_t ldy, MmaPath path) {
  const int64_t M = x.M, N = w.N;
  const int64_t rb[2] = {part4_row_bytes(x.K4), part8_row_bytes(x.K8)};
  const int64_t T[2] = {x.K4 > 0 ? stage_count(rb[0]) : 0, x.K8 > 0 ? stage_count(rb[1]) : 0};
  const uint8_t* xa[2] = {x.xq4, x.xq8};
  const int64_t lda[2] = {x.ldx4, x.ldx8};
  const uint8_t* wb[2] = {w.w4, reinterpret_cast<const uint8_t*>(w.w8)};
  const int64_t ldb[2] = {w.ldw4, w.ldw8};
  std::vector<uint8_t> smem(static_cast<size_t>(Cfg::kSmemBytes));
  // acc[part][warp][mt][nt] : per-lane accumulator registers.
  std::vector<int32_t> acc(static_cast<size_t>(2 * Cfg::kWarps * Cfg::MT * Cfg::NT * kWarpSize * 4));
  auto acc_at = [&](int part, int warp, int mt, int nt) {
    return reinterpret_cast<LaneAcc*>(
        acc.data() + ((((part * Cfg::kWarps + warp) * Cfg::MT + mt) * Cfg::NT + nt) * kWarpSize * 4));
  };
  for (int64_t m0 = 0; m0 < M; m0 += Cfg::BM) {
    for (int64_t n0 = 0; n0 < N; n0 += Cfg::BN) {
      std::fill(acc.begin(), acc.end(), 0);
      std::fill(smem.begin(), smem.end(), 0xA5);  // stale bytes must never matter
      for (int64_t t = 0; t < T[0] + T[1]; ++t) {
        const int part = t < T[0] ? 0 : 1;
        const int64_t s = part == 0 ? t : t - T[0];
        uint8_t* sa = smem.data() + (t % Cfg::STAGES) * Cfg::kStageBytes;
        uint8_t* sb = sa + Cfg::kStageBytesA;
        // cp.async of the stage (16 bytes per copy, src-size bytes copied, the rest zero-filled).
        auto copy_tile = [&](uint8_t* dst_tile, int copies, const uint8_t* base, int64_t ld,
                             int64_t r0, int64_t rows) {
          for (int c = 0; c < copies; ++c) {
            const int row = load_row(c), chunk = load_chunk(c);
            const int64_t grow = r0 + row;
            const int64_t gbyte = stage_chunk_gbyte(s, chunk);
            const int nb = chunk_src_bytes(grow < rows, gbyte, rb[part]);
            uint8_t* dst = dst_tile + smem_swizzle_offset(row, chunk);
            std::memset(dst, 0, kChunkBytes);
            if (nb > 0) std::memcpy(dst, base + grow * ld + gbyte, static_cast<size_t>(nb));
          }
        };
        copy_tile(sa, Cfg::kChunksA, xa[part], lda[part], m0, M);
        copy_tile(sb, Cfg::kChunksB, wb[part], ldb[part], n0, N);
        for (int warp = 0; warp < Cfg::kWarps; ++warp) {
          const int warp_m = warp / Cfg::WARPS_N, warp_n = warp % Cfg::WARPS_N;
          for (int ks = 0; ks < kStepsPerStage; ++ks) {
            uint32_t af[Cfg::MT][kWarpSize][4];
            uint32_t bf[Cfg::NT][kWarpSize][2];
            int addr[kWarpSize];
            for (int mt = 0; mt < Cfg::MT; ++mt) {
              for (int l = 0; l < kWarpSize; ++l) {
                addr[l] = smem_swizzle_offset(a_tile_row<Cfg>(warp_m, mt, l), ldsm_a_chunk(l, ks));
              }
              ldmatrix_x4(sa, addr, af[mt]);
            }
            for (int np = 0; np < Cfg::NT / 2; ++np) {
              for (int l = 0; l < kWarpSize; ++l) {
                addr[l] = smem_swizzle_offset(b_tile_row<Cfg>(warp_n, np, l), ldsm_b_chunk(l, ks));
              }
              uint32_t r[kWarpSize][4];
              ldmatrix_x4(sb, addr, r);
              for (int l = 0; l < kWarpSize; ++l) {
                bf[2 * np][l][0] = r[l][0];
                bf[2 * np][l][1] = r[l][1];
                bf[2 * np + 1][l][0] = r[l][2];
                bf[2 * np + 1][l][1] = r[l][3];
              }
            }
            for (int mt = 0; mt < Cfg::MT; ++mt) {
              for (int nt = 0; nt < Cfg::NT; ++nt) {
                LaneAcc& c = *acc_at(part, warp, mt, nt);
                if (part == 1) {
                  mma_m16n8k32_u8s8(af[mt], bf[nt], c);
                } else if (path == MmaPath::kSm80) {
                  mma_m16n8k64_u4s4(af[mt], bf[nt], c);
                } else {
                  mma_k64_via_int8(af[mt], bf[nt], c);
                }
              }
            }
          }
        }
      }
      // Epilogue: each lane's accumulator element i of tile (mt, nt) -> y[m, n].
      for (int warp = 0; warp < Cfg::kWarps; ++warp) {
        const int warp_m = warp / Cfg::WARPS_N, warp_n = warp % Cfg::WARPS_N;
        for (int mt = 0; mt < Cfg::MT; ++mt) {
          for (int nt = 0; nt < Cfg::NT; ++nt) {
            const LaneAcc& c4 = *acc_at(0, warp, mt, nt);
            const LaneAcc& c8 = *acc_at(1, warp, mt, nt);
            for (int l = 0; l < kWarpSize; ++l) {
              for (int i = 0; i < 4; ++i) {
                const int64_t m = out_row<Cfg>(m0, warp_m, mt, l, i);
                const int64_t n = out_col<Cfg>(n0, warp_n, nt, l, i);
                if (m >= M || n >= N) continue;
                const float v = epilogue_element(x, w, m, n, c4[l][i], c8[l][i]);
                if (y) {
                  y[m * ldy + n] = v;
                } else {
                  uint32_t bits;
                  std::memcpy(&bits, &v, 4);
                  y_bf16[m * ldy + n] = f32_bits_to_bf16(bits);
                }
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace resq::gpu::emulation
