// CUDA mixed W4A4+W8A8 GEMM: both parts accumulated with tensor-core mma.sync in one kernel, then
// the exact fp32 epilogue of format::epilogue_value. sm_80/86/89: m16n8k64 .u4.s4 + m16n8k32 .u8.s8;
// sm_90a (no int4 mma): int4 registers unpacked to int8, m16n8k32 .u8.s8 for both parts.
//
// Data flow per CTA (BM x BN output tile, see cuda/mixed_gemm_layout.h for every index function):
//   the K loop runs over pipeline stages of 128 bytes per row, first the K4 part (ceil(ceil(K4/2)
//   / 128) stages) then the K8 part; each stage copies BM activation rows and BN weight rows with
//   16-byte cp.async (zero-filled past the row end and past M / N) into an XOR-swizzled shared
//   tile, STAGES deep; each warp then runs 4 k-steps of 32 bytes: ldmatrix.x4 fragments, mma.sync
//   into the int32 accumulators of the part (acc4 or acc8). The epilogue writes y[m, n] from the
//   accumulator registers directly (fp32 or bf16).
// The same decomposition runs on the CPU in tests/kernels/mixed_gemm_emulation.h (tests/kernels).
#include "cuda/mixed_gemm.cuh"

#include <array>
#include <atomic>
#include <string>

#include "resq/cuda/device.h"
#include "cuda/mixed_gemm_layout.h"

namespace resq::gpu {
namespace {

// ---------------------------------------------------------------------------- PTX wrappers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; bytes [src_bytes, 16) of the destination are zero-filled.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                            uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr)
               : "memory");
}

