// CUDA quantized KV cache (layout: kernels/cuda/kv_cache_layout.h): the cache write, one warp per
// (token, KV head, K|V) row, bit-identical to kv_write_reference (same format:: formulas, exactly
// rounded intrinsics), and decode attention, one CTA per (sequence, query head) streaming the
// paged key/value rows, dequantizing s * (q - z) in registers, fp32 dots, online softmax.
#include <array>
#include <atomic>
#include <climits>
#include <cmath>
#include <string>

#include "cuda/kv_cache.cuh"
#include "resq/cuda/device.h"
#include "cuda/mixed_gemm_layout.h"
#include "resq/format/packed.h"

namespace resq::gpu {
namespace {

constexpr int kWriteThreads = 128;
constexpr int kWriteWarps = kWriteThreads / kWarpSize;  // rows per CTA
constexpr int kAttnThreads = kKvAttnWarps * kWarpSize;

__device__ __forceinline__ float load_as_float(const float* p) { return *p; }
// bf16 -> fp32 is exact: the bf16 bits are the high half of the fp32 bits.
__device__ __forceinline__ float load_as_float(const uint16_t* p) {
  return __uint_as_float(static_cast<uint32_t>(*p) << 16);
}

// Grid: ceil(tokens * Hkv * 2 / kWriteWarps) CTAs of kWriteThreads. Warp row r = (t * Hkv + h) * 2
// + which (0 = K, 1 = V): reads x[t * ldkv + h * hd, + hd), writes row slot % 16 of head block
// (slot / 16, h) of the K or V cache. Every branch below is uniform per warp, so the full-mask
// shuffles are safe.
template <typename In>
__global__ void __launch_bounds__(kWriteThreads)
    kv_cache_write_kernel(const In* __restrict__ k, const In* __restrict__ v, int64_t tokens, int64_t ldkv,
                          const int64_t* __restrict__ slot_mapping, KvCacheLayout layout, float k_clip,
                          float v_clip, uint8_t* __restrict__ k_cache, uint8_t* __restrict__ v_cache) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t r =
      static_cast<int64_t>(blockIdx.x) * kWriteWarps + static_cast<int64_t>(threadIdx.x) / kWarpSize;
  const int64_t Hkv = layout.num_kv_heads;
  if (r >= tokens * Hkv * 2) return;
  const int which = static_cast<int>(r % 2);
  const int64_t t = r / 2 / Hkv, h = r / 2 % Hkv;
  const int64_t slot = slot_mapping[t];
  if (slot < 0 || slot >= layout.num_slots()) return;
  const int64_t hd = layout.head_dim, hd4 = layout.hd4(), hd8 = layout.hd8();
  const In* xr = (which ? v : k) + t * ldkv + h * hd;
  const float clip = which ? v_clip : k_clip;
  uint8_t* hb = (which ? v_cache : k_cache) + layout.head_block_offset(kv_slot_block(slot), h);
  const int row = kv_slot_row(slot);

  // Per-part min and max, starting from 0 (exact in any order).
  float mn4 = 0.0f, mx4 = 0.0f, mn8 = 0.0f, mx8 = 0.0f;
  for (int64_t c = lane; c < hd; c += kWarpSize) {
    const float e = load_as_float(xr + c);
    if (c < hd4) {
      mn4 = fminf(mn4, e);
      mx4 = fmaxf(mx4, e);
    } else {
      mn8 = fminf(mn8, e);
      mx8 = fmaxf(mx8, e);
    }
  }
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off >>= 1) {
    mn4 = fminf(mn4, __shfl_xor_sync(0xFFFFFFFFu, mn4, off));
    mx4 = fmaxf(mx4, __shfl_xor_sync(0xFFFFFFFFu, mx4, off));
    mn8 = fminf(mn8, __shfl_xor_sync(0xFFFFFFFFu, mn8, off));
    mx8 = fmaxf(mx8, __shfl_xor_sync(0xFFFFFFFFu, mx8, off));
  }
  float s4 = 1.0f, s8 = 1.0f;
  int32_t z4 = 0, z8 = 0;
  format::activation_scale_zero(mn4, mx4, clip, format::kUint4Max, &s4, &z4);
  format::activation_scale_zero(mn8, mx8, clip, format::kUint8Max, &s8, &z8);

  // Quantized bytes over the whole row stride (pad nibble and padding bytes 0).
  const int64_t rb4 = format::packed4_row_bytes(hd4);
  uint8_t* q4 = hb + layout.q4_offset() + row * layout.ld4();
  for (int64_t b = lane; b < layout.ld4(); b += kWarpSize) {
    int byte = 0;
    if (b < rb4) {
      const int64_t c = 2 * b;
      byte = format::quantize_activation_value(load_as_float(xr + c), s4, z4, format::kUint4Max);
      if (c + 1 < hd4) {
        byte |= format::quantize_activation_value(load_as_float(xr + c + 1), s4, z4, format::kUint4Max) << 4;
      }
    }
    q4[b] = static_cast<uint8_t>(byte);
  }
  uint8_t* q8 = hb + layout.q8_offset() + row * layout.ld8();
  for (int64_t b = lane; b < layout.ld8(); b += kWarpSize) {
    q8[b] = b < hd8 ? static_cast<uint8_t>(format::quantize_activation_value(load_as_float(xr + hd4 + b), s8,
                                                                             z8, format::kUint8Max))
                    : uint8_t{0};
  }
  if (lane == 0) {
    reinterpret_cast<float*>(hb + layout.s4_offset())[row] = s4;
    reinterpret_cast<int32_t*>(hb + layout.z4_offset())[row] = z4;
    reinterpret_cast<float*>(hb + layout.s8_offset())[row] = s8;
    reinterpret_cast<int32_t*>(hb + layout.z8_offset())[row] = z8;
  }
#endif
}

