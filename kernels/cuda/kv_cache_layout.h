// Paged, quantized 4/8-bit KV cache for GPU decode: the byte layout (index math shared by the CUDA
// kernels of kernels/cuda/kv_cache.cu and the host), and the scalar CPU references of the cache
// write and of decode attention over a block table. Plain C++ (compiles without nvcc).
//
// One cache (K or V) of one layer is one byte buffer of `num_blocks` physical blocks; a physical
// block holds kKvBlockTokens = 16 token slots of every KV head. Slot = block * 16 + row. The bytes
// of one (block, KV head), a "head block", are contiguous (head_block_bytes(), a multiple of 16):
//   q4 uint8 [16][ld4]   4-bit part: channels [0, hd4) of the row, hd4 = hd - r_h, unsigned
//                        nibbles two per byte, LOW nibble first (format/packed.h); ld4 =
//                        gpu_row_stride(ceil(hd4 / 2)); pad nibble and bytes past the row are 0
//   q8 uint8 [16][ld8]   8-bit part: the last r_h channels; ld8 = gpu_row_stride(r_h)
//   s4 float [16], z4 int32 [16], s8 float [16], z8 int32 [16]   per-row scale / zero point
// Head block (b, h) starts at byte (b * num_kv_heads + h) * head_block_bytes(). Each row is
// quantized exactly like resq::cpu::quantize_activations_reference with K4 = hd4, K8 = r_h and
// clip4 = clip8 = clip (what PackedKvCacheQuant stores on the CPU); dequantized x = s * (q - z).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "resq/common/error.h"
#include "resq/common/host_device.h"
#include "cuda/mixed_gemm_layout.h"
#include "resq/format/packed.h"

namespace resq::gpu {

// Tokens per cache block (the paging granularity of the block table).
constexpr int kKvBlockTokens = 16;
// Largest head_dim the decode attention kernel handles (8 channels per lane of one warp).
constexpr int64_t kMaxKvHeadDim = 256;
// Warps of one decode-attention CTA; warp w handles the tokens t with t % kKvAttnWarps == w.
constexpr int kKvAttnWarps = 4;

// Geometry of one layer's K (or V) cache.
struct KvCacheLayout {
  int64_t num_blocks = 0;    // physical blocks in the buffer
  int64_t num_kv_heads = 0;  // Hkv
  int64_t head_dim = 0;      // hd
  int64_t r_h = 0;           // 8-bit channels: the last r_h channels of a row (0 <= r_h <= hd)