// c += A (16x32 uint8) * B (32x8 int8).
__device__ __forceinline__ void mma_k32_u8s8(int32_t (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
// c += A (16x64 uint4) * B (64x8 int4). Native on sm_80/86/89 only.
__device__ __forceinline__ void mma_k64_u4s4(int32_t (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
  asm("mma.sync.aligned.m16n8k64.row.col.s32.u4.s4.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

// ---------------------------------------------------------------------------- the kernel

// One stage: BM activation rows and BN weight rows, bytes [s*128, s*128 + 128) of part `part`.
template <class Cfg>
__device__ __forceinline__ void load_stage(uint8_t* sa, uint8_t* sb, const uint8_t* xa,
                                           int64_t lda, const uint8_t* wb, int64_t ldb,
                                           int64_t row_bytes, int64_t s, int64_t m0, int64_t M,
                                           int64_t n0, int64_t N, int tid) {
#pragma unroll
  for (int it = 0; it < (Cfg::kChunksA + Cfg::kThreads - 1) / Cfg::kThreads; ++it) {
    const int c = tid + it * Cfg::kThreads;
    if (Cfg::kChunksA % Cfg::kThreads != 0 && c >= Cfg::kChunksA) break;
    const int row = load_row(c), chunk = load_chunk(c);
    const int64_t grow = m0 + row;
    const int64_t gbyte = stage_chunk_gbyte(s, chunk);
    const int nb = chunk_src_bytes(grow < M, gbyte, row_bytes);
    const uint8_t* src = nb > 0 ? xa + grow * lda + gbyte : xa;  // any valid address when 0
    cp_async_16(smem_addr(sa + smem_swizzle_offset(row, chunk)), src, nb);
  }
#pragma unroll
  for (int it = 0; it < (Cfg::kChunksB + Cfg::kThreads - 1) / Cfg::kThreads; ++it) {
    const int c = tid + it * Cfg::kThreads;
    if (Cfg::kChunksB % Cfg::kThreads != 0 && c >= Cfg::kChunksB) break;
    const int row = load_row(c), chunk = load_chunk(c);
    const int64_t grow = n0 + row;
    const int64_t gbyte = stage_chunk_gbyte(s, chunk);
    const int nb = chunk_src_bytes(grow < N, gbyte, row_bytes);
    const uint8_t* src = nb > 0 ? wb + grow * ldb + gbyte : wb;
    cp_async_16(smem_addr(sb + smem_swizzle_offset(row, chunk)), src, nb);
  }
}

// 4 k-steps of one stage for this warp: ldmatrix fragments, mma into acc. kInt8: the 8-bit part.
template <class Cfg, bool kInt8>
__device__ __forceinline__ void compute_stage(const uint8_t* sa, const uint8_t* sb, int warp_m,
                                              int warp_n, int lane,
                                              int32_t (&acc)[Cfg::MT][Cfg::NT][4]) {
#pragma unroll
  for (int ks = 0; ks < kStepsPerStage; ++ks) {
    uint32_t a[Cfg::MT][4];
    uint32_t b[Cfg::NT][2];
#pragma unroll
    for (int mt = 0; mt < Cfg::MT; ++mt) {
      const int off = smem_swizzle_offset(a_tile_row<Cfg>(warp_m, mt, lane), ldsm_a_chunk(lane, ks));
      ldmatrix_x4(smem_addr(sa + off), a[mt][0], a[mt][1], a[mt][2], a[mt][3]);
    }
#pragma unroll
    for (int np = 0; np < Cfg::NT / 2; ++np) {
      const int off = smem_swizzle_offset(b_tile_row<Cfg>(warp_n, np, lane), ldsm_b_chunk(lane, ks));
      ldmatrix_x4(smem_addr(sb + off), b[2 * np][0], b[2 * np][1], b[2 * np + 1][0],
                  b[2 * np + 1][1]);
    }
    if constexpr (kInt8) {
#pragma unroll
      for (int mt = 0; mt < Cfg::MT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < Cfg::NT; ++nt) mma_k32_u8s8(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
      }
    } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      // Hopper: low and high nibble halves of every register -> two int8 mmas (see mma_layout.h).
      uint32_t alo[Cfg::MT][4], ahi[Cfg::MT][4];
#pragma unroll
      for (int mt = 0; mt < Cfg::MT; ++mt) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          alo[mt][j] = u4_lo_to_u8(a[mt][j]);
          ahi[mt][j] = u4_hi_to_u8(a[mt][j]);
        }
      }
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; ++nt) {
        const uint32_t blo0 = s4_lo_to_s8(b[nt][0]), blo1 = s4_lo_to_s8(b[nt][1]);
        const uint32_t bhi0 = s4_hi_to_s8(b[nt][0]), bhi1 = s4_hi_to_s8(b[nt][1]);
#pragma unroll
        for (int mt = 0; mt < Cfg::MT; ++mt) {
          mma_k32_u8s8(acc[mt][nt], alo[mt], blo0, blo1);
          mma_k32_u8s8(acc[mt][nt], ahi[mt], bhi0, bhi1);
        }
      }
#elif defined(__CUDA_ARCH__)
#pragma unroll
      for (int mt = 0; mt < Cfg::MT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < Cfg::NT; ++nt) mma_k64_u4s4(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
      }
#endif
    }
  }
}

// Grid: (ceil(N / BN), ceil(M / BM)); Cfg::kThreads threads; Cfg::kSmemBytes dynamic shared memory.
// y: float [M][ldy] or bf16 bits [M][ldy] (out_bf16).
template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads)
    mixed_gemm_kernel(GpuActivationsView x, GpuLinearView w, void* y, int64_t ldy, int out_bf16) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarpSize;
  const int warp = tid / kWarpSize;
  const int warp_m = warp / Cfg::WARPS_N;
  const int warp_n = warp % Cfg::WARPS_N;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * Cfg::BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * Cfg::BN;
  const int64_t rb4 = part4_row_bytes(x.K4);
  const int64_t rb8 = part8_row_bytes(x.K8);
  const int64_t T4 = x.K4 > 0 ? stage_count(rb4) : 0;
  const int64_t T = T4 + (x.K8 > 0 ? stage_count(rb8) : 0);

  int32_t acc4[Cfg::MT][Cfg::NT][4];
  int32_t acc8[Cfg::MT][Cfg::NT][4];
#pragma unroll
  for (int mt = 0; mt < Cfg::MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < Cfg::NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc4[mt][nt][i] = 0;
        acc8[mt][nt][i] = 0;
      }
    }
  }

  auto issue = [&](int64_t t) {
    uint8_t* sa = smem + (t % Cfg::STAGES) * Cfg::kStageBytes;
    uint8_t* sb = sa + Cfg::kStageBytesA;
    if (t < T4) {
      load_stage<Cfg>(sa, sb, x.xq4, x.ldx4, w.w4, w.ldw4, rb4, t, m0, x.M, n0, w.N, tid);
    } else {
      load_stage<Cfg>(sa, sb, x.xq8, x.ldx8, reinterpret_cast<const uint8_t*>(w.w8), w.ldw8, rb8,
                      t - T4, m0, x.M, n0, w.N, tid);
    }
  };

  // Prologue: stages 0 .. STAGES-2 in flight (one commit group each, possibly empty).
