// CUDA decode kernel (M <= 16): mixed W4A4+W8A8 GEMV streaming each packed weight byte once.
//
// Per CTA (4 warps): one n-tile of 8 weight rows and one K split (cuda/decode_gemv_layout.h).
//   1. Each warp issues the 16-byte weight loads of its first group of blocks (registers).
//   2. Activations of the split are staged in shared memory [M][act_stride]: copied from the
//      pre-quantized rows, or (fused path) quantized from the fp32/bf16 input: one warp per token
//      row finds min/max of both parts (shuffles, exact), format::activation_scale_zero, then all
//      threads write the split's bytes with format::quantize_activation_value.
//   3. Main loop, double-buffered: load group g + 1 while group g feeds mma.sync (A from shared
//      memory, B = the loaded registers): m16n8k32 .u8.s8 for the 8-bit part; m16n8k64 .u4.s4 for
//      the 4-bit part on sm_80/86/89, and on sm_90a (no int4 mma) each register widened to two
//      int8 registers and two m16n8k32.
//   4. The 4 warps' int32 accumulators are added in shared memory; with one split warp 0 writes
//      y = format::epilogue_value(...) (fp32 or bf16); with several, it stores its partials, and
//      the last CTA of the tile to arrive (atomic counter) adds all splits and writes y, then
//      resets the counter. Integer sums: bit-exact in any arrival order.
// The same decomposition runs on the CPU in tests/kernels/decode_gemv_emulation.h.
#include "cuda/decode_gemv.cuh"

#include <array>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>

#include "resq/cuda/device.h"
#include "cuda/warp_reduce.cuh"