  RESQ_HOST_DEVICE constexpr int64_t hd4() const { return head_dim - r_h; }
  RESQ_HOST_DEVICE constexpr int64_t hd8() const { return r_h; }
  // Row strides (bytes, multiples of 16) of the two parts.
  RESQ_HOST_DEVICE constexpr int64_t ld4() const { return gpu_row_stride(format::packed4_row_bytes(hd4())); }
  RESQ_HOST_DEVICE constexpr int64_t ld8() const { return gpu_row_stride(hd8()); }
  // Byte offsets inside a head block.
  RESQ_HOST_DEVICE constexpr int64_t q4_offset() const { return 0; }
  RESQ_HOST_DEVICE constexpr int64_t q8_offset() const { return kKvBlockTokens * ld4(); }
  RESQ_HOST_DEVICE constexpr int64_t s4_offset() const { return q8_offset() + kKvBlockTokens * ld8(); }
  RESQ_HOST_DEVICE constexpr int64_t z4_offset() const { return s4_offset() + kKvBlockTokens * 4; }
  RESQ_HOST_DEVICE constexpr int64_t s8_offset() const { return z4_offset() + kKvBlockTokens * 4; }
  RESQ_HOST_DEVICE constexpr int64_t z8_offset() const { return s8_offset() + kKvBlockTokens * 4; }
  RESQ_HOST_DEVICE constexpr int64_t head_block_bytes() const { return z8_offset() + kKvBlockTokens * 4; }
  // Byte offset of head block (block, head) in the buffer.
  RESQ_HOST_DEVICE constexpr int64_t head_block_offset(int64_t block, int64_t head) const {
    return (block * num_kv_heads + head) * head_block_bytes();
  }
  RESQ_HOST_DEVICE constexpr int64_t num_slots() const { return num_blocks * kKvBlockTokens; }
  RESQ_HOST_DEVICE constexpr int64_t buffer_bytes() const {
    return num_blocks * num_kv_heads * head_block_bytes();
  }
};

// The scale/zero arrays hold 4-byte elements and every region of a head block must start 16-byte
// aligned (vector loads; the allocation itself is at least 256-byte aligned by cudaMalloc).
static_assert(sizeof(float) == 4 && sizeof(int32_t) == 4, "scale/zero entries are 4 bytes");
static_assert(kKvBlockTokens * 4 % kGpuRowAlign == 0, "scale/zero arrays keep 16-byte alignment");
static_assert(KvCacheLayout{1, 1, 128, 16}.ld4() == 64 && KvCacheLayout{1, 1, 128, 16}.ld8() == 16,
              "hd 128, r_h 16: 56 -> 64-byte 4-bit rows, 16-byte 8-bit rows");
static_assert(KvCacheLayout{1, 1, 128, 16}.head_block_bytes() == 16 * (64 + 16) + 4 * 64,
              "hd 128 head block: 1536 bytes");
static_assert(KvCacheLayout{1, 1, 8, 1}.head_block_bytes() % kGpuRowAlign == 0 &&
                  KvCacheLayout{1, 1, 7, 0}.head_block_bytes() % kGpuRowAlign == 0,
              "head blocks are 16-byte multiples");

// Physical block and row of a slot (slot >= 0).
RESQ_HOST_DEVICE constexpr int64_t kv_slot_block(int64_t slot) { return slot / kKvBlockTokens; }
RESQ_HOST_DEVICE constexpr int kv_slot_row(int64_t slot) { return static_cast<int>(slot % kKvBlockTokens); }

// ---------------------------------------------------------------------------- decode lane mapping
// In the attention kernel one warp holds one head_dim row: lane `lane` owns the contiguous channels
// [lane * cpl, lane * cpl + cpl) with cpl = kv_channels_per_lane(hd) (a power of two), those < hd.

// Channels per lane for a head_dim in [1, kMaxKvHeadDim]: 1, 2, 4 or 8 (0 outside that range).
RESQ_HOST_DEVICE constexpr int kv_channels_per_lane(int64_t head_dim) {
  return head_dim < 1      ? 0
         : head_dim <= 32  ? 1
         : head_dim <= 64  ? 2
         : head_dim <= 128 ? 4
         : head_dim <= 256 ? 8
                           : 0;
}
// Channel i (0 <= i < cpl) of a lane; the lane skips it when it is >= head_dim.
RESQ_HOST_DEVICE constexpr int kv_lane_channel(int lane, int i, int cpl) { return lane * cpl + i; }

// ---------------------------------------------------------------------------- decode per-lane math
// Used by kv_decode_attention_cuda and by its host emulation in tests/kernels: dequantization of a
// lane's channels, one online-softmax step, and the merge of the per-warp states.

// Byte geometry of a head block as ints (head_dim <= kMaxKvHeadDim keeps every offset small).
struct KvHeadBlockGeometry {
  int hd, hd4, ld4, ld8, q8, s4, z4, s8, z8;
  int64_t bytes;
};

RESQ_HOST_DEVICE inline KvHeadBlockGeometry kv_head_block_geometry(const KvCacheLayout& l) {
  KvHeadBlockGeometry g;
  g.hd = static_cast<int>(l.head_dim);
  g.hd4 = static_cast<int>(l.hd4());
  g.ld4 = static_cast<int>(l.ld4());
  g.ld8 = static_cast<int>(l.ld8());
  g.q8 = static_cast<int>(l.q8_offset());
  g.s4 = static_cast<int>(l.s4_offset());
  g.z4 = static_cast<int>(l.z4_offset());
  g.s8 = static_cast<int>(l.s8_offset());
  g.z8 = static_cast<int>(l.z8_offset());
  g.bytes = l.head_block_bytes();
  return g;
}

// 4-byte scale / zero entry at p (4-byte aligned): a plain load on the device, memcpy on the host
// (host buffers are bytes; no type punning).
template <typename T>
RESQ_HOST_DEVICE inline T kv_load4(const uint8_t* p) {
  static_assert(sizeof(T) == 4, "scale / zero entries are 4 bytes");
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const T*>(p);
#else
  T v;
  std::memcpy(&v, p, 4);
  return v;
#endif
}

// Channels kv_lane_channel(lane, i, CPL), i < CPL, of row `row` of head block hb (uint8
// [head_block_bytes]) dequantized s * (q - z) with one rounded fp32 product; channels >= hd give 0.
template <int CPL>
RESQ_HOST_DEVICE inline void kv_dequantize_lane(const uint8_t* hb, const KvHeadBlockGeometry& g, int row,
                                                int lane, float (&out)[CPL]) {
  const float s4 = kv_load4<float>(hb + g.s4 + 4 * row);
  const int32_t z4 = kv_load4<int32_t>(hb + g.z4 + 4 * row);
  const float s8 = kv_load4<float>(hb + g.s8 + 4 * row);
  const int32_t z8 = kv_load4<int32_t>(hb + g.z8 + 4 * row);
  const uint8_t* q4 = hb + row * g.ld4;
  const uint8_t* q8 = hb + g.q8 + row * g.ld8;
  for (int i = 0; i < CPL; ++i) {
    const int c = kv_lane_channel(lane, i, CPL);
    float d = 0.0f;
    if (c < g.hd4) {
      d = format::dequantize_activation_value(format::uint4_get(q4, c), s4, z4);
    } else if (c < g.hd) {
      d = format::dequantize_activation_value(static_cast<int32_t>(q8[c - g.hd4]), s8, z8);
    }
    out[i] = d;
  }
}

// One token of a warp's online softmax: running max m and sum l (start: -inf, 0) take `score`;
// the accumulators are then to be updated as acc = acc * corr + p * v (corr = 0 for the first
// token, since exp(-inf) = 0).
RESQ_HOST_DEVICE inline void kv_softmax_step(float score, float* m, float* l, float* corr, float* p) {
  const float m_new = fmaxf(*m, score);
  *corr = expf(*m - m_new);
  *p = expf(score - m_new);
  *l = *l * *corr + *p;
  *m = m_new;
}

// Output channel c from kKvAttnWarps warp states (m [W], l [W], acc [W][acc_stride]): rescaled to
// the common max and summed in increasing warp order; warps that saw no token (l = 0) are skipped.
// Warp 0 always saw a token (context length >= 1), so the common max is finite.
RESQ_HOST_DEVICE inline float kv_merge_warp_states(const float* m, const float* l, const float* acc,
                                                   int acc_stride, int c) {
  float mx = m[0];
  for (int w = 1; w < kKvAttnWarps; ++w) {
    if (l[w] > 0.0f) mx = fmaxf(mx, m[w]);
  }
  float lsum = 0.0f, osum = 0.0f;
  for (int w = 0; w < kKvAttnWarps; ++w) {
    if (l[w] > 0.0f) {
      const float f = expf(m[w] - mx);
      lsum += l[w] * f;
      osum += acc[w * acc_stride + c] * f;
    }
  }
  return osum / lsum;
}

// ---------------------------------------------------------------------------- argument checks

// Throws ShapeError for negative / inconsistent dims, UnsupportedError for a head_dim the kernels
// do not handle (above kMaxKvHeadDim).
inline void check_kv_cache_layout(const KvCacheLayout& l, const std::string& fn) {
  RESQ_CHECK_OR_THROW(
      l.num_blocks >= 0 && l.num_kv_heads >= 1 && l.head_dim >= 1 && l.r_h >= 0 && l.r_h <= l.head_dim,
      ShapeError,
      fn +
          ": KV cache layout needs num_blocks >= 0, num_kv_heads >= 1, head_dim >= 1, "
          "0 <= r_h <= head_dim; got num_blocks=" +
          std::to_string(l.num_blocks) + " num_kv_heads=" + std::to_string(l.num_kv_heads) +
          " head_dim=" + std::to_string(l.head_dim) + " r_h=" + std::to_string(l.r_h));
  RESQ_CHECK_OR_THROW(l.head_dim <= kMaxKvHeadDim, UnsupportedError,
                      fn + ": head_dim " + std::to_string(l.head_dim) + " above " +
                          std::to_string(kMaxKvHeadDim) + " (one warp holds a row, 8 channels per lane)");
}

inline void check_kv_clip(float clip, const std::string& fn, const char* which) {
  RESQ_CHECK_OR_THROW(clip > 0.0f && clip <= 1.0f, ConfigError,
                      fn + ": " + which + " clip ratio " + std::to_string(clip) + " outside (0, 1]");
}

// ---------------------------------------------------------------------------- CPU references

// Cache write of one tensor (K or V): x float [tokens][ldx] where token t's row of KV head h is
// x[t * ldx + h * head_dim, + head_dim) (ldx >= num_kv_heads * head_dim, 0 = that); slot_mapping
// int64 [tokens]: token t goes to slot slot_mapping[t] of `cache` (uint8 [layout.buffer_bytes()]);
// a negative slot skips the token (padding). Each written row: scale/zero from
// format::activation_scale_zero over each part's raw min/max (clip for both parts), values from
// format::quantize_activation_value; the whole row stride is written (pad nibble, padding = 0).
// Throws ShapeError (dims, null pointers, slot >= num_slots) / ConfigError (clip) /
// UnsupportedError (head_dim) before writing anything.
inline RESQ_NO_FP_CONTRACT void kv_write_reference(const float* x, int64_t tokens, int64_t ldx,
                                                   const int64_t* slot_mapping, const KvCacheLayout& layout,
                                                   float clip, uint8_t* cache) {
  RESQ_NO_FP_CONTRACT_BODY
  const std::string fn = "kv_write_reference";
  check_kv_cache_layout(layout, fn);
  check_kv_clip(clip, fn, "KV");
  const int64_t Hkv = layout.num_kv_heads, hd = layout.head_dim, hd4 = layout.hd4(), hd8 = layout.hd8();
  if (ldx == 0) ldx = Hkv * hd;
  RESQ_CHECK_OR_THROW(tokens >= 0 && ldx >= Hkv * hd, ShapeError,
                      fn + ": tokens = " + std::to_string(tokens) + ", ldx = " + std::to_string(ldx) +
                          " (need tokens >= 0, ldx >= num_kv_heads * head_dim = " + std::to_string(Hkv * hd) +
                          ")");
  if (tokens == 0) return;
  RESQ_CHECK_OR_THROW(x && slot_mapping && cache, ShapeError,
                      fn + ": x, slot_mapping and cache are required");
  for (int64_t t = 0; t < tokens; ++t) {
    RESQ_CHECK_OR_THROW(slot_mapping[t] < layout.num_slots(), ShapeError,
                        fn + ": slot_mapping[" + std::to_string(t) +
                            "] = " + std::to_string(slot_mapping[t]) +
                            " >= num_blocks * 16 = " + std::to_string(layout.num_slots()));
  }
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t slot = slot_mapping[t];
    if (slot < 0) continue;
    const int row = kv_slot_row(slot);
    for (int64_t h = 0; h < Hkv; ++h) {
      const float* xr = x + t * ldx + h * hd;
      uint8_t* hb = cache + layout.head_block_offset(kv_slot_block(slot), h);
      float mn4 = 0.0f, mx4 = 0.0f, mn8 = 0.0f, mx8 = 0.0f;
      for (int64_t c = 0; c < hd4; ++c) {
        mn4 = xr[c] < mn4 ? xr[c] : mn4;
        mx4 = xr[c] > mx4 ? xr[c] : mx4;
      }
      for (int64_t c = hd4; c < hd; ++c) {
        mn8 = xr[c] < mn8 ? xr[c] : mn8;
        mx8 = xr[c] > mx8 ? xr[c] : mx8;
      }
      float s4 = 1.0f, s8 = 1.0f;
      int32_t z4 = 0, z8 = 0;
      format::activation_scale_zero(mn4, mx4, clip, format::kUint4Max, &s4, &z4);
      format::activation_scale_zero(mn8, mx8, clip, format::kUint8Max, &s8, &z8);
      uint8_t* q4 = hb + layout.q4_offset() + row * layout.ld4();
      for (int64_t b = 0; b < layout.ld4(); ++b) q4[b] = 0;
      for (int64_t c = 0; c < hd4; ++c) {
        format::uint4_set(q4, c, format::quantize_activation_value(xr[c], s4, z4, format::kUint4Max));
      }
      uint8_t* q8 = hb + layout.q8_offset() + row * layout.ld8();
      for (int64_t b = 0; b < layout.ld8(); ++b) {
        q8[b] = b < hd8 ? static_cast<uint8_t>(
                              format::quantize_activation_value(xr[hd4 + b], s8, z8, format::kUint8Max))
                        : uint8_t{0};
      }
      // memcpy: the host buffer is bytes (no type punning through float* / int32_t*).
      std::memcpy(hb + layout.s4_offset() + 4 * row, &s4, 4);
      std::memcpy(hb + layout.z4_offset() + 4 * row, &z4, 4);
      std::memcpy(hb + layout.s8_offset() + 4 * row, &s8, 4);
      std::memcpy(hb + layout.z8_offset() + 4 * row, &z8, 4);
    }
  }
}