#pragma unroll
  for (int st = 0; st < Cfg::STAGES - 1; ++st) {
    if (st < T) issue(st);
    cp_async_commit();
  }
  for (int64_t t = 0; t < T; ++t) {
    // Groups committed so far: STAGES-1 + t; allowing STAGES-2 pending completes stages 0..t.
    cp_async_wait<Cfg::STAGES - 2>();
    // Makes every thread's copies of stage t visible, and guarantees all warps are done with
    // stage t-1, whose buffer ((t-1) % STAGES) the next issue overwrites.
    __syncthreads();
    if (t + Cfg::STAGES - 1 < T) issue(t + Cfg::STAGES - 1);
    cp_async_commit();
    const uint8_t* sa = smem + (t % Cfg::STAGES) * Cfg::kStageBytes;
    const uint8_t* sb = sa + Cfg::kStageBytesA;
    if (t < T4) {
      compute_stage<Cfg, false>(sa, sb, warp_m, warp_n, lane, acc4);
    } else {
      compute_stage<Cfg, true>(sa, sb, warp_m, warp_n, lane, acc8);
    }
  }
  cp_async_wait<0>();  // nothing may be in flight when the CTA exits

  // Epilogue straight from registers: element i of tile (mt, nt) is y[out_row, out_col].
#pragma unroll
  for (int mt = 0; mt < Cfg::MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < Cfg::NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = out_row<Cfg>(m0, warp_m, mt, lane, i);
        const int64_t n = out_col<Cfg>(n0, warp_n, nt, lane, i);
        if (m < x.M && n < w.N) {
          const float v = epilogue_element(x, w, m, n, acc4[mt][nt][i], acc8[mt][nt][i]);
          if (out_bf16) {
            static_cast<uint16_t*>(y)[m * ldy + n] = f32_bits_to_bf16(__float_as_uint(v));
          } else {
            static_cast<float*>(y)[m * ldy + n] = v;
          }
        }
      }
    }
  }
#endif
}

// Per device (up to 64): the dynamic shared-memory opt-in was done and the kernel image checked.
template <class Cfg>
void prepare_kernel_once(int device) {
  static std::array<std::atomic<bool>, 64> ready{};
  if (device >= 0 && device < 64 && ready[static_cast<size_t>(device)].load()) return;
  cudaFuncAttributes attr{};
  require_kernel_image(cudaFuncGetAttributes(&attr, mixed_gemm_kernel<Cfg>), "mixed_gemm_cuda");
  int max_optin = 0;
  RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (max_optin < Cfg::kSmemBytes) {
    throw UnsupportedError("mixed_gemm_cuda: the kernel needs " + std::to_string(Cfg::kSmemBytes) +
                           " bytes of shared memory per block, the device allows " +
                           std::to_string(max_optin));
  }
  RESQ_CUDA_CHECK(cudaFuncSetAttribute(mixed_gemm_kernel<Cfg>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes));
  if (device >= 0 && device < 64) ready[static_cast<size_t>(device)].store(true);
}

template <class Cfg>
void launch(const GpuActivationsView& x, const GpuLinearView& w, void* y, int64_t ldy, bool bf16,
            int device, cudaStream_t stream) {
  prepare_kernel_once<Cfg>(device);
  const int64_t grid_y = ceil_div(x.M, Cfg::BM);
  const int64_t grid_x = ceil_div(w.N, Cfg::BN);
  RESQ_CHECK_OR_THROW(grid_y <= 65535 && grid_x <= 0x7FFFFFFF, ShapeError,
                      "mixed_gemm_cuda: M = " + std::to_string(x.M) + " or N = " +
                          std::to_string(w.N) + " is too large for one launch");
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  mixed_gemm_kernel<Cfg><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(x, w, y, ldy, bf16 ? 1 : 0);
  RESQ_CUDA_CHECK_LAUNCH("mixed_gemm_kernel");
}