// Grid: num_seqs * num_q_heads CTAs of kAttnThreads; CTA (s, qh) writes out[s][qh][0, hd).
// Warp w streams the tokens t = w, w + kKvAttnWarps, ... with its own online softmax state
// (m, l, acc); the kKvAttnWarps states are merged through shared memory at the end.
template <int CPL>
__global__ void __launch_bounds__(kAttnThreads)
    kv_decode_attention_kernel(KvDecodeArgs a, KvCacheLayout layout, const uint8_t* __restrict__ k_cache,
                               const uint8_t* __restrict__ v_cache) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ float sm_acc[kKvAttnWarps][kMaxKvHeadDim];
  __shared__ float sm_m[kKvAttnWarps];
  __shared__ float sm_l[kKvAttnWarps];
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarpSize;
  const int warp = tid / kWarpSize;
  const int64_t Hq = a.num_q_heads;
  const int64_t s = blockIdx.x / Hq, qh = blockIdx.x % Hq;
  const int64_t kh = qh / (Hq / layout.num_kv_heads);
  const KvHeadBlockGeometry g = kv_head_block_geometry(layout);
  float* o = a.out + (s * Hq + qh) * g.hd;
  int64_t len = a.context_lens[s];
  len = len < 0 ? 0 : len;
  len = len > a.max_blocks_per_seq * kKvBlockTokens ? a.max_blocks_per_seq * kKvBlockTokens : len;
  if (len == 0) {
    for (int c = tid; c < g.hd; c += kAttnThreads) o[c] = 0.0f;
    return;
  }
  const float* qr = a.q + (s * Hq + qh) * g.hd;
  float qv[CPL];
  float acc[CPL];
#pragma unroll
  for (int i = 0; i < CPL; ++i) {
    const int c = kv_lane_channel(lane, i, CPL);
    qv[i] = c < g.hd ? qr[c] : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int32_t* table = a.block_tables + s * a.max_blocks_per_seq;
  for (int64_t t = warp; t < len; t += kKvAttnWarps) {
    const int64_t blk = table[t / kKvBlockTokens];
    const int row = static_cast<int>(t % kKvBlockTokens);
    const int64_t hb_off = (blk * layout.num_kv_heads + kh) * g.bytes;
    float kd[CPL];
    kv_dequantize_lane<CPL>(k_cache + hb_off, g, row, lane, kd);
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < CPL; ++i) dot += qv[i] * kd[i];
#pragma unroll
    for (int off = kWarpSize / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xFFFFFFFFu, dot, off);
    float corr = 0.0f, p = 0.0f;
    kv_softmax_step(dot * a.scale, &m, &l, &corr, &p);
    float vd[CPL];
    kv_dequantize_lane<CPL>(v_cache + hb_off, g, row, lane, vd);
#pragma unroll
    for (int i = 0; i < CPL; ++i) acc[i] = acc[i] * corr + p * vd[i];
  }
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < CPL; ++i) {
    const int c = kv_lane_channel(lane, i, CPL);
    if (c < g.hd) sm_acc[warp][c] = acc[i];
  }
  __syncthreads();
  for (int c = tid; c < g.hd; c += kAttnThreads)
    o[c] = kv_merge_warp_states(sm_m, sm_l, &sm_acc[0][0], kMaxKvHeadDim, c);
#endif
}

// Throws UnsupportedError when the device is older than sm_80 or the binary has no image of
// `kernel` for it (checked once per device and kernel instantiation).
template <typename Kernel>
void require_kernel_ready(Kernel kernel, const char* what, std::array<std::atomic<bool>, 64>& ready) {
  require_sm80(what);
  int device = 0;
  RESQ_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= 0 && device < 64 && ready[static_cast<size_t>(device)].load()) return;
  cudaFuncAttributes attr{};
  require_kernel_image(cudaFuncGetAttributes(&attr, kernel), what);
  if (device >= 0 && device < 64) ready[static_cast<size_t>(device)].store(true);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % kGpuRowAlign == 0; }