// Dequantized row of one slot and KV head: out float [head_dim], out[c] = s * (q - z) (one fp32
// product, as PackedKvCacheQuant::unpack). cache: uint8 [layout.buffer_bytes()].
inline void kv_dequantize_row_reference(const uint8_t* cache, const KvCacheLayout& layout, int64_t slot,
                                        int64_t head, float* out) {
  const uint8_t* hb = cache + layout.head_block_offset(kv_slot_block(slot), head);
  const int row = kv_slot_row(slot);
  const int64_t hd4 = layout.hd4();
  const uint8_t* q4 = hb + layout.q4_offset() + row * layout.ld4();
  const uint8_t* q8 = hb + layout.q8_offset() + row * layout.ld8();
  float s4 = 0.0f, s8 = 0.0f;
  int32_t z4 = 0, z8 = 0;
  std::memcpy(&s4, hb + layout.s4_offset() + 4 * row, 4);
  std::memcpy(&z4, hb + layout.z4_offset() + 4 * row, 4);
  std::memcpy(&s8, hb + layout.s8_offset() + 4 * row, 4);
  std::memcpy(&z8, hb + layout.z8_offset() + 4 * row, 4);
  for (int64_t c = 0; c < hd4; ++c)
    out[c] = format::dequantize_activation_value(format::uint4_get(q4, c), s4, z4);
  for (int64_t c = 0; c < layout.hd8(); ++c) {
    out[hd4 + c] = format::dequantize_activation_value(static_cast<int32_t>(q8[c]), s8, z8);
  }
}

