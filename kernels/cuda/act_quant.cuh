// Launchers of the CUDA per-token activation quantizer: fp32/bf16 rows -> packed 4/8-bit GPU layout
// (cuda/gpu_layout.h), optionally fused with a column gather, the online Hadamard or a dense
// rotation; one CTA per row, one read of the input. Plain C++ declarations.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/act_transform.h"
#include "cuda/gpu_layout.h"

namespace resq::gpu {

enum class ActTransform { kNone, kHadamard, kRotation };

// Largest row length K4 + K8 the kernel handles (the row is staged in shared memory: 4 bytes per
// element, 8 with a dense rotation, plus the block-mix staging buffer with an online Hadamard of
// block > 1; the device's opt-in limit also applies and is checked: e.g. n = 18944 with block 148
// takes 94,720 bytes, within sm_86/sm_89's 101,376).
constexpr int64_t kMaxActQuantRow = 56 * 1024;

// Per call. All pointers are device pointers.
//   input rows: x [M][ldx_in] (elements; ldx_in >= K = K4 + K8, 0 = K)
//   perm: int32 [K] or null: the row is first gathered, z[j] = x[m, perm[j]] (o_proj: the 4-bit
//         columns first), each perm[j] in [0, ldx_in) (not checked on the device)
//   transform on z [K]: kHadamard with hadamard.n == K (act_transform.h defines the exact fp32
//         order), kRotation: z <- z * rotation, rotation [K][K] row-major (e.g. U_C of one head:
//         pass the q/k rows as M * heads rows of K = head_dim)
//   then format::activation_scale_zero / quantize_activation_value per part (clip4, clip8), as
//   resq::cpu::quantize_activations_reference.
//   outputs: xq4 [M][ldq4] bytes (ldq4 >= ceil(K4/2), multiple of 16; pad nibble and bytes past
//   the row written 0), xq8 [M][ldq8], sx4/zx4/sx8/zx8 [M]. Pointers of an empty part may be null.
struct ActQuantArgs {
  int64_t M = 0;
  int64_t K4 = 0;
  int64_t K8 = 0;
  int64_t ldx_in = 0;
  float clip4 = 1.0f;
  float clip8 = 1.0f;
  const int32_t* perm = nullptr;
  ActTransform transform = ActTransform::kNone;
  HadamardRowParams hadamard;      // device pointers (signs, mix)
  const float* rotation = nullptr; // [K][K]
  uint8_t* xq4 = nullptr;
  int64_t ldq4 = 0;
  uint8_t* xq8 = nullptr;
  int64_t ldq8 = 0;
  float* sx4 = nullptr;
  int32_t* zx4 = nullptr;
  float* sx8 = nullptr;
  int32_t* zx8 = nullptr;
};

// The quantizer's outputs as the GEMM's input operand (same buffers, strides and part sizes).
inline GpuActivationsView quantized_activations_view(const ActQuantArgs& a) {
  GpuActivationsView v;
  v.M = a.M;
  v.K4 = a.K4;
  v.K8 = a.K8;
  v.xq4 = a.xq4;
  v.ldx4 = a.ldq4;
  v.xq8 = a.xq8;
  v.ldx8 = a.ldq8;
  v.sx4 = a.sx4;
  v.zx4 = a.zx4;
  v.sx8 = a.sx8;
  v.zx8 = a.zx8;
  return v;
}

// x: float [M][ldx_in] (device). Throws ShapeError / ConfigError (clip outside (0, 1]) /
// UnsupportedError (row, or row plus one staged block-mix column, too large for the device's shared
// memory; device older than sm_80) / CudaError.
void act_quant_cuda(const float* x, const ActQuantArgs& args, cudaStream_t stream);
// x: bf16 bits [M][ldx_in] (device), converted exactly to fp32 first.
void act_quant_bf16_cuda(const uint16_t* x, const ActQuantArgs& args, cudaStream_t stream);

}  // namespace resq::gpu
