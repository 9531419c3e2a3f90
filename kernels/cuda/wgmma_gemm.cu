// sm_90a prefill GEMM around the CUTLASS wgmma int32 GEMM (kernels/cuda/sm90/wgmma_int8_gemm.cu):
// the 4-bit parts widened to int8 once (weights at load, activations per call), one int32 GEMM per
// part into two accumulator planes, then a fold kernel applying format::epilogue_value exactly.
//
// Data flow of one call (shapes; every index function in cuda/wgmma_gemm_layout.h):
//   xq4 [M][ldx4] nibbles --widen4_rows--> x4w [M][L4] u8   (L4 = round_up(K4, 16), zero columns)
//   acc4 [M][ldacc] = x4w · w4w[Np][L4]ᵀ     acc8 [M][ldacc] = xq8[M][ldx8] · w8[Np][ldx8]ᵀ  (int32, wgmma)
//   y [M][ldy] = fold_element(acc4, acc8)   (fp32 or bf16, the epilogue of mixed_gemm_cuda bit for bit)
// The two planes cost 2 x 4 bytes per output written by the GEMMs and read by the fold (a fused
// CUTLASS epilogue-visitor would save them; docs/PERF.md has the byte count).
#include "cuda/wgmma_gemm.cuh"

#include <cstdlib>
#include <string>

#include "cuda/sm90/wgmma_int8_gemm.h"

namespace resq::gpu {
namespace {

constexpr int kWidenThreads = 256;
constexpr int kFoldThreads = 256;
constexpr int64_t kMaxGridY = 65535;

// Grid (ceil(ld_dst / 4 / 256), min(rows, 65535)); thread t of row r writes bytes 4t .. 4t+3.
__global__ void widen4_rows_kernel(const uint8_t* src, int64_t lds, int64_t rows, int64_t K4, uint8_t* dst,
                                   int64_t ldd, int is_signed) {
  const int64_t k0 = (static_cast<int64_t>(blockIdx.x) * kWidenThreads + threadIdx.x) * 4;
  if (k0 >= ldd) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    *reinterpret_cast<uint32_t*>(dst + r * ldd + k0) = widen4_word(src + r * lds, K4, k0, is_signed != 0);
  }
}

// Grid (ceil(N / 256), min(M, 65535)); one thread per output column, rows strided.
__global__ void fold_kernel(GpuActivationsView x, GpuLinearView w, const int32_t* acc4, const int32_t* acc8,
                            int64_t ldacc, void* y, int64_t ldy, int out_bf16) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kFoldThreads + threadIdx.x;
  if (n >= w.N) return;
  for (int64_t m = blockIdx.y; m < x.M; m += gridDim.y) {
    const float v = fold_element(x, w, acc4, acc8, ldacc, m, n);
    if (out_bf16) {
      static_cast<uint16_t*>(y)[m * ldy + n] = f32_bits_to_bf16(__float_as_uint(v));
    } else {
      static_cast<float*>(y)[m * ldy + n] = v;
    }
  }
}

dim3 rows_grid(int64_t cols, int threads, int64_t rows) {
  return dim3(static_cast<unsigned>(ceil_div(cols, threads)), static_cast<unsigned>(rows < kMaxGridY ? rows : kMaxGridY));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void run_int8_gemm(const char* part, const uint8_t* A, int64_t lda, const int8_t* B, int64_t ldb, int32_t* D,
                   int64_t ldd, int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
#if defined(RESQ_HAVE_WGMMA)
  const std::string err = sm90::int8_gemm_s32(A, lda, B, ldb, D, ldd, M, N, K, stream);
  if (!err.empty()) throw CudaError(std::string("wgmma_gemm_cuda: part ") + part + ": " + err);
  RESQ_CUDA_CHECK_LAUNCH("wgmma int8 GEMM");
#else
  (void)A, (void)lda, (void)B, (void)ldb, (void)D, (void)ldd, (void)M, (void)N, (void)K, (void)stream;
  throw UnsupportedError(std::string("wgmma_gemm_cuda: part ") + part +
                         ": this binary was built without CUTLASS (scripts/gpu/fetch-cutlass.sh)");
#endif
}

}  // namespace

void widen4_rows_cuda(const uint8_t* src, int64_t lds, int64_t rows, int64_t K4, uint8_t* dst, bool is_signed,
                      cudaStream_t stream) {
  const int64_t ldd = widened4_row_stride(K4);
  RESQ_CHECK_OR_THROW(rows >= 0 && K4 >= 0 && lds >= part4_row_bytes(K4), ShapeError,
                      "widen4_rows_cuda: rows = " + std::to_string(rows) + ", K4 = " + std::to_string(K4) +
                          ", source stride " + std::to_string(lds) + " (need >= ceil(K4 / 2))");
  if (rows == 0 || K4 == 0) return;
  RESQ_CHECK_OR_THROW(src && dst && aligned16(dst), ShapeError, "widen4_rows_cuda: null or unaligned pointer");
  widen4_rows_kernel<<<rows_grid(ldd / 4, kWidenThreads, rows), kWidenThreads, 0, stream>>>(src, lds, rows, K4, dst,
                                                                                               ldd, is_signed ? 1 : 0);
  RESQ_CUDA_CHECK_LAUNCH("widen4_rows_kernel");
}