// Decode attention arguments (host pointers for the reference, device pointers for the kernel).
//   q            float [num_seqs][num_q_heads][head_dim]   one query token per sequence (already
//                                                          rotated / RoPE'd like the cached keys)
//   block_tables int32 [num_seqs][max_blocks_per_seq]      logical block j of sequence s -> physical
//   context_lens int32 [num_seqs]                          keys [0, len) of sequence s are attended
//   scale        softmax scale (usually 1 / sqrt(head_dim))
//   out          float [num_seqs][num_q_heads][head_dim]
// GQA: query head qh reads KV head qh / (num_q_heads / num_kv_heads). A sequence of length 0 gives
// a zero output row.
struct KvDecodeArgs {
  int64_t num_seqs = 0;
  int64_t num_q_heads = 0;
  int64_t max_blocks_per_seq = 0;
  const float* q = nullptr;
  const int32_t* block_tables = nullptr;
  const int32_t* context_lens = nullptr;
  float scale = 1.0f;
  float* out = nullptr;
};

// Checks the host-visible arguments of decode attention (not the contents of block_tables /
// context_lens, which may live on the device). Throws ShapeError / UnsupportedError.
inline void check_kv_decode_args(const KvDecodeArgs& a, const KvCacheLayout& layout, const std::string& fn) {
  check_kv_cache_layout(layout, fn);
  RESQ_CHECK_OR_THROW(
      a.num_seqs >= 0 && a.num_q_heads >= 1 && a.num_q_heads % layout.num_kv_heads == 0, ShapeError,
      fn + ": num_seqs = " + std::to_string(a.num_seqs) + ", num_q_heads = " + std::to_string(a.num_q_heads) +
          " (need num_seqs >= 0 and num_q_heads a positive "
          "multiple of num_kv_heads = " +
          std::to_string(layout.num_kv_heads) + ")");
  RESQ_CHECK_OR_THROW(a.max_blocks_per_seq >= 1, ShapeError,
                      fn + ": max_blocks_per_seq = " + std::to_string(a.max_blocks_per_seq) + " (need >= 1)");
  RESQ_CHECK_OR_THROW(std::isfinite(a.scale), ShapeError, fn + ": scale is not finite");
  if (a.num_seqs == 0) return;
  RESQ_CHECK_OR_THROW(a.q && a.block_tables && a.context_lens && a.out, ShapeError,
                      fn + ": q, block_tables, context_lens and out are required");
}