namespace resq::gpu {
namespace {

struct PreQuantized {};  // "In" of the path without the fused quantizer

struct DecodeArgs {
  DecodePlan plan;
  GpuActivationsView xq;     // pre-quantized path
  const void* x_in = nullptr;  // fused path: float or bf16 rows [M][ldx]
  int64_t ldx = 0;
  const int32_t* perm = nullptr;
  float clip4 = 1.0f, clip8 = 1.0f;
  GpuLinearView w;
  void* y = nullptr;
  int64_t ldy = 0;
  int out_bf16 = 0;
  int32_t* partials = nullptr;
  uint32_t* counters = nullptr;
};

// c += A (16x32 uint8) * B (32x8 int8).
__device__ __forceinline__ void mma_u8s8(int32_t (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// c += A (16x64 uint4) * B (64x8 int4): native on sm_80/86/89. On sm_90a (no int4 mma) two int8
// mmas on the even and odd nibbles, giving 16 x the sum (decode_gemv_layout.h; undone per warp).
__device__ __forceinline__ void mma_u4s4(int32_t (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  mma_u8s8(c, u4_even_to_u8(a0), u4_even_to_u8(a1), u4_even_to_u8(a2), u4_even_to_u8(a3), s4_even_to_s8x16(b0),
           s4_even_to_s8x16(b1));
  mma_u8s8(c, u4_odd_to_u8(a0), u4_odd_to_u8(a1), u4_odd_to_u8(a2), u4_odd_to_u8(a3), s4_odd_to_s8x16(b0),
           s4_odd_to_s8x16(b1));
#else
  asm("mma.sync.aligned.m16n8k64.row.col.s32.u4.s4.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// Per-lane constants of the main loop: the lane's 16-byte column of its weight row in each part
// (null past N or for an empty part) and how many row bytes are left from there (a block's chunk
// is loaded when its row byte is below the limit). 32-bit offsets: a row part is < 2^16 bytes.
struct LaneWeights {
  const uint8_t* w4 = nullptr;
  const uint8_t* w8 = nullptr;
  int lim4 = 0, lim8 = 0;
};

// The 16-byte weight loads of one group of blocks (zeros for blocks past the split and chunks
// past the row; bytes past the row inside a chunk multiply staged zeros). Streaming loads: every
// weight byte is used once.
__device__ __forceinline__ void load_group(uint4 (&r)[kDecodeUnroll], const DecodePlan& p, const LaneWeights& lw,
                                           int b0, int len, int group) {
#pragma unroll
  for (int u = 0; u < kDecodeUnroll; ++u) {
    const int i = decode_group_block(group, u);
    const int b = b0 + i;
    const int byte = decode_block_byte(p, b);
    // Selects instead of branches: one predicated load per block.
    const bool part4 = decode_block_part(p, b) == 0;
    const uint8_t* base = part4 ? lw.w4 : lw.w8;
    const int lim = part4 ? lw.lim4 : lw.lim8;
    r[u] = make_uint4(0u, 0u, 0u, 0u);
    if (i < len && byte < lim) r[u] = __ldcs(reinterpret_cast<const uint4*>(base + byte));
  }
}

template <bool kRows16>
__device__ __forceinline__ void compute_group(const uint4 (&r)[kDecodeUnroll], const uint8_t* sact,
                                              const DecodePlan& p, int b0, int len, int group, int lane,
                                              int32_t (&acc4)[4], int32_t (&acc8)[4]) {
  const int g = frag_group(lane);
  const int lb = decode_lane_byte(lane);
#pragma unroll
  for (int u = 0; u < kDecodeUnroll; ++u) {
    const int i = decode_group_block(group, u);
    if (i >= len) break;  // uniform over the warp
    uint4 x0 = make_uint4(0u, 0u, 0u, 0u), x1 = x0;
    if (g < p.M) x0 = *reinterpret_cast<const uint4*>(sact + decode_act_offset(p, g, i, lb));
    if (kRows16 && g + 8 < p.M) x1 = *reinterpret_cast<const uint4*>(sact + decode_act_offset(p, g + 8, i, lb));
    // mma j = 0 takes words 0, 1 of every lane's 16 bytes, mma j = 1 words 2, 3 (decode_frag_word).
    if (decode_block_part(p, b0 + i) == 0) {
      mma_u4s4(acc4, x0.x, x1.x, x0.y, x1.y, r[u].x, r[u].y);
      mma_u4s4(acc4, x0.z, x1.z, x0.w, x1.w, r[u].z, r[u].w);
    } else {
      mma_u8s8(acc8, x0.x, x1.x, x0.y, x1.y, r[u].x, r[u].y);
      mma_u8s8(acc8, x0.z, x1.z, x0.w, x1.w, r[u].z, r[u].w);
    }
  }
}

// Grid: plan.ctas() CTAs of kDecodeThreads; dynamic shared memory plan.act_smem_bytes.
template <bool kRows16, class In>
__global__ void __launch_bounds__(kDecodeThreads) decode_gemv_kernel(DecodeArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(16) uint8_t sact[];
  __shared__ int32_t sred[kDecodeWarps][kWarpSize][kDecodeAccPerLane];
  __shared__ float s_sx4[kDecodeMaxM], s_sx8[kDecodeMaxM];
  __shared__ int32_t s_zx4[kDecodeMaxM], s_zx8[kDecodeMaxM];
  const DecodePlan& p = a.plan;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarpSize;
  const int warp = tid / kWarpSize;
  const int64_t tile = decode_cta_tile(p, blockIdx.x);
  const int64_t split = decode_cta_split(p, blockIdx.x);
  const int b0 = decode_split_begin(p.total_blocks(), p.splits, split);
  const int len = decode_split_begin(p.total_blocks(), p.splits, split + 1) - b0;
  const int64_t n = decode_lane_row(tile, lane);
  LaneWeights lw;
  if (n < p.N) {
    const int lb = decode_lane_byte(lane);
    if (p.kb4 > 0) lw.w4 = a.w.w4 + n * a.w.ldw4 + lb;
    if (p.kb8 > 0) lw.w8 = reinterpret_cast<const uint8_t*>(a.w.w8) + n * a.w.ldw8 + lb;
    lw.lim4 = p.rb4 - lb;
    lw.lim8 = p.rb8 - lb;
  }

  // 1. The first group's weight loads go out before the activations are staged.
  uint4 cur[kDecodeUnroll], nxt[kDecodeUnroll];
  load_group(cur, p, lw, b0, len, decode_warp_group(warp, 0));
#if __CUDA_ARCH__ >= 900
  // Programmatic dependent launch (sm_90): this grid may start while the previous kernel of the
  // stream (act_quant, or the torch op producing x) still runs. Everything above reads only the
  // weights (constant after upload); every read of x / the activations, of the workspace and every
  // global write comes after this wait, which returns once the previous grid has completed and
  // its memory is visible. Without the launch attribute it returns at once.
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif

  // 2. Stage the split's activation bytes [M][len * 64] (0 past each part's row end).
  const int bytes = len * kDecodeBlockBytes;
  if constexpr (std::is_same<In, PreQuantized>::value) {
    for (int t = tid; t < p.M * (bytes / 16); t += kDecodeThreads) {
      const int m = t / (bytes / 16), c = (t % (bytes / 16)) * 16;
      const int b = b0 + c / kDecodeBlockBytes;
      const int part = decode_block_part(p, b);
      const int off = decode_block_byte(p, b) + c % kDecodeBlockBytes;
      const uint8_t* src = part == 0 ? a.xq.xq4 + m * a.xq.ldx4 : a.xq.xq8 + m * a.xq.ldx8;
      const int nb = chunk_src_bytes(true, off, decode_part_row_bytes(p, part));
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (nb == 16) {
        v = __ldg(reinterpret_cast<const uint4*>(src + off));
      } else {  // the row's last chunk: bytes past the row end (any content) become 0
        uint32_t wd[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int e = 0; e < 16; ++e) {
          if (e < nb) wd[e / 4] |= static_cast<uint32_t>(src[off + e]) << (8 * (e % 4));
        }
        v = make_uint4(wd[0], wd[1], wd[2], wd[3]);
      }
      *reinterpret_cast<uint4*>(sact + decode_act_offset(p, m, 0, 0) + c) = v;
    }
  } else {
    const In* x = static_cast<const In*>(a.x_in);
    const int64_t K = p.K4 + p.K8;
    for (int64_t m = warp; m < p.M; m += kDecodeWarps) {
      float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int64_t j = lane; j < K; j += kWarpSize) {
        decode_minmax_update(v, p.K4, j, decode_input_value(x + m * a.ldx, a.perm, j));
      }
      warp_min_max4(v);
      if (lane == 0) {
        format::activation_scale_zero(v[0], v[1], a.clip4, format::kUint4Max, &s_sx4[m], &s_zx4[m]);
        format::activation_scale_zero(v[2], v[3], a.clip8, format::kUint8Max, &s_sx8[m], &s_zx8[m]);
      }
    }
    __syncthreads();
    for (int t = tid; t < p.M * bytes; t += kDecodeThreads) {
      const int m = t / bytes, c = t % bytes;
      const int b = b0 + c / kDecodeBlockBytes;
      sact[decode_act_offset(p, m, 0, 0) + c] =
          decode_quantized_byte(x + m * a.ldx, a.perm, p.K4, p.K8, decode_block_part(p, b),
                                decode_block_byte(p, b) + c % kDecodeBlockBytes, s_sx4[m], s_zx4[m], s_sx8[m],
                                s_zx8[m]);
    }
  }
  __syncthreads();

  // 3. Main loop: group g + kDecodeWarps (this warp's next) loads while group g computes.
  int32_t acc4[4] = {0, 0, 0, 0}, acc8[4] = {0, 0, 0, 0};
  const int groups = (len + kDecodeUnroll - 1) / kDecodeUnroll;
  // Two register sets in turn (no copies): this warp's groups gi (in one set) and gi + 1.
  for (int gi = 0; decode_warp_group(warp, gi) < groups; gi += 2) {
    load_group(nxt, p, lw, b0, len, decode_warp_group(warp, gi + 1));
    compute_group<kRows16>(cur, sact, p, b0, len, decode_warp_group(warp, gi), lane, acc4, acc8);
    if (decode_warp_group(warp, gi + 1) >= groups) break;
    load_group(cur, p, lw, b0, len, decode_warp_group(warp, gi + 2));
    compute_group<kRows16>(nxt, sact, p, b0, len, decode_warp_group(warp, gi + 1), lane, acc4, acc8);
  }
#if __CUDA_ARCH__ >= 900
#pragma unroll
  for (int i = 0; i < 4; ++i) acc4[i] >>= kDecodeSm90Int4Shift;  // exact: a multiple of 16
#endif

  // 4. Reduce the warps (exact), then epilogue or split-K partials.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    sred[warp][lane][i] = acc4[i];
    sred[warp][lane][4 + i] = acc8[i];
  }
  __syncthreads();
  if (warp != 0) return;
  int32_t r[kDecodeAccPerLane];
#pragma unroll
  for (int i = 0; i < kDecodeAccPerLane; ++i) {
    r[i] = sred[0][lane][i];
#pragma unroll
    for (int wv = 1; wv < kDecodeWarps; ++wv) r[i] += sred[wv][lane][i];
  }
  if (p.splits > 1) {
#pragma unroll
    for (int i = 0; i < kDecodeAccPerLane; ++i) a.partials[decode_partial_index(p, tile, split, lane, i)] = r[i];
    __threadfence();
    __syncwarp();
    uint32_t last = 0;
    if (lane == 0) last = atomicAdd(&a.counters[tile], 1u) == static_cast<uint32_t>(p.splits - 1) ? 1u : 0u;
    last = __shfl_sync(0xFFFFFFFFu, last, 0);
    if (!last) return;
    __threadfence();
#pragma unroll
    for (int i = 0; i < kDecodeAccPerLane; ++i) r[i] = 0;
    for (int64_t s = 0; s < p.splits; ++s) {
#pragma unroll
      for (int i = 0; i < kDecodeAccPerLane; ++i) r[i] += __ldcg(&a.partials[decode_partial_index(p, tile, s, lane, i)]);
    }
    if (lane == 0) a.counters[tile] = 0u;  // the next call finds the counter at 0
  }
  GpuActivationsView xs = a.xq;  // scales and zero points of the epilogue
  if constexpr (!std::is_same<In, PreQuantized>::value) {
    xs.M = p.M;
    xs.K4 = p.K4;
    xs.K8 = p.K8;
    xs.sx4 = s_sx4;
    xs.zx4 = s_zx4;
    xs.sx8 = s_sx8;
    xs.zx8 = s_zx8;
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = mma_c_row(lane, i);
    const int64_t col = tile * kDecodeTileRows + mma_c_col(lane, i);
    if (m < p.M && col < p.N) {
      const float v = epilogue_element(xs, a.w, m, col, r[i], r[4 + i]);
      if (a.out_bf16) {
        static_cast<uint16_t*>(a.y)[m * a.ldy + col] = f32_bits_to_bf16(__float_as_uint(v));
      } else {
        static_cast<float*>(a.y)[m * a.ldy + col] = v;
      }
    }
  }
#endif
}

// Per-device split-K workspace (partials and zeroed counters), grown on demand. cudaFree
// synchronizes the device, so no kernel still uses the old buffer when it is replaced.
struct Workspace {
  int32_t* partials = nullptr;
  int64_t partial_ints = 0;
  uint32_t* counters = nullptr;
  int64_t counter_count = 0;
};

Workspace workspace_for(int device, const DecodePlan& p) {
  static std::mutex mu;
  static std::array<Workspace, 64> spaces{};
  RESQ_CHECK_OR_THROW(device >= 0 && device < 64, UnsupportedError, "decode_gemv_cuda: device index above 63");
  std::lock_guard<std::mutex> lock(mu);
  Workspace& ws = spaces[static_cast<size_t>(device)];
  const int64_t need_p = decode_partial_ints(p), need_c = decode_counter_count(p);
  if (need_p > ws.partial_ints) {
    if (ws.partials) RESQ_CUDA_CHECK(cudaFree(ws.partials));
    ws.partials = nullptr;
    ws.partial_ints = 0;
    RESQ_CUDA_CHECK(cudaMalloc(&ws.partials, static_cast<size_t>(need_p) * sizeof(int32_t)));
    ws.partial_ints = need_p;
  }
  if (need_c > ws.counter_count) {
    if (ws.counters) RESQ_CUDA_CHECK(cudaFree(ws.counters));
    ws.counters = nullptr;
    ws.counter_count = 0;
    RESQ_CUDA_CHECK(cudaMalloc(&ws.counters, static_cast<size_t>(need_c) * sizeof(uint32_t)));
    RESQ_CUDA_CHECK(cudaMemset(ws.counters, 0, static_cast<size_t>(need_c) * sizeof(uint32_t)));
    ws.counter_count = need_c;
  }
  return ws;
}

int sm_count(int device) {
  static std::array<std::atomic<int>, 64> counts{};
  if (device >= 0 && device < 64 && counts[static_cast<size_t>(device)].load() > 0) {
    return counts[static_cast<size_t>(device)].load();
  }
  int sms = 0;
  RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < 64) counts[static_cast<size_t>(device)].store(sms);
  return sms;
}

// Whether launches on this device overlap the previous kernel (programmatic dependent launch):
// sm_90 and newer, unless RESQ_DECODE_PDL=0 (for A/B measurements).
bool use_pdl(int device) {
  static std::array<std::atomic<int>, 64> cache{};  // 0 unknown, 1 no, 2 yes
  if (device >= 0 && device < 64 && cache[static_cast<size_t>(device)].load() != 0) {
    return cache[static_cast<size_t>(device)].load() == 2;
  }
  int major = 0;
  RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  const char* env = std::getenv("RESQ_DECODE_PDL");
  const bool on = major >= 9 && !(env && std::string(env) == "0");
  if (device >= 0 && device < 64) cache[static_cast<size_t>(device)].store(on ? 2 : 1);
  return on;
}

template <bool kRows16, class In>
void launch_kernel(DecodeArgs& a, int device, cudaStream_t stream) {
  static std::array<std::atomic<bool>, 64> ready{};
  if (device < 0 || device >= 64 || !ready[static_cast<size_t>(device)].load()) {
    cudaFuncAttributes attr{};
    require_kernel_image(cudaFuncGetAttributes(&attr, decode_gemv_kernel<kRows16, In>), "decode_gemv_cuda");
    if (device >= 0 && device < 64) ready[static_cast<size_t>(device)].store(true);
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(a.plan.ctas()));
  cfg.blockDim = dim3(kDecodeThreads);
  cfg.dynamicSmemBytes = static_cast<size_t>(a.plan.act_smem_bytes);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = use_pdl(device) ? 1 : 0;
  RESQ_CUDA_CHECK(cudaLaunchKernelEx(&cfg, decode_gemv_kernel<kRows16, In>, a));
  RESQ_CUDA_CHECK_LAUNCH("decode_gemv_kernel");
}

template <class In>
void run(DecodeArgs& a, cudaStream_t stream) {
  require_sm80("decode_gemv_cuda");
  int device = 0;
  RESQ_CUDA_CHECK(cudaGetDevice(&device));
  const GpuLinearView& w = a.w;
  a.plan = plan_decode_gemv(a.plan.M, w.N, w.K4, w.K8, sm_count(device));
  RESQ_CHECK_OR_THROW(a.plan.act_smem_bytes <= kDecodeActSmemBudget && a.plan.ctas() <= 0x7FFFFFFF, ShapeError,
                      "decode_gemv_cuda: N = " + std::to_string(w.N) + " too large for one launch");
  const Workspace ws = workspace_for(device, a.plan);
  a.partials = ws.partials;
  a.counters = ws.counters;
  if (a.plan.M > 8) {
    launch_kernel<true, In>(a, device, stream);
  } else {
    launch_kernel<false, In>(a, device, stream);
  }
}

template <class In>
void run_fused(const In* x, int64_t M, int64_t ldx, const int32_t* perm, float clip4, float clip8,
               const GpuLinearView& w, void* y, int64_t ldy, GemmOutput out, cudaStream_t stream) {
  const char* fn = "decode_quant_gemv_cuda";
  const int64_t K = w.K4 + w.K8;
  if (ldx == 0) ldx = K;
  check_decode_gemv_args(fn, M, w, y, ldy, nullptr, x, ldx);
  RESQ_CHECK_OR_THROW(clip4 > 0.0f && clip4 <= 1.0f && clip8 > 0.0f && clip8 <= 1.0f, ConfigError,
                      std::string(fn) + ": clip ratios must be in (0, 1]");
  RESQ_CHECK_OR_THROW(decode_fused_quant_applies(M, K), ShapeError,
                      std::string(fn) + ": M * K = " + std::to_string(M * K) + " above " +
                          std::to_string(kDecodeFusedMaxElems) + " (quantize with act_quant_cuda, then decode_gemv_cuda)");
  if (w.N == 0) return;
  DecodeArgs a;
  a.plan.M = M;
  a.x_in = x;
  a.ldx = ldx;
  a.perm = perm;
  a.clip4 = clip4;
  a.clip8 = clip8;
  a.w = w;
  a.y = y;
  a.ldy = ldy;
  a.out_bf16 = out == GemmOutput::kBFloat16 ? 1 : 0;
  run<In>(a, stream);
}

}  // namespace

void decode_gemv_cuda(const GpuActivationsView& x, const GpuLinearView& w, void* y, int64_t ldy, GemmOutput out,
                      cudaStream_t stream) {
  check_decode_gemv_args("decode_gemv_cuda", x.M, w, y, ldy, &x, nullptr, 0);
  if (w.N == 0) return;
  DecodeArgs a;
  a.plan.M = x.M;
  a.xq = x;
  a.w = w;
  a.y = y;
  a.ldy = ldy;
  a.out_bf16 = out == GemmOutput::kBFloat16 ? 1 : 0;
  run<PreQuantized>(a, stream);
}

void decode_quant_gemv_cuda(const float* x, int64_t M, int64_t ldx, const int32_t* perm, float clip4, float clip8,
                            const GpuLinearView& w, void* y, int64_t ldy, GemmOutput out, cudaStream_t stream) {
  run_fused<float>(x, M, ldx, perm, clip4, clip8, w, y, ldy, out, stream);
}

void decode_quant_gemv_bf16_cuda(const uint16_t* x, int64_t M, int64_t ldx, const int32_t* perm, float clip4,
                                 float clip8, const GpuLinearView& w, void* y, int64_t ldy, GemmOutput out,
                                 cudaStream_t stream) {
  run_fused<uint16_t>(x, M, ldx, perm, clip4, clip8, w, y, ldy, out, stream);
}

DecodePlan decode_gemv_plan(int64_t M, const GpuLinearView& w) {
  int device = 0;
  RESQ_CUDA_CHECK(cudaGetDevice(&device));
  return plan_decode_gemv(M, w.N, w.K4, w.K8, sm_count(device));
}

const char* decode_gemv_path_name(int major, int minor) {
  (void)minor;
  if (major < 8) return "unsupported (needs sm_80 or newer)";
  if (major == 8) return "decode M<=16: 16-byte weight loads -> mma.sync m16n8k64 u4.s4 + m16n8k32 u8.s8, split-K int32";
  return "decode M<=16: 16-byte weight loads, int4 widened to int8 in registers, mma.sync m16n8k32 u8.s8, split-K int32";
}

}  // namespace resq::gpu
