// CUDA per-token activation quantizer into the packed 4/8-bit GPU layout, bit-identical to
// resq::cpu::quantize_activations_reference (same format:: formulas, exactly rounded intrinsics),
// optionally fused with a column gather and the online Hadamard / a dense rotation (fixed fp32
// order of kernels/cuda/act_transform.h). One CTA per token row; the row is read once from global
// memory into shared memory, transformed there, reduced (min/max per part) and quantized. The
// Hadamard block mix stages groups of columns in shared memory after the row (act_transform.h), so
// the block size is bounded only by the device's shared memory.
#include "cuda/act_quant.cuh"

#include <cuda_bf16.h>

#include <array>
#include <atomic>
#include <cmath>
#include <string>

#include "resq/cuda/device.h"
#include "cuda/mixed_gemm_layout.h"
#include "cuda/warp_reduce.cuh"
#include "resq/format/packed.h"

namespace resq::gpu {
namespace {

constexpr int kThreads = static_cast<int>(kActQuantThreads);
constexpr int kWarps = kThreads / kWarpSize;
static_assert(kActQuantStaticSmemBytes == 4 * kWarps * static_cast<int64_t>(sizeof(float)),
              "act_transform.h's static shared-memory figure must match block_min_max's scratch");

__device__ __forceinline__ float load_as_float(const float* p) { return *p; }
// bf16 -> fp32 is exact: the bf16 bits are the high half of the fp32 bits.
__device__ __forceinline__ float load_as_float(const uint16_t* p) {
  return __uint_as_float(static_cast<uint32_t>(*p) << 16);
}

// Block-wide min and max of (v_min, v_max) per part (exact in any order). red: [4][kWarps] floats.
__device__ __forceinline__ void block_min_max(float (&v)[4], float* red) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  warp_min_max4(v);
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) red[i * kWarps + warp] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    v[0] = fminf(v[0], red[0 * kWarps + w]);
    v[1] = fmaxf(v[1], red[1 * kWarps + w]);
    v[2] = fminf(v[2], red[2 * kWarps + w]);
    v[3] = fmaxf(v[3], red[3 * kWarps + w]);
  }
}