WgmmaWeights::WgmmaWeights(const GpuLinearView& w, cudaStream_t stream) : w_(w), built_(true) {
  const int64_t Np = acc_plane_stride(w.N);  // the GEMM's N: rows past N are zero
  if (w.K4 > 0 && w.N > 0) {
    const int64_t L4 = widened4_row_stride(w.K4);
    w4_wide_ = DeviceBuffer<uint8_t>(static_cast<size_t>(Np * L4));
    RESQ_CUDA_CHECK(cudaMemsetAsync(w4_wide_.get(), 0, w4_wide_.size(), stream));
    widen4_rows_cuda(w.w4, w.ldw4, w.N, w.K4, w4_wide_.get(), /*is_signed=*/true, stream);
  }
  if (w.K8 > 0 && w.N > 0 && Np != w.N) {
    // N % 4 != 0: the int32 planes need N padded to 4, so the 8-bit part gets zero rows too.
    w8_pad_ = DeviceBuffer<uint8_t>(static_cast<size_t>(Np * w.ldw8));
    RESQ_CUDA_CHECK(cudaMemsetAsync(w8_pad_.get(), 0, w8_pad_.size(), stream));
    RESQ_CUDA_CHECK(cudaMemcpyAsync(w8_pad_.get(), w.w8, static_cast<size_t>(w.N * w.ldw8), cudaMemcpyDeviceToDevice,
                                    stream));
  }
  RESQ_CUDA_CHECK(cudaStreamSynchronize(stream));
}

bool wgmma_gemm_available() {
#if defined(RESQ_HAVE_WGMMA)
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  return major == 9;
#else
  return false;
#endif
}

bool wgmma_gemm_enabled() {
  const char* e = std::getenv("RESQ_WGMMA");
  if (e != nullptr && std::string(e) == "0") return false;
  return wgmma_gemm_available();
}

const char* wgmma_gemm_path_name() {
  return "sm_90a: wgmma u8.s8 -> s32 (CUTLASS 3.x TMA warp-specialized cooperative, 128x128x128), int4 widened "
         "to int8 once, int32 planes + fold epilogue";
}

void wgmma_gemm_cuda(const GpuActivationsView& x, const WgmmaWeights& wt, void* y, int64_t ldy, GemmOutput out,
                     void* workspace, cudaStream_t stream) {
  const GpuLinearView& w = wt.view();
  const int64_t M = x.M, N = w.N;
  RESQ_CHECK_OR_THROW(M >= 0 && x.K4 == w.K4 && x.K8 == w.K8, ShapeError,
                      "wgmma_gemm_cuda: activations have M=" + std::to_string(M) + " K4=" + std::to_string(x.K4) +
                          " K8=" + std::to_string(x.K8) + ", weights K4=" + std::to_string(w.K4) +
                          " K8=" + std::to_string(w.K8));
  RESQ_CHECK_OR_THROW(ldy >= N, ShapeError, "wgmma_gemm_cuda: ldy = " + std::to_string(ldy) + " < N");
  if (M == 0 || N == 0) return;
  RESQ_CHECK_OR_THROW(y && workspace && reinterpret_cast<uintptr_t>(workspace) % 256 == 0, ShapeError,
                      "wgmma_gemm_cuda: y or workspace null, or workspace not 256-byte aligned");
  RESQ_CHECK_OR_THROW(x.K4 == 0 || (x.xq4 && x.ldx4 >= part4_row_bytes(x.K4) && x.sx4 && x.zx4), ShapeError,
                      "wgmma_gemm_cuda: 4-bit activations, stride or scales missing");
  RESQ_CHECK_OR_THROW(x.K8 == 0 || (x.xq8 && aligned16(x.xq8) && w.w8 && aligned16(w.w8) && x.ldx8 % 16 == 0 &&
                                    w.ldw8 % 16 == 0 && x.ldx8 >= x.K8 && w.ldw8 >= x.K8 && x.sx8 && x.zx8),
                      ShapeError,
                      "wgmma_gemm_cuda: 8-bit part needs 16-byte aligned rows and strides (GPU layout) and scales");
  if (!wgmma_gemm_available()) {
    throw UnsupportedError("wgmma_gemm_cuda: needs an sm_90 device and a binary built with CUTLASS");
  }
  const WgmmaWorkspace ws = wgmma_workspace(M, N, x.K4, x.K8);
  uint8_t* base = static_cast<uint8_t*>(workspace);
  const int64_t Np = acc_plane_stride(N), ldacc = Np;
  int32_t* acc4 = x.K4 > 0 ? reinterpret_cast<int32_t*>(base + ws.acc4_offset) : nullptr;
  int32_t* acc8 = x.K8 > 0 ? reinterpret_cast<int32_t*>(base + ws.acc8_offset) : nullptr;
  if (x.K4 > 0) {
    const int64_t L4 = widened4_row_stride(x.K4);
    uint8_t* x4w = base + ws.x4_offset;
    widen4_rows_cuda(x.xq4, x.ldx4, M, x.K4, x4w, /*is_signed=*/false, stream);
    run_int8_gemm("4-bit", x4w, L4, wt.w4_wide(), L4, acc4, ldacc, M, Np, L4, stream);
  }
  if (x.K8 > 0) {
    // K rounded up to 16 (TMA): the weights' padding bytes are 0 (GPU layout), so whatever the
    // activations hold past K8 adds nothing.
    run_int8_gemm("8-bit", x.xq8, x.ldx8, wt.w8_rows(), w.ldw8, acc8, ldacc, M, Np, round_up(x.K8, 16), stream);
  }
  fold_kernel<<<rows_grid(N, kFoldThreads, M), kFoldThreads, 0, stream>>>(x, w, acc4, acc8, ldacc, y, ldy,
                                                                          out == GemmOutput::kBFloat16 ? 1 : 0);
  RESQ_CUDA_CHECK_LAUNCH("wgmma fold_kernel");
}

}  // namespace resq::gpu
