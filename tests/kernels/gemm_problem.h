// Random mixed 4/8-bit GEMM problems and their CPU-reference results, shared by the GPU-kernel
// tests (host emulations in tests/kernels, device tests in tests/cuda).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/quantize.h"
#include "cuda/gpu_layout.h"
#include "resq/format/packed_linear.h"

namespace resq::test {

// x [rows][ldx] ~ N(0,1) with about one draw in `outlier_every` scaled by `outlier`, then
// w [N][K] ~ 0.05·N(0,1) and bias [N] ~ N(0,1), drawn in that order from rng.
struct GemmInputs {
  std::vector<float> x, w, bias;
};
inline GemmInputs draw_gemm_inputs(std::mt19937& rng, int64_t rows, int64_t ldx, int64_t N, int64_t K,
                                   uint32_t outlier_every, float outlier) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  GemmInputs in;
  in.x.resize(static_cast<size_t>(rows * ldx));
  in.w.resize(static_cast<size_t>(N * K));
  in.bias.resize(static_cast<size_t>(N));
  for (auto& v : in.x) v = normal(rng) * (rng() % outlier_every == 0 ? outlier : 1.0f);
  for (auto& v : in.w) v = normal(rng) * 0.05f;
  for (auto& v : in.bias) v = normal(rng);
  return in;
}

// The CPU reference of one problem, every step a reference function: RTN weights from w (bias when
// with_bias), activations x [M][K4 + K8] (contiguous) quantized per token, the fp32 GEMM and its
// bf16 rounding. want/want16: [M][N].
struct GemmReference {
  format::PackedLinear lin;
  cpu::QuantizedActivations xq;
  std::vector<float> want;
  std::vector<uint16_t> want16;
};
inline GemmReference gemm_reference(const float* x, const GemmInputs& in, bool with_bias, int64_t M, int64_t N,
                                    int64_t K4, int64_t K8, float clip4, float clip8) {
  GemmReference r;
  r.lin = cpu::quantize_linear_rtn(in.w.data(), with_bias ? in.bias.data() : nullptr, {N, K4, K8});
  r.xq = cpu::quantize_activations(x, M, K4, K8, clip4, clip8, cpu::CpuKernel::kReference);
  r.want.resize(static_cast<size_t>(M * N));
  cpu::gemm_w4a4_w8a8_reference(r.xq.view(), r.lin.view(), r.want.data());
  r.want16.resize(r.want.size());
  cpu::convert_f32_to_bf16(r.want.data(), static_cast<int64_t>(r.want.size()), r.want16.data());
  return r;
}

// One GEMM test shape (y [M][N] = x [M][K4 + K8] · wᵀ) and whether the linear has a bias.
struct GemmCase {
  int64_t M, N, K4, K8;
  bool bias;
};
inline std::string describe(const GemmCase& c) {
  return "M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K4=" + std::to_string(c.K4) +
         " K8=" + std::to_string(c.K8);
}
// draw_gemm_inputs with contiguous x, then gemm_reference of it.
inline GemmReference random_gemm_reference(const GemmCase& c, std::mt19937& rng, uint32_t outlier_every,
                                           float outlier, float clip4, float clip8) {
  const int64_t K = c.K4 + c.K8;
  const GemmInputs in = draw_gemm_inputs(rng, c.M, K, c.N, K, outlier_every, outlier);
  return gemm_reference(in.x.data(), in, c.bias, c.M, c.N, c.K4, c.K8, clip4, clip8);
}

// The activations in GPU layout with garbage no kernel may use: 0xEE past each row, an 8-bit row
// stride one 16-byte step wider on odd draws, and high bits set in an odd K4's pad nibble.
inline gpu::GpuActivationsHost activations_with_garbage(const cpu::QuantizedActivations& xq, std::mt19937& rng) {
  gpu::GpuActivationsHost gx =
      gpu::restride_activations_for_gpu(xq.view(), 0, gpu::gpu_row_stride(xq.K8) + 16 * (rng() % 2), 0xEE);
  if (xq.K4 % 2 == 1) {
    for (int64_t m = 0; m < xq.M; ++m) {
      gx.xq4[static_cast<size_t>(m * gx.ldx4 + gpu::part4_row_bytes(xq.K4) - 1)] |= 0xB0;
    }
  }
  return gx;
}

}  // namespace resq::test
