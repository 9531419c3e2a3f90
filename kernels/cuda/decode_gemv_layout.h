// Work decomposition, fragment and staging index math of the CUDA decode kernel (M <= 16,
// kernels/cuda/decode_gemv.cu) as plain __host__ __device__ functions: the kernel and its CPU
// emulation (tests/kernels/decode_gemv_emulation.h) call the very same functions.
//
// Geometry. An output "n-tile" is 8 weight rows (the n8 of mma.m16n8k32 / m16n8k64). A "k-block"
// is 64 bytes of a row of one part (4-bit or 8-bit): the 4 lanes of an mma thread group (tig =
// lane % 4) each load 16 bytes of their row (group = lane / 4), so one warp load instruction moves
// 8 rows x 64 bytes = 512 weight bytes straight into the B fragments of two mmas (no shared memory,
// no ldmatrix). k is permuted inside the block identically for A and B (the integer sum does not
// depend on the order of k): mma j (0, 1) of a block takes bytes [16 tig + 8 j, +4) as register 0
// and [16 tig + 8 j + 4, +4) as register 1 of both fragments, which is the PTX fragment layout of
// m16n8k32 .u8/.s8 and of m16n8k64 .u4/.s4 (4 bytes = 4 int8 or 8 int4 per register).
// Blocks of the 4-bit part come first, then those of the 8-bit part; a CTA (4 warps) takes one
// n-tile and one contiguous range of blocks (a K split); its warps take groups of kDecodeUnroll
// consecutive blocks round-robin. The int32 partial sums of the splits are added in the last CTA
// of the tile (integer addition: exact and order-free, so the result is bit-exact whatever order
// the CTAs finish in).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "cuda/gpu_layout.h"
#include "cuda/mixed_gemm_layout.h"
#include "resq/common/error.h"
#include "resq/common/host_device.h"
#include "resq/format/packed.h"