// Scalar decode attention over the quantized caches (the oracle of kv_decode_attention_cuda):
// for sequence s and query head qh (KV head kh = qh / (Hq / Hkv)), keys/values dequantized with
// kv_dequantize_row_reference from slot block_tables[s][t / 16] * 16 + t % 16, t < len:
//   score_t = (sum_c q[c] * k_t[c], fp32 in increasing c) * scale
//   p_t = exp(score_t - max_t score_t),  l = sum_t p_t (increasing t),  out[c] = (sum_t p_t * v_t[c]) / l
// all in fp32. Throws (besides check_kv_decode_args) ShapeError for a context length outside
// [0, max_blocks_per_seq * 16] or a block id outside [0, num_blocks).
inline RESQ_NO_FP_CONTRACT void kv_decode_attention_reference(const KvDecodeArgs& a,
                                                              const KvCacheLayout& layout,
                                                              const uint8_t* k_cache,
                                                              const uint8_t* v_cache) {
  RESQ_NO_FP_CONTRACT_BODY
  const std::string fn = "kv_decode_attention_reference";
  check_kv_decode_args(a, layout, fn);
  if (a.num_seqs == 0) return;
  RESQ_CHECK_OR_THROW(k_cache && v_cache, ShapeError, fn + ": k_cache and v_cache are required");
  const int64_t hd = layout.head_dim, Hq = a.num_q_heads, group = Hq / layout.num_kv_heads;
  std::vector<float> k(static_cast<size_t>(hd)), v(static_cast<size_t>(hd)), acc(static_cast<size_t>(hd));
  std::vector<float> scores;
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    const int64_t len = a.context_lens[s];
    RESQ_CHECK_OR_THROW(len >= 0 && len <= a.max_blocks_per_seq * kKvBlockTokens, ShapeError,
                        fn + ": context_lens[" + std::to_string(s) + "] = " + std::to_string(len) +
                            " outside [0, max_blocks_per_seq * 16 = " +
                            std::to_string(a.max_blocks_per_seq * kKvBlockTokens) + "]");
    const int32_t* table = a.block_tables + s * a.max_blocks_per_seq;
    for (int64_t j = 0; j < (len + kKvBlockTokens - 1) / kKvBlockTokens; ++j) {
      RESQ_CHECK_OR_THROW(table[j] >= 0 && table[j] < layout.num_blocks, ShapeError,
                          fn + ": block_tables[" + std::to_string(s) + "][" + std::to_string(j) +
                              "] = " + std::to_string(table[j]) +
                              " outside [0, num_blocks = " + std::to_string(layout.num_blocks) + ")");
    }
    for (int64_t qh = 0; qh < Hq; ++qh) {
      const int64_t kh = qh / group;
      const float* qr = a.q + (s * Hq + qh) * hd;
      float* o = a.out + (s * Hq + qh) * hd;
      if (len == 0) {
        for (int64_t c = 0; c < hd; ++c) o[c] = 0.0f;
        continue;
      }
      scores.assign(static_cast<size_t>(len), 0.0f);
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < len; ++t) {
        const int64_t slot =
            static_cast<int64_t>(table[t / kKvBlockTokens]) * kKvBlockTokens + t % kKvBlockTokens;
        kv_dequantize_row_reference(k_cache, layout, slot, kh, k.data());
        float dot = 0.0f;
        for (int64_t c = 0; c < hd; ++c) dot += qr[c] * k[static_cast<size_t>(c)];
        scores[static_cast<size_t>(t)] = dot * a.scale;
        mx = scores[static_cast<size_t>(t)] > mx ? scores[static_cast<size_t>(t)] : mx;
      }
      float l = 0.0f;
      for (auto& acc_c : acc) acc_c = 0.0f;
      for (int64_t t = 0; t < len; ++t) {
        const float p = std::exp(scores[static_cast<size_t>(t)] - mx);
        l += p;
        const int64_t slot =
            static_cast<int64_t>(table[t / kKvBlockTokens]) * kKvBlockTokens + t % kKvBlockTokens;
        kv_dequantize_row_reference(v_cache, layout, slot, kh, v.data());
        for (int64_t c = 0; c < hd; ++c) acc[static_cast<size_t>(c)] += p * v[static_cast<size_t>(c)];
      }
      for (int64_t c = 0; c < hd; ++c) o[c] = acc[static_cast<size_t>(c)] / l;
    }
  }
}

}  // namespace resq::gpu