template <typename In>
void launch_kv_cache_write(const In* k, const In* v, int64_t tokens, int64_t ldkv,
                           const int64_t* slot_mapping, const KvCacheLayout& layout, float k_clip,
                           float v_clip, uint8_t* k_cache, uint8_t* v_cache, cudaStream_t stream) {
  const std::string fn = "kv_cache_write_cuda";
  check_kv_cache_layout(layout, fn);
  check_kv_clip(k_clip, fn, "K");
  check_kv_clip(v_clip, fn, "V");
  const int64_t row_elems = layout.num_kv_heads * layout.head_dim;
  if (ldkv == 0) ldkv = row_elems;
  RESQ_CHECK_OR_THROW(
      tokens >= 0 && ldkv >= row_elems, ShapeError,
      fn + ": tokens = " + std::to_string(tokens) + ", ldkv = " + std::to_string(ldkv) +
          " (need tokens >= 0, ldkv >= num_kv_heads * head_dim = " + std::to_string(row_elems) + ")");
  if (tokens == 0) return;
  RESQ_CHECK_OR_THROW(k && v && slot_mapping && k_cache && v_cache, ShapeError,
                      fn + ": k, v, slot_mapping, k_cache and v_cache are required");
  RESQ_CHECK_OR_THROW(aligned16(k_cache) && aligned16(v_cache), ShapeError,
                      fn + ": k_cache and v_cache must be 16-byte aligned");
  const int64_t ctas = ceil_div(tokens * layout.num_kv_heads * 2, kWriteWarps);
  RESQ_CHECK_OR_THROW(ctas <= INT_MAX, ShapeError,
                      fn + ": " + std::to_string(tokens) + " tokens x " +
                          std::to_string(layout.num_kv_heads) + " heads is too many rows for one launch");
  static std::array<std::atomic<bool>, 64> ready{};
  require_kernel_ready(kv_cache_write_kernel<In>, fn.c_str(), ready);
  kv_cache_write_kernel<In><<<static_cast<unsigned>(ctas), kWriteThreads, 0, stream>>>(
      k, v, tokens, ldkv, slot_mapping, layout, k_clip, v_clip, k_cache, v_cache);
  RESQ_CUDA_CHECK_LAUNCH("kv_cache_write_kernel");
}

template <int CPL>
void launch_kv_decode_attention(const KvDecodeArgs& a, const KvCacheLayout& layout, const uint8_t* k_cache,
                                const uint8_t* v_cache, cudaStream_t stream, const std::string& fn) {
  static std::array<std::atomic<bool>, 64> ready{};
  require_kernel_ready(kv_decode_attention_kernel<CPL>, fn.c_str(), ready);
  kv_decode_attention_kernel<CPL>
      <<<static_cast<unsigned>(a.num_seqs * a.num_q_heads), kAttnThreads, 0, stream>>>(a, layout, k_cache,
                                                                                       v_cache);
  RESQ_CUDA_CHECK_LAUNCH("kv_decode_attention_kernel");
}

}  // namespace

void kv_cache_write_cuda(const float* k, const float* v, int64_t tokens, int64_t ldkv,
                         const int64_t* slot_mapping, const KvCacheLayout& layout, float k_clip, float v_clip,
                         uint8_t* k_cache, uint8_t* v_cache, cudaStream_t stream) {
  launch_kv_cache_write<float>(k, v, tokens, ldkv, slot_mapping, layout, k_clip, v_clip, k_cache, v_cache,
                               stream);
}

void kv_cache_write_bf16_cuda(const uint16_t* k, const uint16_t* v, int64_t tokens, int64_t ldkv,
                              const int64_t* slot_mapping, const KvCacheLayout& layout, float k_clip,
                              float v_clip, uint8_t* k_cache, uint8_t* v_cache, cudaStream_t stream) {
  launch_kv_cache_write<uint16_t>(k, v, tokens, ldkv, slot_mapping, layout, k_clip, v_clip, k_cache, v_cache,
                                  stream);
}

void kv_decode_attention_cuda(const KvDecodeArgs& a, const KvCacheLayout& layout, const uint8_t* k_cache,
                              const uint8_t* v_cache, cudaStream_t stream) {
  const std::string fn = "kv_decode_attention_cuda";
  check_kv_decode_args(a, layout, fn);
  if (a.num_seqs == 0) return;
  RESQ_CHECK_OR_THROW(k_cache && v_cache, ShapeError, fn + ": k_cache and v_cache are required");
  RESQ_CHECK_OR_THROW(aligned16(k_cache) && aligned16(v_cache), ShapeError,
                      fn + ": k_cache and v_cache must be 16-byte aligned");
  RESQ_CHECK_OR_THROW(a.num_seqs * a.num_q_heads <= INT_MAX, ShapeError,
                      fn + ": num_seqs * num_q_heads = " + std::to_string(a.num_seqs * a.num_q_heads) +
                          " CTAs is too many for one launch");
  switch (kv_channels_per_lane(layout.head_dim)) {
    case 1:
      launch_kv_decode_attention<1>(a, layout, k_cache, v_cache, stream, fn);
      break;
    case 2:
      launch_kv_decode_attention<2>(a, layout, k_cache, v_cache, stream, fn);
      break;
    case 4:
      launch_kv_decode_attention<4>(a, layout, k_cache, v_cache, stream, fn);
      break;
    default:
      launch_kv_decode_attention<8>(a, layout, k_cache, v_cache, stream, fn);
      break;
  }
}

}  // namespace resq::gpu