// Grid: M blocks of kThreads; dynamic shared memory: K floats, then K more with a rotation or
// block * mix_group (the block-mix staging buffer) with an online Hadamard of block > 1.
// x: In [M][ldx_in]; writes row blockIdx.x of every output of `a`.
template <typename In>
__global__ void __launch_bounds__(kThreads)
    act_quant_kernel(const In* __restrict__ x, ActQuantArgs a, int64_t mix_group) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ float zbuf[];
  __shared__ float red[4 * kWarps];
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t m = blockIdx.x;
  const int64_t K4 = a.K4, K8 = a.K8, K = K4 + K8;
  const In* row = x + m * a.ldx_in;
  float* z = zbuf;

  // 1. Read (and gather) the row: z[j] = x[m, perm[j]].
  for (int64_t j = tid; j < K; j += kThreads) z[j] = load_as_float(row + (a.perm ? a.perm[j] : j));
  __syncthreads();

  // 2. Transform. The Hadamard phases are those of act_transform.h, in the order that
  // emulate_hadamard_row_kernel runs them on the host.
  if (a.transform == ActTransform::kHadamard) {
    const HadamardRowParams& h = a.hadamard;
    if (h.signs) {
      hadamard_signs_phase(z, h, tid, kThreads);
      __syncthreads();
    }
    for (int64_t hw = 1; hw < h.pow2; hw *= 2) {
      hadamard_fwht_phase(z, h, hw, tid, kThreads);
      __syncthreads();
    }
    if (h.block == 1) {
      if (h.scale != 1.0f) {
        hadamard_scale_phase(z, h, tid, kThreads);
        __syncthreads();
      }
    } else {
      // Groups of mix_group columns: stage the group after the row, then every thread writes its
      // share of the group's block * mix_group outputs in place (the staged copy is the input).
      float* stage = zbuf + K;
      for (int64_t a0 = 0; a0 < h.pow2; a0 += mix_group) {
        hadamard_stage_phase(z, stage, h, mix_group, a0, tid, kThreads);
        __syncthreads();
        hadamard_mix_phase(z, stage, h, mix_group, a0, tid, kThreads);
        __syncthreads();
      }
    }
  } else if (a.transform == ActTransform::kRotation) {
    float* y = zbuf + K;
    for (int64_t j = tid; j < K; j += kThreads) y[j] = rotation_value(z, a.rotation, K, j);
    __syncthreads();
    z = y;
  }

  // 3. Per-part min and max, starting from 0 (lo = min(min x, 0), hi = max(max x, 0)).
  float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t j = tid; j < K; j += kThreads) {
    const float e = z[j];
    if (j < K4) {
      v[0] = fminf(v[0], e);
      v[1] = fmaxf(v[1], e);
    } else {
      v[2] = fminf(v[2], e);
      v[3] = fmaxf(v[3], e);
    }
  }
  block_min_max(v, red);

  // 4. Scale and zero point (every thread computes the same values).
  float s4 = 1.0f, s8 = 1.0f;
  int32_t z4 = 0, z8 = 0;
  format::activation_scale_zero(v[0], v[1], a.clip4, format::kUint4Max, &s4, &z4);
  format::activation_scale_zero(v[2], v[3], a.clip8, format::kUint8Max, &s8, &z8);
  if (tid == 0) {
    if (a.sx4 && a.zx4) {
      a.sx4[m] = s4;
      a.zx4[m] = z4;
    }
    if (a.sx8 && a.zx8) {
      a.sx8[m] = s8;
      a.zx8[m] = z8;
    }
  }

  // 5. Quantize; the pad nibble and the bytes up to the row stride are written as 0.
  if (K4 > 0) {
    const int64_t rb4 = (K4 + 1) / 2;
    uint8_t* out = a.xq4 + m * a.ldq4;
    for (int64_t b = tid; b < a.ldq4; b += kThreads) {
      int byte = 0;
      if (b < rb4) {
        const int64_t k = 2 * b;
        byte = format::quantize_activation_value(z[k], s4, z4, format::kUint4Max);
        if (k + 1 < K4) byte |= format::quantize_activation_value(z[k + 1], s4, z4, format::kUint4Max) << 4;
      }
      out[b] = static_cast<uint8_t>(byte);
    }
  }
  if (K8 > 0) {
    uint8_t* out = a.xq8 + m * a.ldq8;
    for (int64_t b = tid; b < a.ldq8; b += kThreads) {
      out[b] = b < K8 ? static_cast<uint8_t>(
                            format::quantize_activation_value(z[K4 + b], s8, z8, format::kUint8Max))
                      : uint8_t{0};
    }
  }
#endif
}

