// CPU emulation of the CUDA decode kernel (kernels/cuda/decode_gemv.cu): the kernel's CTAs (in any
// given order), activation staging (copy or fused quantization with per-warp shuffle min/max),
// warps, double-buffered groups, lanes, 16-byte weight loads into mma fragments (PTX layouts of
// mixed_gemm_emulation.h), the warp reduction, split-K partials with the arrival counter and the
// last CTA's epilogue, all through the index functions of cuda/decode_gemv_layout.h. Host-only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cuda/decode_gemv_layout.h"
#include "mixed_gemm_emulation.h"

namespace resq::gpu::emulation {

// Input of one emulated call: pre-quantized rows (xq non-null) or fp32/bf16 rows to quantize.
struct DecodeEmuInput {
  const GpuActivationsView* xq = nullptr;
  const float* x_f32 = nullptr;      // [M][ldx]
  const uint16_t* x_bf16 = nullptr;  // [M][ldx] bf16 bits
  int64_t M = 0, ldx = 0;
  const int32_t* perm = nullptr;
  float clip4 = 1.0f, clip8 = 1.0f;
};

// The sm_90a replacement of one m16n8k64 .u4.s4 in the decode kernel: even and odd nibbles as
// two m16n8k32 .u8.s8, the weights 16x (decode_gemv_layout.h); the caller divides acc4 by 16.
inline void decode_mma_k64_sm90(const LaneRegs4 a, const uint32_t b[kWarpSize][2], LaneAcc c) {
  uint32_t ae[kWarpSize][4], ao[kWarpSize][4], be[kWarpSize][2], bo[kWarpSize][2];
  for (int l = 0; l < kWarpSize; ++l) {
    for (int j = 0; j < 4; ++j) {
      ae[l][j] = u4_even_to_u8(a[l][j]);
      ao[l][j] = u4_odd_to_u8(a[l][j]);
    }
    for (int j = 0; j < 2; ++j) {
      be[l][j] = s4_even_to_s8x16(b[l][j]);
      bo[l][j] = s4_odd_to_s8x16(b[l][j]);
    }
  }
  mma_m16n8k32_u8s8(ae, be, c);
  mma_m16n8k32_u8s8(ao, bo, c);
}

namespace detail {
template <class In>
void stage_fused(const DecodePlan& p, const In* x, int64_t ldx, const int32_t* perm, float clip4, float clip8,
                 int64_t b0, int64_t len, std::vector<uint8_t>& sact, float* sx4, int32_t* zx4, float* sx8,
                 int32_t* zx8) {
  const int64_t K = p.K4 + p.K8;
  for (int warp = 0; warp < kDecodeWarps; ++warp) {
    for (int64_t m = warp; m < p.M; m += kDecodeWarps) {
      float v[kWarpSize][4] = {};
      for (int lane = 0; lane < kWarpSize; ++lane) {
        for (int64_t j = lane; j < K; j += kWarpSize) decode_minmax_update(v[lane], p.K4, j, decode_input_value(x + m * ldx, perm, j));
      }
      for (int off = 16; off > 0; off >>= 1) {  // __shfl_xor_sync butterfly
        float nv[kWarpSize][4];
        for (int l = 0; l < kWarpSize; ++l) {
          const int o = l ^ off;
          nv[l][0] = std::min(v[l][0], v[o][0]);
          nv[l][1] = std::max(v[l][1], v[o][1]);
          nv[l][2] = std::min(v[l][2], v[o][2]);
          nv[l][3] = std::max(v[l][3], v[o][3]);
        }
        std::memcpy(v, nv, sizeof(v));
      }
      format::activation_scale_zero(v[0][0], v[0][1], clip4, format::kUint4Max, &sx4[m], &zx4[m]);
      format::activation_scale_zero(v[0][2], v[0][3], clip8, format::kUint8Max, &sx8[m], &zx8[m]);
    }
  }
  const int64_t bytes = len * kDecodeBlockBytes;
  for (int64_t t = 0; t < p.M * bytes; ++t) {
    const int64_t m = t / bytes, c = t % bytes;
    const int64_t b = b0 + c / kDecodeBlockBytes;
    sact[static_cast<size_t>(decode_act_offset(p, m, 0, 0) + c)] =
        decode_quantized_byte(x + m * ldx, perm, p.K4, p.K8, decode_block_part(p, b),
                              decode_block_byte(p, b) + c % kDecodeBlockBytes, sx4[m], zx4[m], sx8[m], zx8[m]);
  }
}
}  // namespace detail

// Emulates one call with plan p (from plan_decode_gemv) on host data: w (GpuLinearView, host
// pointers), y float [M][ldy] (y_bf16 null) or bf16 bits (y null). cta_order: the order the CTAs
// run and arrive in (a permutation of [0, p.ctas()); empty = increasing). partials / counters: the
// workspace (counters must start 0; they are checked to end 0).
inline void emulate_decode_gemv(const DecodePlan& p, const DecodeEmuInput& in, const GpuLinearView& w, float* y,
                                uint16_t* y_bf16, int64_t ldy, MmaPath path, std::vector<int64_t> cta_order,
                                std::vector<int32_t>& partials, std::vector<uint32_t>& counters) {
  if (cta_order.empty()) {
    cta_order.resize(static_cast<size_t>(p.ctas()));
    for (int64_t c = 0; c < p.ctas(); ++c) cta_order[static_cast<size_t>(c)] = c;
  }
  partials.assign(static_cast<size_t>(decode_partial_ints(p)), 0x5A5A5A5A);  // stale values must not matter
  if (counters.size() < static_cast<size_t>(decode_counter_count(p))) counters.resize(static_cast<size_t>(decode_counter_count(p)), 0u);
  std::vector<uint8_t> sact(static_cast<size_t>(p.act_smem_bytes));
  for (const int64_t cta : cta_order) {
    const int64_t tile = decode_cta_tile(p, cta), split = decode_cta_split(p, cta);
    const int64_t b0 = decode_split_begin(p.total_blocks(), p.splits, split);
    const int64_t len = decode_split_begin(p.total_blocks(), p.splits, split + 1) - b0;
    std::fill(sact.begin(), sact.end(), 0xC3);  // bytes the kernel does not write must not be read
    float sx4[kDecodeMaxM] = {}, sx8[kDecodeMaxM] = {};
    int32_t zx4[kDecodeMaxM] = {}, zx8[kDecodeMaxM] = {};
    const int64_t bytes = len * kDecodeBlockBytes;
    if (in.xq) {
      const GpuActivationsView& x = *in.xq;
      for (int64_t t = 0; t < p.M * (bytes / 16); ++t) {
        const int64_t m = t / (bytes / 16), c = (t % (bytes / 16)) * 16;
        const int64_t b = b0 + c / kDecodeBlockBytes;
        const int part = decode_block_part(p, b);
        const int64_t off = decode_block_byte(p, b) + c % kDecodeBlockBytes;
        const uint8_t* src = part == 0 ? x.xq4 + m * x.ldx4 : x.xq8 + m * x.ldx8;
        const int nb = chunk_src_bytes(true, off, decode_part_row_bytes(p, part));
        uint8_t* dst = sact.data() + decode_act_offset(p, m, 0, 0) + c;
        std::memset(dst, 0, 16);
        if (nb > 0) std::memcpy(dst, src + off, static_cast<size_t>(nb));
      }
    } else if (in.x_f32) {
      detail::stage_fused(p, in.x_f32, in.ldx, in.perm, in.clip4, in.clip8, b0, len, sact, sx4, zx4, sx8, zx8);
    } else {
      detail::stage_fused(p, in.x_bf16, in.ldx, in.perm, in.clip4, in.clip8, b0, len, sact, sx4, zx4, sx8, zx8);
    }
    // Warps: per-lane accumulators acc[warp][part][lane][4].
    std::vector<int32_t> acc(static_cast<size_t>(kDecodeWarps * 2 * kWarpSize * 4), 0);
    const int64_t groups = ceil_div(len, kDecodeUnroll);
    for (int warp = 0; warp < kDecodeWarps; ++warp) {
      LaneAcc& a4 = *reinterpret_cast<LaneAcc*>(acc.data() + (warp * 2 + 0) * kWarpSize * 4);
      LaneAcc& a8 = *reinterpret_cast<LaneAcc*>(acc.data() + (warp * 2 + 1) * kWarpSize * 4);
      for (int64_t gi = 0; decode_warp_group(warp, gi) < groups; ++gi) {
        const int64_t group = decode_warp_group(warp, gi);
        for (int u = 0; u < kDecodeUnroll; ++u) {
          const int64_t i = decode_group_block(group, u);
          if (i >= len) break;
          const int64_t b = b0 + i;
          const int part = decode_block_part(p, b);
          // load_group: each lane's 16 weight bytes (0 past the split, the row end or N).
          uint32_t wr[kWarpSize][4] = {};
          uint32_t xr[kWarpSize][2][4] = {};
          for (int lane = 0; lane < kWarpSize; ++lane) {
            const int64_t n = decode_lane_row(tile, lane);
            const int64_t off = decode_block_byte(p, b) + decode_lane_byte(lane);
            if (n < p.N && off < decode_part_row_bytes(p, part)) {
              const uint8_t* base = part == 0 ? w.w4 + n * w.ldw4 : reinterpret_cast<const uint8_t*>(w.w8) + n * w.ldw8;
              std::memcpy(wr[lane], base + off, 16);
            }
            const int g = frag_group(lane);
            for (int h = 0; h < 2; ++h) {  // rows g and g + 8 from shared memory (0 past M)
              const int64_t m = g + 8 * h;
              if (m < p.M) std::memcpy(xr[lane][h], sact.data() + decode_act_offset(p, m, i, decode_lane_byte(lane)), 16);
            }
          }
          for (int j = 0; j < 2; ++j) {
            uint32_t af[kWarpSize][4], bf[kWarpSize][2];
            for (int lane = 0; lane < kWarpSize; ++lane) {
              af[lane][0] = xr[lane][0][decode_frag_word(j, 0)];
              af[lane][1] = xr[lane][1][decode_frag_word(j, 0)];
              af[lane][2] = xr[lane][0][decode_frag_word(j, 1)];
              af[lane][3] = xr[lane][1][decode_frag_word(j, 1)];
              bf[lane][0] = wr[lane][decode_frag_word(j, 0)];
              bf[lane][1] = wr[lane][decode_frag_word(j, 1)];
            }
            if (part == 1) {
              mma_m16n8k32_u8s8(af, bf, a8);
            } else if (path == MmaPath::kSm80) {
              mma_m16n8k64_u4s4(af, bf, a4);
            } else {
              decode_mma_k64_sm90(af, bf, a4);
            }
          }
        }
      }
    }
    if (path == MmaPath::kSm90) {  // the sm_90a path's acc4 is 16x the sum: exact shift per warp
      for (int warp = 0; warp < kDecodeWarps; ++warp) {
        for (int k = 0; k < kWarpSize * 4; ++k) {
          int32_t& v = acc[static_cast<size_t>((warp * 2 + 0) * kWarpSize * 4 + k)];
          if (v % 16 != 0) throw std::logic_error("sm_90a int4 accumulator not a multiple of 16");
          v >>= kDecodeSm90Int4Shift;
        }
      }
    }
    // Warp reduction, then epilogue or partials + arrival counter.
    int32_t r[kWarpSize][kDecodeAccPerLane] = {};
    for (int lane = 0; lane < kWarpSize; ++lane) {
      for (int i = 0; i < kDecodeAccPerLane; ++i) {
        for (int warp = 0; warp < kDecodeWarps; ++warp) {
          const uint32_t s = static_cast<uint32_t>(r[lane][i]) +
                             static_cast<uint32_t>(acc[static_cast<size_t>(((warp * 2 + i / 4) * kWarpSize + lane) * 4 + i % 4)]);
          r[lane][i] = static_cast<int32_t>(s);
        }
      }
    }
    if (p.splits > 1) {
      for (int lane = 0; lane < kWarpSize; ++lane) {
        for (int i = 0; i < kDecodeAccPerLane; ++i) partials[static_cast<size_t>(decode_partial_index(p, tile, split, lane, i))] = r[lane][i];
      }
      if (++counters[static_cast<size_t>(tile)] != static_cast<uint32_t>(p.splits)) continue;
      for (int lane = 0; lane < kWarpSize; ++lane) {
        for (int i = 0; i < kDecodeAccPerLane; ++i) {
          uint32_t s = 0;
          for (int64_t sp = 0; sp < p.splits; ++sp) s += static_cast<uint32_t>(partials[static_cast<size_t>(decode_partial_index(p, tile, sp, lane, i))]);
          r[lane][i] = static_cast<int32_t>(s);
        }
      }
      counters[static_cast<size_t>(tile)] = 0;
    }
    GpuActivationsView xs = in.xq ? *in.xq : GpuActivationsView{};
    if (!in.xq) {
      xs.M = p.M;
      xs.K4 = p.K4;
      xs.K8 = p.K8;
      xs.sx4 = sx4;
      xs.zx4 = zx4;
      xs.sx8 = sx8;
      xs.zx8 = zx8;
    }
    for (int lane = 0; lane < kWarpSize; ++lane) {
      for (int i = 0; i < 4; ++i) {
        const int64_t m = mma_c_row(lane, i);
        const int64_t col = tile * kDecodeTileRows + mma_c_col(lane, i);
        if (m >= p.M || col >= p.N) continue;
        const float v = epilogue_element(xs, w, m, col, r[lane][i], r[lane][4 + i]);
        if (y) {
          y[m * ldy + col] = v;
        } else {
          uint32_t bits;
          std::memcpy(&bits, &v, 4);
          y_bf16[m * ldy + col] = f32_bits_to_bf16(bits);
        }
      }
    }
  }
}

}  // namespace resq::gpu::emulation