void check_part(const char* name, int64_t K, const void* xq, int64_t ldx, const void* wq, int64_t ldw,
                int64_t row_bytes, bool has_rows_x, bool has_rows_w) {
  const std::string fn = std::string("mixed_gemm_cuda: part ") + name + ": ";
  if (K == 0) return;
  RESQ_CHECK_OR_THROW(ldx >= row_bytes && ldx % kGpuRowAlign == 0 && ldw >= row_bytes &&
                          ldw % kGpuRowAlign == 0,
                      ShapeError,
                      fn + "row strides (" + std::to_string(ldx) + ", " + std::to_string(ldw) +
                          ") must be multiples of 16 and >= " + std::to_string(row_bytes) + " bytes");
  RESQ_CHECK_OR_THROW((!has_rows_x || xq != nullptr) && (!has_rows_w || wq != nullptr), ShapeError,
                      fn + "activation or weight pointer is null");
  RESQ_CHECK_OR_THROW(reinterpret_cast<uintptr_t>(xq) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(wq) % 16 == 0,
                      ShapeError, fn + "activation and weight pointers must be 16-byte aligned");
}

}  // namespace

const char* mixed_gemm_path_name(int major, int minor) {
  (void)minor;
  if (major < 8) return "unsupported (needs sm_80 or newer)";
  if (major == 8) return "sm_80/86/89: mma.sync m16n8k64 u4.s4 + m16n8k32 u8.s8, cp.async x16";
  return "sm_90a: int4 unpacked to int8 in registers, mma.sync m16n8k32 u8.s8, cp.async x16";
}

void mixed_gemm_cuda(const GpuActivationsView& x, const GpuLinearView& w, void* y, int64_t ldy,
                     GemmOutput out, cudaStream_t stream, GemmTile tile) {
  const int64_t M = x.M, N = w.N;
  RESQ_CHECK_OR_THROW(M >= 0 && N >= 0 && x.K4 >= 0 && x.K8 >= 0, ShapeError,
                      "mixed_gemm_cuda: negative dims");
  RESQ_CHECK_OR_THROW(x.K4 == w.K4 && x.K8 == w.K8, ShapeError,
                      "mixed_gemm_cuda: activations have K4=" + std::to_string(x.K4) + " K8=" +
                          std::to_string(x.K8) + ", weights K4=" + std::to_string(w.K4) +
                          " K8=" + std::to_string(w.K8));
  RESQ_CHECK_OR_THROW(x.K4 <= format::kMaxPartDim && x.K8 <= format::kMaxPartDim, ShapeError,
                      "mixed_gemm_cuda: K4/K8 above format::kMaxPartDim = 65536");
  RESQ_CHECK_OR_THROW(ldy >= N, ShapeError,
                      "mixed_gemm_cuda: ldy = " + std::to_string(ldy) + " < N = " + std::to_string(N));
  if (M == 0 || N == 0) return;
  RESQ_CHECK_OR_THROW(y != nullptr, ShapeError, "mixed_gemm_cuda: y is null");
  check_part("4-bit", x.K4, x.xq4, x.ldx4, w.w4, w.ldw4, part4_row_bytes(x.K4), true, true);
  check_part("8-bit", x.K8, x.xq8, x.ldx8, w.w8, w.ldw8, part8_row_bytes(x.K8), true, true);
  RESQ_CHECK_OR_THROW(x.K4 == 0 || (x.sx4 && x.zx4 && w.sw4 && w.rs4), ShapeError,
                      "mixed_gemm_cuda: sx4, zx4, sw4 and rs4 are required when K4 > 0");
  RESQ_CHECK_OR_THROW(x.K8 == 0 || (x.sx8 && x.zx8 && w.sw8 && w.rs8), ShapeError,
                      "mixed_gemm_cuda: sx8, zx8, sw8 and rs8 are required when K8 > 0");

  require_sm80("mixed_gemm_cuda");
  int device = 0;
  RESQ_CUDA_CHECK(cudaGetDevice(&device));
  bool large = tile == GemmTile::kLarge;
  if (tile == GemmTile::kAuto) {
    int sms = 0;
    RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    large = ceil_div(M, GemmTileLarge::BM) * ceil_div(N, GemmTileLarge::BN) >= sms;
  }
  const bool bf16 = out == GemmOutput::kBFloat16;
  if (large) {
    launch<GemmTileLarge>(x, w, y, ldy, bf16, device, stream);
  } else {
    launch<GemmTileSmall>(x, w, y, ldy, bf16, device, stream);
  }
}

}  // namespace resq::gpu