namespace resq::gpu {

constexpr int64_t kDecodeMaxM = 16;        // the kernel's M limit (one m16 tile)
constexpr int kDecodeWarps = 4;            // warps per CTA
constexpr int kDecodeThreads = kDecodeWarps * kWarpSize;
constexpr int kDecodeTileRows = 8;         // weight rows per n-tile (mma n8)
constexpr int kDecodeBlockBytes = 64;      // row bytes per k-block (4 lanes x 16 bytes)
constexpr int kDecodeLaneBytes = 16;       // one 16-byte load per lane per block
constexpr int kDecodeUnroll = 4;           // blocks per warp group; two groups in flight per warp
constexpr int kDecodeAccPerLane = 8;       // acc4[0..3], acc8[0..3]: the m16n8 C fragment per part
constexpr int64_t kDecodeMinBlocksPerSplit = 16;  // a split streams >= 1 KiB per row
constexpr int64_t kDecodeMaxSplits = 64;
constexpr int64_t kDecodeCtasPerSm = 8;    // split-K target: n_tiles * splits >= 8 CTAs per SM
// Staged activations per CTA: with the 4.3 KB of static shared memory the CTA stays below the
// 48 KiB a kernel may use without the dynamic shared-memory opt-in.
constexpr int64_t kDecodeActSmemBudget = 40 * 1024;
// Activation quantization fused into the kernel (every CTA quantizes the M rows it needs, reading
// them from L2) when M * K is at most this; larger inputs run act_quant_cuda first.
constexpr int64_t kDecodeFusedMaxElems = 16384;

// The launch plan of one call (pure function of the shape and the SM count).
struct DecodePlan {
  // Row bytes, blocks and shared-memory offsets are 32-bit (K4, K8 <= format::kMaxPartDim): the
  // main loop's index math stays in 32-bit registers.
  int64_t M = 0, N = 0, K4 = 0, K8 = 0;
  int rb4 = 0, rb8 = 0;           // logical row bytes of each part
  int kb4 = 0, kb8 = 0;           // k-blocks of each part
  int64_t n_tiles = 0;            // ceil(N / 8)
  int64_t splits = 1;             // K splits per tile (grid = n_tiles * splits CTAs)
  int max_split_blocks = 0;       // blocks of the largest split
  int act_stride = 0;             // bytes per staged activation row in shared memory
  int act_smem_bytes = 0;         // M * act_stride
  RESQ_HOST_DEVICE int total_blocks() const { return kb4 + kb8; }
  RESQ_HOST_DEVICE int64_t ctas() const { return n_tiles * splits; }
};

// First block of split s (s in [0, splits]; split s covers [begin(s), begin(s + 1))): balanced.
RESQ_HOST_DEVICE constexpr int decode_split_begin(int total_blocks, int64_t splits, int64_t s) {
  return static_cast<int>(s * total_blocks / splits);
}

// Shared-memory row stride for `blocks` k-blocks: an odd multiple of 64 bytes, so the two rows that
// one quarter-warp's 16-byte loads touch (groups 2q, 2q + 1) fall in different bank halves.
RESQ_HOST_DEVICE constexpr int decode_act_stride(int blocks) {
  return (blocks < 1 ? 1 : (blocks | 1)) * kDecodeBlockBytes;
}

// The plan for M rows against an N x (K4 + K8) linear on a device with `sm_count` SMs.
inline DecodePlan plan_decode_gemv(int64_t M, int64_t N, int64_t K4, int64_t K8, int64_t sm_count) {
  DecodePlan p;
  p.M = M;
  p.N = N;
  p.K4 = K4;
  p.K8 = K8;
  p.rb4 = static_cast<int>(part4_row_bytes(K4));
  p.rb8 = static_cast<int>(part8_row_bytes(K8));
  p.kb4 = static_cast<int>(ceil_div(p.rb4, kDecodeBlockBytes));
  p.kb8 = static_cast<int>(ceil_div(p.rb8, kDecodeBlockBytes));
  p.n_tiles = ceil_div(N, kDecodeTileRows);
  const int64_t kb = p.total_blocks();
  int64_t s = 1;
  const int64_t target = kDecodeCtasPerSm * (sm_count > 0 ? sm_count : 1);
  if (p.n_tiles > 0 && p.n_tiles < target) s = ceil_div(target, p.n_tiles);
  const int64_t by_k = kb / kDecodeMinBlocksPerSplit;
  s = s < by_k ? s : by_k;
  // The staged activations of a split must fit the shared-memory budget.
  // M * decode_act_stride(blocks) <= M * (blocks + 1) * 64 <= budget  <=  blocks <= budget / (64 M) - 1.
  const int64_t max_blocks = kDecodeActSmemBudget / (kDecodeBlockBytes * (M > 0 ? M : 1)) - 1;
  const int64_t by_smem = ceil_div(kb, max_blocks);
  s = s > by_smem ? s : by_smem;
  s = s < kDecodeMaxSplits ? s : kDecodeMaxSplits;
  s = s < kb ? s : kb;
  p.splits = s < 1 ? 1 : s;
  p.max_split_blocks = static_cast<int>(ceil_div(kb, p.splits));
  p.act_stride = decode_act_stride(p.max_split_blocks);
  p.act_smem_bytes = static_cast<int>(M * p.act_stride);
  return p;
}

// Workspace the plan needs: int32 partial sums [n_tiles][splits][32 lanes][8] and one uint32
// arrival counter per tile (both only when splits > 1; counters start 0 and are left 0).
RESQ_HOST_DEVICE constexpr int64_t decode_partial_ints(const DecodePlan& p) {
  return p.splits > 1 ? p.n_tiles * p.splits * kWarpSize * kDecodeAccPerLane : 0;
}
RESQ_HOST_DEVICE constexpr int64_t decode_counter_count(const DecodePlan& p) {
  return p.splits > 1 ? p.n_tiles : 0;
}
RESQ_HOST_DEVICE constexpr int64_t decode_partial_index(const DecodePlan& p, int64_t tile, int64_t split,
                                                        int lane, int i) {
  return ((tile * p.splits + split) * kWarpSize + lane) * kDecodeAccPerLane + i;
}

// CTA c of the grid -> (tile, split); adjacent CTAs are the splits of one tile.
RESQ_HOST_DEVICE constexpr int64_t decode_cta_tile(const DecodePlan& p, int64_t cta) { return cta / p.splits; }
RESQ_HOST_DEVICE constexpr int64_t decode_cta_split(const DecodePlan& p, int64_t cta) { return cta % p.splits; }

// Global block b (0 <= b < kb4 + kb8) -> part (0: 4-bit, 1: 8-bit) and first row byte of the block.
RESQ_HOST_DEVICE constexpr int decode_block_part(const DecodePlan& p, int b) { return b < p.kb4 ? 0 : 1; }
RESQ_HOST_DEVICE constexpr int decode_block_byte(const DecodePlan& p, int b) {
  return (b < p.kb4 ? b : b - p.kb4) * kDecodeBlockBytes;
}
RESQ_HOST_DEVICE constexpr int decode_part_row_bytes(const DecodePlan& p, int part) {
  return part == 0 ? p.rb4 : p.rb8;
}

// Local block (within the CTA's split) that warp `warp` handles at group iteration `g` (its g-th
// group: group index warp + g * kDecodeWarps) and unroll slot u; may be >= the split's length.
RESQ_HOST_DEVICE constexpr int decode_warp_group(int warp, int g) {
  return warp + g * kDecodeWarps;
}
RESQ_HOST_DEVICE constexpr int decode_group_block(int group, int u) {
  return group * kDecodeUnroll + u;
}

// Weight row of a lane (n0 = 8 * tile) and the byte offset of its 16 bytes inside a block.
RESQ_HOST_DEVICE constexpr int64_t decode_lane_row(int64_t tile, int lane) {
  return tile * kDecodeTileRows + frag_group(lane);
}
RESQ_HOST_DEVICE constexpr int decode_lane_byte(int lane) { return frag_tig(lane) * kDecodeLaneBytes; }

// The 32-bit word (0..3) of a lane's 16 bytes that is fragment register r (0, 1) of mma j (0, 1)
// of a block: B = {w[2j], w[2j+1]}, A = {x_g[2j], x_{g+8}[2j], x_g[2j+1], x_{g+8}[2j+1]}.
RESQ_HOST_DEVICE constexpr int decode_frag_word(int j, int r) { return 2 * j + r; }

// Staged activation row m, byte c of local block i: the byte of part `part` at row byte
// `byte` = decode_block_byte + c % 64 (0 past the logical row end, so that padding and garbage
// past the row in either operand multiply by 0).
RESQ_HOST_DEVICE constexpr int decode_act_offset(const DecodePlan& p, int m, int i, int c) {
  return m * p.act_stride + i * kDecodeBlockBytes + c;
}

// ---------------------------------------------------------------------------- int4 on sm_90a
// Hopper has no int4 mma. A register of 8 nibbles (k = 0..7, byte i = nibbles 2i | 2i+1 << 4) is
// split into its even and odd nibbles, one byte each, in two instructions per operand register:
// activations (unsigned) a & 0x0F0F0F0F and (a >> 4) & 0x0F0F0F0F; weights (signed) are left in
// the high half of each byte, (w << 4) & 0xF0F0F0F0 and w & 0xF0F0F0F0, which read as int8 are 16
// times the nibble's value. Two m16n8k32 .u8.s8 (even, then odd) then give 16 * the int4 sum (the
// pairs are the same k in A and B); the warp's accumulator is divided by 16 exactly (arithmetic
// shift of a multiple of 16; |16 * acc4| <= 16 * 15 * 8 * 65536 < 2^31) before the reduction.
RESQ_HOST_DEVICE constexpr uint32_t u4_even_to_u8(uint32_t a) { return a & 0x0F0F0F0Fu; }
RESQ_HOST_DEVICE constexpr uint32_t u4_odd_to_u8(uint32_t a) { return (a >> 4) & 0x0F0F0F0Fu; }
RESQ_HOST_DEVICE constexpr uint32_t s4_even_to_s8x16(uint32_t w) { return (w << 4) & 0xF0F0F0F0u; }
RESQ_HOST_DEVICE constexpr uint32_t s4_odd_to_s8x16(uint32_t w) { return w & 0xF0F0F0F0u; }
constexpr int kDecodeSm90Int4Shift = 4;  // acc4 of the sm_90a path is 16x the int4 sum

// ---------------------------------------------------------------------------- fused quantization

// Input element j (after the optional gather) of row `row` as fp32: float, or bf16 bits (exact).
RESQ_HOST_DEVICE inline float decode_input_value(const float* row, const int32_t* perm, int64_t j) {
  return row[perm ? perm[j] : j];
}
RESQ_HOST_DEVICE inline float decode_input_value(const uint16_t* row, const int32_t* perm, int64_t j) {
  const uint32_t bits = static_cast<uint32_t>(row[perm ? perm[j] : j]) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

// Running (min, max) of both parts over element j: v = {min4, max4, min8, max8}, started at 0
// (format::activation_scale_zero takes min(x, 0) and max(x, 0)). fminf/fmaxf: exact, any order.
RESQ_HOST_DEVICE inline void decode_minmax_update(float (&v)[4], int64_t K4, int64_t j, float e) {
  if (j < K4) {
    v[0] = v[0] < e ? v[0] : e;
    v[1] = v[1] > e ? v[1] : e;
  } else {
    v[2] = v[2] < e ? v[2] : e;
    v[3] = v[3] > e ? v[3] : e;
  }
}

// One quantized activation byte of part `part` at row byte `byte` of a row (format::
// quantize_activation_value, as act_quant_cuda and cpu::quantize_activations_reference): 4-bit:
// elements 2 byte (low nibble) and 2 byte + 1 (high nibble, 0 past K4); 8-bit: element K4 + byte;
// 0 past the logical row.
template <class In>
RESQ_HOST_DEVICE inline uint8_t decode_quantized_byte(const In* row, const int32_t* perm, int64_t K4,
                                                      int64_t K8, int part, int64_t byte, float s4,
                                                      int32_t z4, float s8, int32_t z8) {
  if (part == 0) {
    const int64_t k = 2 * byte;
    if (k >= K4) return 0;
    int v = format::quantize_activation_value(decode_input_value(row, perm, k), s4, z4, format::kUint4Max);
    if (k + 1 < K4) {
      v |= format::quantize_activation_value(decode_input_value(row, perm, k + 1), s4, z4, format::kUint4Max) << 4;
    }
    return static_cast<uint8_t>(v);
  }
  if (byte >= K8) return 0;
  return static_cast<uint8_t>(
      format::quantize_activation_value(decode_input_value(row, perm, K4 + byte), s8, z8, format::kUint8Max));
}

// ---------------------------------------------------------------------------- argument checks

// Checks of decode_gemv_cuda / decode_quant_gemv*_cuda made before any CUDA call (ShapeError).
// x_rows: the pre-quantized activations (null for the fused path, which passes x_in instead).
inline void check_decode_gemv_args(const char* fn, int64_t M, const GpuLinearView& w, const void* y, int64_t ldy,
                                   const GpuActivationsView* xq, const void* x_in, int64_t ldx) {
  const std::string f = std::string(fn) + ": ";
  RESQ_CHECK_OR_THROW(w.N >= 0 && w.K4 >= 0 && w.K8 >= 0, ShapeError,
                      f + "negative weight dims N = " + std::to_string(w.N) + ", K4 = " + std::to_string(w.K4) +
                          ", K8 = " + std::to_string(w.K8));
  RESQ_CHECK_OR_THROW(M >= 1 && M <= kDecodeMaxM, ShapeError,
                      f + "M = " + std::to_string(M) + " outside [1, 16] (the decode kernel is for M <= 16; "
                          "use mixed_gemm_cuda)");
  RESQ_CHECK_OR_THROW(w.K4 <= format::kMaxPartDim && w.K8 <= format::kMaxPartDim, ShapeError,
                      f + "K4/K8 above format::kMaxPartDim = 65536");
  RESQ_CHECK_OR_THROW(ldy >= w.N, ShapeError, f + "ldy = " + std::to_string(ldy) + " < N = " + std::to_string(w.N));
  RESQ_CHECK_OR_THROW(w.N == 0 || y != nullptr, ShapeError, f + "y is null");
  const int64_t rb4 = part4_row_bytes(w.K4), rb8 = part8_row_bytes(w.K8);
  if (w.N > 0 && w.K4 > 0) {
    RESQ_CHECK_OR_THROW(w.w4 && w.sw4 && w.rs4, ShapeError, f + "w4, sw4 and rs4 are required when K4 > 0");
    RESQ_CHECK_OR_THROW(w.ldw4 >= rb4 && w.ldw4 % kGpuRowAlign == 0 && reinterpret_cast<uintptr_t>(w.w4) % 16 == 0,
                        ShapeError,
                        f + "ldw4 = " + std::to_string(w.ldw4) + " must be a multiple of 16 and >= " +
                            std::to_string(rb4) + ", w4 16-byte aligned");
  }
  if (w.N > 0 && w.K8 > 0) {
    RESQ_CHECK_OR_THROW(w.w8 && w.sw8 && w.rs8, ShapeError, f + "w8, sw8 and rs8 are required when K8 > 0");
    RESQ_CHECK_OR_THROW(w.ldw8 >= rb8 && w.ldw8 % kGpuRowAlign == 0 && reinterpret_cast<uintptr_t>(w.w8) % 16 == 0,
                        ShapeError,
                        f + "ldw8 = " + std::to_string(w.ldw8) + " must be a multiple of 16 and >= " +
                            std::to_string(rb8) + ", w8 16-byte aligned");
  }
  if (xq) {
    RESQ_CHECK_OR_THROW(xq->M == M && xq->K4 == w.K4 && xq->K8 == w.K8, ShapeError,
                        f + "activations are M = " + std::to_string(xq->M) + ", K4 = " + std::to_string(xq->K4) +
                            ", K8 = " + std::to_string(xq->K8) + "; weights K4 = " + std::to_string(w.K4) +
                            ", K8 = " + std::to_string(w.K8));
    if (w.K4 > 0) {
      RESQ_CHECK_OR_THROW(xq->xq4 && xq->sx4 && xq->zx4 && xq->ldx4 >= rb4 && xq->ldx4 % kGpuRowAlign == 0 &&
                              reinterpret_cast<uintptr_t>(xq->xq4) % 16 == 0,
                          ShapeError, f + "xq4/sx4/zx4 missing, or ldx4 not a multiple of 16 >= ceil(K4/2)");
    }
    if (w.K8 > 0) {
      RESQ_CHECK_OR_THROW(xq->xq8 && xq->sx8 && xq->zx8 && xq->ldx8 >= rb8 && xq->ldx8 % kGpuRowAlign == 0 &&
                              reinterpret_cast<uintptr_t>(xq->xq8) % 16 == 0,
                          ShapeError, f + "xq8/sx8/zx8 missing, or ldx8 not a multiple of 16 >= K8");
    }
  } else {
    const int64_t K = w.K4 + w.K8;
    RESQ_CHECK_OR_THROW(K == 0 || x_in != nullptr, ShapeError, f + "x is null");
    RESQ_CHECK_OR_THROW(ldx >= K, ShapeError, f + "ldx = " + std::to_string(ldx) + " < K = " + std::to_string(K));
  }
}

}  // namespace resq::gpu