template <typename In>
void launch_act_quant(const In* x, const ActQuantArgs& args_in, cudaStream_t stream) {
  ActQuantArgs a = args_in;
  const std::string fn = "act_quant_cuda: ";
  RESQ_CHECK_OR_THROW(a.M >= 0 && a.K4 >= 0 && a.K8 >= 0, ShapeError, fn + "negative dims");
  RESQ_CHECK_OR_THROW(a.K4 <= format::kMaxPartDim && a.K8 <= format::kMaxPartDim, ShapeError,
                      fn + "K4/K8 above format::kMaxPartDim = 65536");
  RESQ_CHECK_OR_THROW(a.clip4 > 0.0f && a.clip4 <= 1.0f && a.clip8 > 0.0f && a.clip8 <= 1.0f,
                      ConfigError, fn + "clip ratios must be in (0, 1]");
  const int64_t K = a.K4 + a.K8;
  if (a.ldx_in == 0) a.ldx_in = K;
  RESQ_CHECK_OR_THROW(a.ldx_in >= K, ShapeError,
                      fn + "ldx_in = " + std::to_string(a.ldx_in) + " < K = " + std::to_string(K));
  const int64_t rb4 = (a.K4 + 1) / 2;
  if (a.K4 > 0) {
    RESQ_CHECK_OR_THROW(a.ldq4 >= rb4 && a.ldq4 % kGpuRowAlign == 0, ShapeError,
                        fn + "ldq4 must be a multiple of 16 and >= ceil(K4/2)");
  }
  if (a.K8 > 0) {
    RESQ_CHECK_OR_THROW(a.ldq8 >= a.K8 && a.ldq8 % kGpuRowAlign == 0, ShapeError,
                        fn + "ldq8 must be a multiple of 16 and >= K8");
  }
  if (a.M == 0) return;
  RESQ_CHECK_OR_THROW(x != nullptr || K == 0, ShapeError, fn + "x is null");
  RESQ_CHECK_OR_THROW(a.K4 == 0 || (a.xq4 && a.sx4 && a.zx4), ShapeError,
                      fn + "xq4, sx4 and zx4 are required when K4 > 0");
  RESQ_CHECK_OR_THROW(a.K8 == 0 || (a.xq8 && a.sx8 && a.zx8), ShapeError,
                      fn + "xq8, sx8 and zx8 are required when K8 > 0");
  RESQ_CHECK_OR_THROW(a.M <= 0x7FFFFFFF, ShapeError, fn + "M too large for one launch");
  RESQ_CHECK_OR_THROW(K <= kMaxActQuantRow, UnsupportedError,
                      fn + "row length K = " + std::to_string(K) + " above " +
                          std::to_string(kMaxActQuantRow));
  int64_t smem = K * static_cast<int64_t>(sizeof(float));
  if (a.transform == ActTransform::kHadamard) {
    check_hadamard_row(a.hadamard, K, fn);
  } else if (a.transform == ActTransform::kRotation) {
    RESQ_CHECK_OR_THROW(a.rotation != nullptr && K > 0, ShapeError,
                        fn + "rotation is null (or K == 0)");
    smem *= 2;
  }
  require_sm80("act_quant_cuda");
  int device = 0;
  RESQ_CUDA_CHECK(cudaGetDevice(&device));
  int max_optin = 0;
  RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t smem_budget = max_optin - kActQuantStaticSmemBytes;
  // The block-mix staging buffer is sized from what this device allows (plan_hadamard_mix).
  int64_t mix_group = 0;
  if (a.transform == ActTransform::kHadamard) {
    const HadamardRowParams& h = a.hadamard;
    const HadamardMixPlan plan = plan_hadamard_mix(h.n, h.pow2, h.block, smem_budget, fn);
    mix_group = plan.group;
    smem = plan.smem_bytes;
  }
  RESQ_CHECK_OR_THROW(smem <= smem_budget, UnsupportedError,
                      fn + "row of K = " + std::to_string(K) + " needs " + std::to_string(smem) +
                          " bytes of shared memory, the device allows " +
                          std::to_string(smem_budget));
  static std::array<std::atomic<bool>, 64> ready{};
  if (device < 0 || device >= 64 || !ready[static_cast<size_t>(device)].load()) {
    cudaFuncAttributes attr{};
    require_kernel_image(cudaFuncGetAttributes(&attr, act_quant_kernel<In>), "act_quant_cuda");
    RESQ_CUDA_CHECK(cudaFuncSetAttribute(act_quant_kernel<In>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_budget)));
    if (device >= 0 && device < 64) ready[static_cast<size_t>(device)].store(true);
  }
  act_quant_kernel<In><<<static_cast<unsigned>(a.M), kThreads, static_cast<size_t>(smem), stream>>>(
      x, a, mix_group);
  RESQ_CUDA_CHECK_LAUNCH("act_quant_kernel");
}

}  // namespace

void act_quant_cuda(const float* x, const ActQuantArgs& args, cudaStream_t stream) {
  launch_act_quant<float>(x, args, stream);
}

void act_quant_bf16_cuda(const uint16_t* x, const ActQuantArgs& args, cudaStream_t stream) {
  launch_act_quant<uint16_t>(x, args, stream);
}

}  // namespace resq::gpu
