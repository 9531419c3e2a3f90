// Row transforms fused into the CUDA activation quantizer (kernels/cuda/act_quant.cu): the online
// Hadamard of resq/linalg/rotation.h (OnlineHadamard) and a dense per-row rotation, as
// __host__ __device__ element functions with a FIXED fp32 operation order, plus a sequential host
// reference that runs exactly that order (the oracle the GPU output is compared with, bit for bit).
// Plain C++ (no Eigen, no CUDA needed).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "resq/common/host_device.h"
#include "resq/format/packed.h"

namespace resq::gpu {

// Largest block (odd part / Paley block) of an online Hadamard the GPU kernel supports: the kernel
// keeps one column of the [block, pow2] view in a per-thread array of this size.
constexpr int64_t kMaxHadamardBlock = 128;

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

// Output d of the block mix of one column (col[b] = z[b * pow2 + a], b < block).
RESQ_HOST_DEVICE inline RESQ_NO_FP_CONTRACT float hadamard_mix_value(const float* mix,
                                                                     int64_t block,
                                                                     const float* col, int64_t d) {
  RESQ_NO_FP_CONTRACT_BODY
  const float* row = mix + d * block;
  float acc = format::mul_rn(row[0], col[0]);
  for (int64_t b = 1; b < block; ++b) acc = format::add_rn(acc, format::mul_rn(row[b], col[b]));
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

// Sequential host run of the dense rotation y = z * R on one row z [n] (in place).
inline void rotation_row_reference(const float* R, int64_t n, float* z) {
  std::vector<float> y(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) y[static_cast<size_t>(j)] = rotation_value(z, R, n, j);
  for (int64_t j = 0; j < n; ++j) z[j] = y[static_cast<size_t>(j)];
}

}  // namespace resq::gpu
