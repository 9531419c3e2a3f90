// Row transforms fused into the CUDA activation quantizer (kernels/cuda/act_quant.cu): the online
// Hadamard of resq/linalg/rotation.h (OnlineHadamard) and a dense per-row rotation, as
// __host__ __device__ element and phase functions with a FIXED fp32 operation order, the kernel's
// shared-memory plan and host-side checks, a host emulation of the kernel's thread decomposition,
// and a sequential host reference that runs exactly that order (the oracle the GPU output and the
// emulation are compared with, bit for bit). Plain C++ (no Eigen, no CUDA needed).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "resq/common/error.h"
#include "resq/common/host_device.h"
#include "resq/format/packed.h"

namespace resq::gpu {

// Threads per CTA of the activation quantizer (one CTA per token row).
constexpr int64_t kActQuantThreads = 256;
// Static shared memory of the quantizer kernel: the [4][warps] fp32 min/max scratch. The dynamic
// buffer gets the device's opt-in limit minus this.
constexpr int64_t kActQuantStaticSmemBytes = 4 * (kActQuantThreads / 32) * 4;
// Cap on the block-mix staging buffer, in floats (32 KiB). Past it a larger group only saves
// __syncthreads pairs (already >= 16 outputs per thread for every block > 1 of the model shapes)
// while the CTA's shared memory, and so the number of CTAs per SM, gets worse.
constexpr int64_t kHadamardStageCapFloats = 8192;

// The online Hadamard T = diag(signs) * kron(B, S_pow2) / sqrt(pow2) of one row of n = block *
// pow2 elements, in the form the kernel uses (pointers: device memory for the kernel, host memory
// for the reference):
//   1. z[i] *= signs[i]                      (signs null: all +1; exact either way)
//   2. FWHT butterflies (a, b) -> (a + b, a - b) on each contiguous chunk of pow2, log2(pow2)
//      passes, the network of resq::fwht_butterfly (the result does not depend on the schedule)
//   3. block == 1: z[i] *= scale when scale != 1, scale = float(B[0,0] / sqrt(pow2)) — the same
//      operations as apply_online_hadamard(float), hence bit-identical to it;
//      block > 1: y[d * pow2 + a] = sum_{b = 0..block-1} mix[d * block + b] * z[b * pow2 + a],
//      mix[d, b] = float(B[b, d] / sqrt(pow2)), summed in increasing b with separately rounded
//      products and sums (apply_online_hadamard uses an Eigen GEMM here, whose summation order is
//      not specified: the two agree to rounding, not bit for bit).
struct HadamardRowParams {
  int64_t n = 0;
  int64_t pow2 = 1;
  int64_t block = 1;
  const float* signs = nullptr;  // [n] (+-1) or null
  const float* mix = nullptr;    // [block][block] or null when block == 1
  float scale = 1.0f;            // used when block == 1
};

// Indices of butterfly q (0 <= q < n / 2) of the pass with half-width h (1, 2, 4, ..., pow2 / 2):
// butterflies are numbered chunk by chunk, pow2 / 2 per chunk.
RESQ_HOST_DEVICE inline void fwht_pair(int64_t q, int64_t h, int64_t pow2, int64_t* lo,
                                       int64_t* hi) {
  const int64_t half = pow2 / 2;
  const int64_t chunk = q / half;
  const int64_t r = q % half;
  const int64_t i = (r / h) * (2 * h) + (r % h);
  *lo = chunk * pow2 + i;
  *hi = *lo + h;
}

// One butterfly in place: (a, b) -> (a + b, a - b), exactly rounded.
RESQ_HOST_DEVICE inline void fwht_apply_pair(float* z, int64_t lo, int64_t hi) {
  const float a = z[lo];
  const float b = z[hi];
  z[lo] = format::add_rn(a, b);
  z[hi] = format::sub_rn(a, b);
}

// Output d of the block mix of one column (col[b] = z[b * pow2 + a], b < block). The sequential
// reference's form; the kernel runs hadamard_mix_value_strided, the same order written separately
// so that the reference does not share the kernel's loop.
RESQ_HOST_DEVICE inline RESQ_NO_FP_CONTRACT float hadamard_mix_value(const float* mix,
                                                                     int64_t block,
                                                                     const float* col, int64_t d) {
  RESQ_NO_FP_CONTRACT_BODY
  const float* row = mix + d * block;
  float acc = format::mul_rn(row[0], col[0]);
  for (int64_t b = 1; b < block; ++b) acc = format::add_rn(acc, format::mul_rn(row[b], col[b]));
  return acc;
}

// Output d of the block mix of one column held with a stride (col[b * stride], b < block): the
// kernel's staged column. Same fp32 order as hadamard_mix_value: b increasing, products and sums
// rounded separately.
RESQ_HOST_DEVICE inline RESQ_NO_FP_CONTRACT float hadamard_mix_value_strided(const float* mix,
                                                                             int64_t block,
                                                                             const float* col,
                                                                             int64_t stride,
                                                                             int64_t d) {
  RESQ_NO_FP_CONTRACT_BODY
  const float* row = mix + d * block;
  float acc = format::mul_rn(row[0], col[0]);
  for (int64_t b = 1; b < block; ++b) {
    acc = format::add_rn(acc, format::mul_rn(row[b], col[b * stride]));
  }
  return acc;
}

// Element j of y = z * R for a dense rotation R [n][n] (row-major): sum over i = 0..n-1 in order.
RESQ_HOST_DEVICE inline RESQ_NO_FP_CONTRACT float rotation_value(const float* z, const float* R,
                                                                 int64_t n, int64_t j) {
  RESQ_NO_FP_CONTRACT_BODY
  float acc = format::mul_rn(z[0], R[j]);
  for (int64_t i = 1; i < n; ++i) acc = format::add_rn(acc, format::mul_rn(z[i], R[i * n + j]));
  return acc;
}

// ------------------------------------------------------------------ the kernel's phases
//
// The kernel transforms the row z [n] in shared memory in phases separated by __syncthreads();
// thread tid of nthreads runs the *_phase calls below with its own tid. Within a phase no element
// is written by one thread and touched by another, so the result does not depend on the schedule
// (emulate_hadamard_row_kernel checks that by running the threads in both orders).
//
// Block mix (block > 1) without a per-thread column: the columns of the [block, pow2] view are
// taken `group` at a time (group a power of two dividing pow2, chosen by plan_hadamard_mix from
// the device's shared memory); for the group starting at column a0,
//   stage phase: stage[b * group + c] = z[b * pow2 + a0 + c]      (b < block, c < group)
//   mix phase:   z[d * pow2 + a0 + c] = sum_b mix[d, b] * stage[b * group + c]   (d < block)
// i.e. every position s = b * group + c (or d * group + c) of the [block][group] tile maps to
// z[hadamard_group_index(s, ...)]. The whole group is staged before any of its outputs is
// written, so the mix can overwrite z in place; all nthreads threads share the block * group
// outputs of a group (consecutive threads: consecutive c, so a warp reads one mix entry and 32
// consecutive staged floats per step).

// Index in z of position s (0 <= s < block * group) of the [block][group] tile of the group
// starting at column a0.
RESQ_HOST_DEVICE inline int64_t hadamard_group_index(int64_t s, int64_t group, int64_t pow2,
                                                     int64_t a0) {
  return (s / group) * pow2 + a0 + s % group;
}

// z[i] *= signs[i] (only called when p.signs is set).
RESQ_HOST_DEVICE inline void hadamard_signs_phase(float* z, const HadamardRowParams& p,
                                                  int64_t tid, int64_t nthreads) {
  for (int64_t i = tid; i < p.n; i += nthreads) z[i] = format::mul_rn(z[i], p.signs[i]);
}

// One butterfly pass of half-width h on every chunk of pow2.
RESQ_HOST_DEVICE inline void hadamard_fwht_phase(float* z, const HadamardRowParams& p, int64_t h,
                                                 int64_t tid, int64_t nthreads) {
  for (int64_t q = tid; q < p.n / 2; q += nthreads) {
    int64_t lo = 0, hi = 0;
    fwht_pair(q, h, p.pow2, &lo, &hi);
    fwht_apply_pair(z, lo, hi);
  }
}

// block == 1 and scale != 1: z[i] *= scale.
RESQ_HOST_DEVICE inline void hadamard_scale_phase(float* z, const HadamardRowParams& p,
                                                  int64_t tid, int64_t nthreads) {
  for (int64_t i = tid; i < p.n; i += nthreads) z[i] = format::mul_rn(z[i], p.scale);
}

// Copies the group starting at column a0 into stage [block][group].
RESQ_HOST_DEVICE inline void hadamard_stage_phase(const float* z, float* stage,
                                                  const HadamardRowParams& p, int64_t group,
                                                  int64_t a0, int64_t tid, int64_t nthreads) {
  for (int64_t s = tid; s < p.block * group; s += nthreads) {
    stage[s] = z[hadamard_group_index(s, group, p.pow2, a0)];
  }
}

// Writes the block * group outputs of the group starting at column a0 from its staged copy.
RESQ_HOST_DEVICE inline void hadamard_mix_phase(float* z, const float* stage,
                                                const HadamardRowParams& p, int64_t group,
                                                int64_t a0, int64_t tid, int64_t nthreads) {
  for (int64_t o = tid; o < p.block * group; o += nthreads) {
    const int64_t d = o / group;
    const int64_t c = o % group;
    z[hadamard_group_index(o, group, p.pow2, a0)] =
        hadamard_mix_value_strided(p.mix, p.block, stage + c, group, d);
  }
}

// ------------------------------------------------------------------ host-side checks and plan

// Shape checks of an online Hadamard for a row of K elements (device-independent; the launcher
// runs them before it touches the device). Throws ShapeError naming the sizes.
inline void check_hadamard_row(const HadamardRowParams& h, int64_t K, const std::string& fn) {
  RESQ_CHECK_OR_THROW(h.n == K && h.pow2 >= 1 && (h.pow2 & (h.pow2 - 1)) == 0 && h.block >= 1 &&
                          h.pow2 * h.block == K,
                      ShapeError,
                      fn + "online Hadamard of n = " + std::to_string(h.n) + " (pow2 " +
                          std::to_string(h.pow2) + " x block " + std::to_string(h.block) +
                          ") does not match K = " + std::to_string(K));
  RESQ_CHECK_OR_THROW(h.block == 1 || h.mix != nullptr, ShapeError,
                      fn + "Hadamard mix is null (block " + std::to_string(h.block) + ")");
}

// Dynamic shared memory of the quantizer with an online Hadamard: the row z [n], then the
// block-mix staging buffer [block][group].
struct HadamardMixPlan {
  int64_t group = 0;         // columns per block-mix step (power of two dividing pow2); 0: block 1
  int64_t stage_floats = 0;  // block * group
  int64_t smem_bytes = 0;    // (n + stage_floats) * 4
};

// The largest group (power of two <= pow2) whose staging buffer stays within
// kHadamardStageCapFloats and, with the row, within smem_budget_bytes (the device's opt-in limit
// per block minus kActQuantStaticSmemBytes). Throws UnsupportedError, naming the sizes, when not
// even the row plus one staged column fits.
inline HadamardMixPlan plan_hadamard_mix(int64_t n, int64_t pow2, int64_t block,
                                         int64_t smem_budget_bytes, const std::string& fn) {
  HadamardMixPlan plan;
  const int64_t min_floats = n + (block > 1 ? block : 0);
  RESQ_CHECK_OR_THROW(min_floats * 4 <= smem_budget_bytes, UnsupportedError,
                      fn + "online Hadamard of n = " + std::to_string(n) + " (pow2 " +
                          std::to_string(pow2) + " x block " + std::to_string(block) +
                          ") needs at least " + std::to_string(min_floats * 4) +
                          " bytes of shared memory (the row" +
                          (block > 1 ? " and one staged column" : "") + "), the device allows " +
                          std::to_string(smem_budget_bytes));
  if (block > 1) {
    plan.group = pow2;
    while (plan.group > 1 && (block * plan.group > kHadamardStageCapFloats ||
                              (n + block * plan.group) * 4 > smem_budget_bytes)) {
      plan.group /= 2;
    }
    plan.stage_floats = block * plan.group;
  }
  plan.smem_bytes = (n + plan.stage_floats) * 4;
  return plan;
}

// Host parameters of an online Hadamard from its description (block_matrix [block][block] in
// float64 row-major as in resq::OnlineHadamard, signs [n]): fills mix / scale exactly as
// apply_online_hadamard(float) computes them.
struct HadamardRowHost {
  int64_t n = 0, pow2 = 1, block = 1;
  std::vector<float> signs;  // [n]
  std::vector<float> mix;    // [block][block] (empty when block == 1)
  float scale = 1.0f;
  HadamardRowParams view() const {
    HadamardRowParams p;
    p.n = n;
    p.pow2 = pow2;
    p.block = block;
    p.signs = signs.empty() ? nullptr : signs.data();
    p.mix = mix.empty() ? nullptr : mix.data();
    p.scale = scale;
    return p;
  }
};

inline HadamardRowHost make_hadamard_row_host(int64_t n, int64_t pow2, int64_t block,
                                              const std::vector<double>& block_matrix,
                                              const std::vector<float>& signs) {
  HadamardRowHost h;
  h.n = n;
  h.pow2 = pow2;
  h.block = block;
  h.signs = signs;
  const double inv_sqrt_p = 1.0 / std::sqrt(static_cast<double>(pow2));
  if (block == 1) {
    h.scale = static_cast<float>(block_matrix.at(0) * inv_sqrt_p);
  } else {
    h.mix.resize(static_cast<size_t>(block * block));
    for (int64_t d = 0; d < block; ++d) {
      for (int64_t b = 0; b < block; ++b) {
        h.mix[static_cast<size_t>(d * block + b)] =
            static_cast<float>(block_matrix.at(static_cast<size_t>(b * block + d)) * inv_sqrt_p);
      }
    }
  }
  return h;
}

// Sequential host run of the kernel's transform order on one row z [n] (in place).
inline void hadamard_row_reference(const HadamardRowParams& p, float* z) {
  if (p.signs) {
    for (int64_t i = 0; i < p.n; ++i) z[i] = format::mul_rn(z[i], p.signs[i]);
  }
  for (int64_t h = 1; h < p.pow2; h *= 2) {
    for (int64_t q = 0; q < p.n / 2; ++q) {
      int64_t lo = 0, hi = 0;
      fwht_pair(q, h, p.pow2, &lo, &hi);
      fwht_apply_pair(z, lo, hi);
    }
  }
  if (p.block == 1) {
    if (p.scale != 1.0f) {
      for (int64_t i = 0; i < p.n; ++i) z[i] = format::mul_rn(z[i], p.scale);
    }
    return;
  }
  std::vector<float> col(static_cast<size_t>(p.block));
  for (int64_t a = 0; a < p.pow2; ++a) {
    for (int64_t b = 0; b < p.block; ++b) col[static_cast<size_t>(b)] = z[b * p.pow2 + a];
    for (int64_t d = 0; d < p.block; ++d) {
      z[d * p.pow2 + a] = hadamard_mix_value(p.mix, p.block, col.data(), d);
    }
  }
}

// Host emulation of the kernel's online-Hadamard transform of one row z [n] (in place): the
// kernel's phase sequence with its thread decomposition (nthreads threads, block-mix groups of
// `group` columns, as plan_hadamard_mix picks), each phase run thread by thread in increasing
// (reverse_threads false) or decreasing thread order. A decomposition with a hazard inside a phase
// gives different results in the two orders; a wrong index gives results different from
// hadamard_row_reference.
inline void emulate_hadamard_row_kernel(const HadamardRowParams& p, int64_t group,
                                        int64_t nthreads, bool reverse_threads, float* z) {
  auto run_phase = [&](auto&& phase) {
    for (int64_t i = 0; i < nthreads; ++i) phase(reverse_threads ? nthreads - 1 - i : i);
  };
  if (p.signs) run_phase([&](int64_t t) { hadamard_signs_phase(z, p, t, nthreads); });
  for (int64_t h = 1; h < p.pow2; h *= 2) {
    run_phase([&](int64_t t) { hadamard_fwht_phase(z, p, h, t, nthreads); });
  }
  if (p.block == 1) {
    if (p.scale != 1.0f) run_phase([&](int64_t t) { hadamard_scale_phase(z, p, t, nthreads); });
    return;
  }
  if (group < 1 || group > p.pow2 || p.pow2 % group != 0) {
    throw ShapeError("emulate_hadamard_row_kernel: group " + std::to_string(group) +
                     " does not divide pow2 = " + std::to_string(p.pow2));
  }
  std::vector<float> stage(static_cast<size_t>(p.block * group));
  for (int64_t a0 = 0; a0 < p.pow2; a0 += group) {
    run_phase([&](int64_t t) { hadamard_stage_phase(z, stage.data(), p, group, a0, t, nthreads); });
    run_phase([&](int64_t t) { hadamard_mix_phase(z, stage.data(), p, group, a0, t, nthreads); });
  }
}

// Sequential host run of the dense rotation y = z * R on one row z [n] (in place).
inline void rotation_row_reference(const float* R, int64_t n, float* z) {
  std::vector<float> y(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) y[static_cast<size_t>(j)] = rotation_value(z, R, n, j);
  for (int64_t j = 0; j < n; ++j) z[j] = y[static_cast<size_t>(j)];
}

}  // namespace resq::gpu
