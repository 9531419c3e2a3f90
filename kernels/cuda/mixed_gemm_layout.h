// Tile, shared-memory and mma.sync fragment index math of the CUDA mixed W4A4+W8A8 GEMM
// (kernels/cuda/mixed_gemm.cu), as plain __host__ __device__ functions: the kernel and the CPU
// emulation (tests/kernels/mixed_gemm_emulation.h, tested in tests/kernels) call the very same functions.
//
// Fragment layouts follow the PTX ISA ("Matrix Fragments for mma.m16n8k64" / "mma.m16n8k32",
// integer types; "ldmatrix"); groupID = lane >> 2, threadID_in_group = lane % 4.
#pragma once

#include <cstdint>

#include "resq/common/host_device.h"

namespace resq::gpu {

// ---------------------------------------------------------------------------- byte geometry
// Both parts move 32 bytes of a row per tensor-core k-step: one m16n8k64 (64 int4) or one
// m16n8k32 (32 int8). So the 4-bit and 8-bit parts share the shared-memory layout, the loads and
// the fragment byte offsets; only the mma instruction differs.
constexpr int kWarpSize = 32;
constexpr int kStepBytes = 32;                             // row bytes per mma k-step
constexpr int kChunkBytes = 16;                            // one cp.async / one ldmatrix row
constexpr int kStageRowBytes = 128;                        // row bytes per pipeline stage
constexpr int kChunksPerRow = kStageRowBytes / kChunkBytes;   // 8
constexpr int kStepsPerStage = kStageRowBytes / kStepBytes;   // 4
// Row strides of GPU-side operands (activations and repacked weights) are multiples of this so
// that every 16-byte cp.async source is aligned.
constexpr int64_t kGpuRowAlign = 16;

RESQ_HOST_DEVICE constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
RESQ_HOST_DEVICE constexpr int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

// Row stride in bytes of a GPU-side operand row of `row_bytes` logical bytes (16-byte multiple).
RESQ_HOST_DEVICE constexpr int64_t gpu_row_stride(int64_t row_bytes) {
  return round_up(row_bytes, kGpuRowAlign);
}

// Pipeline stages (of kStageRowBytes per row) needed for a part of `row_bytes` bytes per row.
RESQ_HOST_DEVICE constexpr int64_t stage_count(int64_t row_bytes) {
  return ceil_div(row_bytes, kStageRowBytes);
}

// ---------------------------------------------------------------------------- block tiling
// One CTA computes a BM x BN output tile with WARPS_M x WARPS_N warps; a warp owns a WM x WN
// sub-tile = MT x NT mma tiles of 16 x 8. STAGES-deep cp.async ring of shared-memory stages, each
// holding BM rows of activations and BN rows of weights, kStageRowBytes bytes per row.
template <int BM_, int BN_, int WARPS_M_, int WARPS_N_, int STAGES_>
struct GemmTileConfig {
  static constexpr int BM = BM_;
  static constexpr int BN = BN_;
  static constexpr int WARPS_M = WARPS_M_;
  static constexpr int WARPS_N = WARPS_N_;
  static constexpr int STAGES = STAGES_;
  static constexpr int kWarps = WARPS_M * WARPS_N;
  static constexpr int kThreads = kWarps * kWarpSize;
  static constexpr int WM = BM / WARPS_M;
  static constexpr int WN = BN / WARPS_N;
  static constexpr int MT = WM / 16;
  static constexpr int NT = WN / 8;
  static constexpr int kStageBytesA = BM * kStageRowBytes;
  static constexpr int kStageBytesB = BN * kStageRowBytes;
  static constexpr int kStageBytes = kStageBytesA + kStageBytesB;
  static constexpr int kSmemBytes = STAGES * kStageBytes;
  static constexpr int kChunksA = BM * kChunksPerRow;  // 16-byte copies per stage
  static constexpr int kChunksB = BN * kChunksPerRow;
  static_assert(BM % (16 * WARPS_M) == 0 && BN % (16 * WARPS_N) == 0, "warp tile shape");
  static_assert(NT % 2 == 0, "B fragments are loaded two n8 tiles per ldmatrix.x4");
  static_assert(STAGES >= 2, "pipeline depth");
};

// Prefill-sized tiles: 128 x 128, 8 warps (2 x 4, warp tile 64 x 32), 3 stages = 96 KiB of shared
// memory (fits the 99 KiB opt-in limit of sm_86/sm_89).
using GemmTileLarge = GemmTileConfig<128, 128, 2, 4, 3>;
// Decode-sized tiles: 32 x 64, 4 warps (1 x 4, warp tile 32 x 16), 4 stages = 48 KiB.
using GemmTileSmall = GemmTileConfig<32, 64, 1, 4, 4>;

// ---------------------------------------------------------------------------- shared memory
// A stage holds rows of kStageRowBytes = 8 chunks of 16 bytes. The chunk index is XOR-swizzled
// with the row (chunk ^ (row % 8)) so that the 8 row addresses of one ldmatrix 8x8 matrix (same
// logical chunk, 8 consecutive rows) land in 8 different 16-byte bank groups: conflict-free.
// Returns the byte offset of (row, chunk) inside one operand tile of a stage.
RESQ_HOST_DEVICE constexpr int smem_swizzle_offset(int row, int chunk) {
  return row * kStageRowBytes + ((chunk ^ (row & 7)) * kChunkBytes);
}

// The c-th 16-byte copy of a stage tile (c in [0, rows * kChunksPerRow)) fills row c / 8,
// chunk c % 8 (consecutive threads read consecutive 16 bytes of one global row: coalesced).
RESQ_HOST_DEVICE constexpr int load_row(int copy) { return copy / kChunksPerRow; }
RESQ_HOST_DEVICE constexpr int load_chunk(int copy) { return copy % kChunksPerRow; }

// Bytes to copy from global for a chunk that starts at byte `gbyte` of a row of `row_bytes`
// logical bytes (0..16; the rest of the 16 bytes is zero-filled by cp.async). Rows beyond the
// matrix (row_valid false) copy nothing: all 16 bytes become zero.
RESQ_HOST_DEVICE constexpr int chunk_src_bytes(bool row_valid, int64_t gbyte, int64_t row_bytes) {
  return !row_valid ? 0
         : gbyte >= row_bytes          ? 0
         : row_bytes - gbyte >= kChunkBytes ? kChunkBytes
                                            : static_cast<int>(row_bytes - gbyte);
}

// ---------------------------------------------------------------------------- ldmatrix addressing
// ldmatrix.sync.aligned.m8n8.x4.shared.b16 loads four 8x8 matrices of 16-bit elements (8 rows x
// 16 bytes each); lane l supplies the address of row l % 8 of matrix l / 8, and lane l receives
// in register j the 4 bytes at byte offset 4 * (l % 4) of row l / 4 of matrix j.
//
// A (activations, 16 rows x 32 bytes of one k-step of one m16 tile): matrix j covers rows
// 8 * (j & 1) .. +7 and bytes 16 * (j >> 1) .. +15, so register j of lane l holds row
// (l >> 2) + 8 * (j & 1), bytes 16 * (j >> 1) + 4 * (l & 3) .. +3: exactly the A fragment of
// m16n8k64 .u4 (reg j = 8 nibbles) and of m16n8k32 .u8 (reg j = 4 bytes).
RESQ_HOST_DEVICE constexpr int ldsm_a_row(int lane) { return lane & 15; }
RESQ_HOST_DEVICE constexpr int ldsm_a_chunk(int lane, int kstep) { return kstep * 2 + (lane >> 4); }

// B (weights, two n8 tiles = 16 rows of W x 32 bytes): matrix j covers W rows 8 * (j >> 1) .. +7,
// bytes 16 * (j & 1) .. +15, so registers {0, 1} are the B fragment (b0, b1) of the first n8
// tile and {2, 3} of the second: lane l holds W row (l >> 2) (+ 8), bytes 16 * (j & 1) +
// 4 * (l & 3) .. +3 (k = 8 * (l & 3) + 32 * (j & 1) .. +7 as int4; k = 4 * (l & 3) + 16 * (j & 1)
// .. +3 as int8).
RESQ_HOST_DEVICE constexpr int ldsm_b_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
RESQ_HOST_DEVICE constexpr int ldsm_b_chunk(int lane, int kstep) {
  return kstep * 2 + ((lane >> 3) & 1);
}

// The lane whose supplied row address feeds register j of lane l in an ldmatrix.x4, and the byte
// offset inside that 16-byte row (PTX ldmatrix semantics; used by the emulation).
RESQ_HOST_DEVICE constexpr int ldsm_source_lane(int lane, int j) { return j * 8 + (lane >> 2); }
RESQ_HOST_DEVICE constexpr int ldsm_source_byte(int lane) { return (lane & 3) * 4; }

// ---------------------------------------------------------------------------- mma fragments
// Coordinates of element i of a lane's fragments, per the PTX ISA tables.
RESQ_HOST_DEVICE constexpr int frag_group(int lane) { return lane >> 2; }
RESQ_HOST_DEVICE constexpr int frag_tig(int lane) { return lane & 3; }

// m16n8k64, A .u4/.s4: 4 registers x 8 nibbles = a0..a31.
RESQ_HOST_DEVICE constexpr int mma_k64_a_row(int lane, int i) {
  return frag_group(lane) + (((i >= 8 && i < 16) || i >= 24) ? 8 : 0);
}
RESQ_HOST_DEVICE constexpr int mma_k64_a_col(int lane, int i) {
  return frag_tig(lane) * 8 + (i & 7) + (i >= 16 ? 32 : 0);
}
// m16n8k64, B .u4/.s4: 2 registers x 8 nibbles = b0..b15 (row = k, col = n).
RESQ_HOST_DEVICE constexpr int mma_k64_b_row(int lane, int i) {
  return frag_tig(lane) * 8 + (i & 7) + (i >= 8 ? 32 : 0);
}
RESQ_HOST_DEVICE constexpr int mma_k64_b_col(int lane, int /*i*/) { return frag_group(lane); }

// m16n8k32, A .u8/.s8: 4 registers x 4 bytes = a0..a15.
RESQ_HOST_DEVICE constexpr int mma_k32_a_row(int lane, int i) {
  return frag_group(lane) + (((i >= 4 && i < 8) || i >= 12) ? 8 : 0);
}
RESQ_HOST_DEVICE constexpr int mma_k32_a_col(int lane, int i) {
  return frag_tig(lane) * 4 + (i & 3) + (i >= 8 ? 16 : 0);
}
// m16n8k32, B .u8/.s8: 2 registers x 4 bytes = b0..b7.
RESQ_HOST_DEVICE constexpr int mma_k32_b_row(int lane, int i) {
  return frag_tig(lane) * 4 + (i & 3) + (i >= 4 ? 16 : 0);
}
RESQ_HOST_DEVICE constexpr int mma_k32_b_col(int lane, int /*i*/) { return frag_group(lane); }

// Accumulator C/D (.s32, m16n8, both shapes): c0..c3.
RESQ_HOST_DEVICE constexpr int mma_c_row(int lane, int i) { return frag_group(lane) + (i >= 2 ? 8 : 0); }
RESQ_HOST_DEVICE constexpr int mma_c_col(int lane, int i) { return frag_tig(lane) * 2 + (i & 1); }

// ---------------------------------------------------------------------------- int4 -> int8 (sm_90a)
// Hopper has no int4 mma: each 32-bit register of a m16n8k64 fragment (8 nibbles, k = k0 .. k0+7)
// is split into two int8 registers, low half (k0 .. k0+3) and high half (k0+4 .. k0+7), that feed
// two m16n8k32 mmas. With A registers {lo(a0), lo(a1), lo(a2), lo(a3)} and B registers
// {lo(b0), lo(b1)} in the first mma and the high halves in the second, k32 slot 4 * tig + e of A
// and of B both mean int4 column 8 * tig + e (+ 4 in the second mma; + 32 for slots >= 16), so
// the two mmas together cover every k of the k64 step exactly once: the integer sum is the same.

// Nibbles 0..3 of v (bits 0..15) -> bytes 0..3, zero-extended (uint4 -> uint8).
RESQ_HOST_DEVICE constexpr uint32_t spread_nibbles(uint32_t v16) {
  return (v16 & 0x000Fu) | ((v16 & 0x00F0u) << 4) | ((v16 & 0x0F00u) << 8) | ((v16 & 0xF000u) << 12);
}
// Sign-extends 4 bytes holding 4-bit two's complement values (0..15) to int8: bit 3 set -> high
// nibble 0xF. (m * 30 puts 0xF0 in each byte whose bit 3 is set; no carries cross bytes.)
RESQ_HOST_DEVICE constexpr uint32_t sign_extend_nibble_bytes(uint32_t b) {
  return b | ((b & 0x08080808u) * 30u);
}
RESQ_HOST_DEVICE constexpr uint32_t u4_lo_to_u8(uint32_t r) { return spread_nibbles(r & 0xFFFFu); }
RESQ_HOST_DEVICE constexpr uint32_t u4_hi_to_u8(uint32_t r) { return spread_nibbles(r >> 16); }
RESQ_HOST_DEVICE constexpr uint32_t s4_lo_to_s8(uint32_t r) {
  return sign_extend_nibble_bytes(spread_nibbles(r & 0xFFFFu));
}
RESQ_HOST_DEVICE constexpr uint32_t s4_hi_to_s8(uint32_t r) {
  return sign_extend_nibble_bytes(spread_nibbles(r >> 16));
}

// ---------------------------------------------------------------------------- output

// Global output coordinates of accumulator element i of mma tile (mt, nt) of lane `lane` in warp
// (warp_m, warp_n) of the CTA at (m0, n0).
template <class Cfg>
RESQ_HOST_DEVICE constexpr int64_t out_row(int64_t m0, int warp_m, int mt, int lane, int i) {
  return m0 + warp_m * Cfg::WM + mt * 16 + mma_c_row(lane, i);
}
template <class Cfg>
RESQ_HOST_DEVICE constexpr int64_t out_col(int64_t n0, int warp_n, int nt, int lane, int i) {
  return n0 + warp_n * Cfg::WN + nt * 8 + mma_c_col(lane, i);
}

// fp32 bits -> bf16 bits: round to nearest even, overflow to +-inf, NaN -> quiet NaN with its
// sign (the same bits as resq::cpu::convert_f32_to_bf16).
RESQ_HOST_DEVICE constexpr uint16_t f32_bits_to_bf16(uint32_t bits) {
  return (bits & 0x7FFFFFFFu) > 0x7F800000u
             ? static_cast<uint16_t>((bits >> 16) | 0x0040u)
             : static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace resq::gpu
