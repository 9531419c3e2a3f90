// GPTQ test inputs (seeded weights, calibration Hessians) and the comparison of the torch path
// (detail::gptq_quantize_weight_torch, on any device) with the host path, shared by
// tests/quant/test_gptq_torch.cpp (CPU tensors) and tests/cuda/gptq_cuda_test.cpp (CUDA tensors).
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "resq/quant/quantizers.h"

namespace resq::test {

// [rows, cols] float32 tensor of N(0, stddev²) values from a fixed-seed engine.
inline at::Tensor randn_tensor(std::vector<int64_t> shape, uint32_t seed, double stddev = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, static_cast<float>(stddev));
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return at::from_blob(v.data(), shape, at::TensorOptions().dtype(at::kFloat)).clone();
}

// Calibration inputs X [n, K] with correlated columns (a random mixing of fewer latent factors plus
// noise) and a few outlier channels; H = X^T X in float64.
struct Calib {
  at::Tensor X;  // [n, K] float64
  at::Tensor H;  // [K, K] float64
};
inline Calib make_calibration(int64_t n, int64_t K, uint32_t seed) {
  at::Tensor z = randn_tensor({n, std::max<int64_t>(K / 4, 1)}, seed).to(at::kDouble);
  at::Tensor mix = randn_tensor({std::max<int64_t>(K / 4, 1), K}, seed + 1).to(at::kDouble);
  at::Tensor X = z.matmul(mix) + 0.3 * randn_tensor({n, K}, seed + 2).to(at::kDouble);
  for (int64_t k : {int64_t{3}, K / 2, K - 2}) X.select(1, k).mul_(8.0);
  return {X, X.t().matmul(X)};
}

// One comparison case: GPTQ's arguments (CPU tensors; the torch path gets copies on its device).
struct GptqCase {
  std::string name;
  at::Tensor w;     // [N, K]
  at::Tensor H;     // [K, K]
  at::Tensor mask;  // [K] bool
  int bits_low = 4, bits_high = 8;
  double percdamp = 0.01;
  int64_t blocksize = 128;
  bool mse_clip = false;
};

// Random ragged shapes (N, K not multiples of the block size, K < block size, block size 1), dead
// columns (a zero input channel in each part), 4/8 masks random / all-high / all-low, a 16-bit part
// on either side, mse_clip on and off, float64 weights and a float32 Hessian, and an indefinite
// Hessian that needs a damping retry.
inline std::vector<GptqCase> gptq_comparison_cases() {
  std::vector<GptqCase> cases;
  const auto random_mask = [](int64_t K, double p, uint32_t seed) {
    std::mt19937 rng(seed);
    std::bernoulli_distribution d(p);
    at::Tensor m = at::zeros({K}, at::TensorOptions().dtype(at::kBool));
    for (int64_t k = 0; k < K; ++k) m[k] = static_cast<bool>(d(rng));
    return m;
  };
  const auto add = [&](std::string name, int64_t N, int64_t K, uint32_t seed, at::Tensor mask, int64_t bs) {
    GptqCase c;
    c.name = std::move(name);
    c.w = randn_tensor({N, K}, seed, 0.05);
    c.H = make_calibration(3 * K + 40, K, seed + 10).H;
    c.mask = std::move(mask);
    c.blocksize = bs;
    cases.push_back(c);
    return &cases.back();
  };
  add("mixed random mask, ragged blocks", 203, 301, 7001, random_mask(301, 0.2, 1), 64);
  add("all low (4-bit), K < blocksize", 50, 40, 7002, high_mask_last(40, 0), 128);
  add("all high (8-bit), blocksize 1", 19, 33, 7003, high_mask_last(33, 33), 1);
  GptqCase* c = add("mse_clip, float64 weights, float32 Hessian", 64, 130, 7004, high_mask_last(130, 17), 32);
  c->mse_clip = true;
  c->w = c->w.to(at::kDouble);
  c->H = c->H.to(at::kFloat);
  {
    c = add("dead columns in both parts", 29, 61, 7005, high_mask_last(61, 12), 8);
    Calib cal = make_calibration(240, 61, 7015);
    cal.X.select(1, 5).zero_();   // low part
    cal.X.select(1, 55).zero_();  // high part
    c->H = cal.X.t().matmul(cal.X);
  }
  c = add("16-bit high part", 23, 70, 7006, high_mask_last(70, 10), 32);
  c->bits_high = 16;
  c = add("16-bit low part, mse_clip", 31, 45, 7007, random_mask(45, 0.3, 2), 16);
  c->bits_low = 16;
  c->mse_clip = true;
  c = add("indefinite Hessian, damping retry", 24, 72, 7008, high_mask_last(72, 9), 16);
  c->percdamp = 0.0;
  {
    // A 2x2 principal minor with |H01| > sqrt(H00 H11): no Cholesky without extra damping.
    const int64_t K = 72;
    const double h = std::sqrt(c->H[K - 3][K - 3].item<double>() * c->H[K - 2][K - 2].item<double>());
    c->H[K - 3][K - 2] = 1.5 * h;
    c->H[K - 2][K - 3] = 1.5 * h;
  }
  add("larger mixed, blocksize 128", 256, 520, 7009, high_mask_last(520, 64), 128);
  return cases;
}

// What the comparison measured for one case.
struct GptqAgreement {
  double equal_codes = 0.0;    // fraction of q entries equal to the host path's
  double loss_rel_diff = 0.0;  // |L_torch - L_host| / L_host, L = tr((W - Ŵ) H (W - Ŵ)ᵀ)
  bool bit_identical = false;  // dequant equal bit for bit
};

// GPTQ's proxy loss tr((W - Ŵ) H (W - Ŵ)ᵀ) in float64 on the CPU (w, what [N, K]; H [K, K]).
inline double gptq_proxy_loss(const at::Tensor& w, const at::Tensor& what, const at::Tensor& H) {
  const at::Tensor d = w.to(at::kCPU, at::kDouble) - what.to(at::kCPU, at::kDouble);
  return (d.matmul(H.to(at::kCPU, at::kDouble)) * d).sum().item<double>();
}

// Runs the torch path on `device` and the host path on the CPU for case c, checks the torch result's
// exact properties (EXPECT: shapes, dtypes and device; q in range of the column's part and 0 on
// unquantized parts; dequant == scale · q bit for bit on quantized columns; dead columns 0; the same
// damp_fraction and high_mask as the host path; scales equal to the host path's when
// `same_scales`) and returns the measured agreement with the host path.
inline GptqAgreement compare_gptq_paths(const GptqCase& c, const at::Device& device, bool same_scales) {
  SCOPED_TRACE(c.name);
  const QuantizedWeight host = gptq_quantize_weight(c.w, c.H, c.mask, c.bits_low, c.bits_high, c.percdamp,
                                                    c.blocksize, 1.0, c.mse_clip);
  const QuantizedWeight dev = detail::gptq_quantize_weight_torch(c.w.to(device), c.H.to(device), c.mask,
                                                                 c.bits_low, c.bits_high, c.percdamp, c.blocksize,
                                                                 1.0, c.mse_clip);
  const int64_t N = c.w.size(0), K = c.w.size(1);
  EXPECT_EQ(dev.dequant.device(), device);
  EXPECT_EQ(dev.q.device(), device);
  EXPECT_EQ(dev.dequant.scalar_type(), at::kFloat);
  EXPECT_EQ(dev.q.scalar_type(), at::kChar);
  EXPECT_EQ(dev.dequant.sizes(), (std::vector<int64_t>{N, K}));
  EXPECT_EQ(dev.q.sizes(), (std::vector<int64_t>{N, K}));
  EXPECT_TRUE(dev.high_mask.device().is_cpu());
  EXPECT_TRUE(at::equal(dev.high_mask, c.mask));
  EXPECT_EQ(dev.damp_fraction, host.damp_fraction);
  EXPECT_EQ(dev.bits_low, c.bits_low);
  EXPECT_EQ(dev.bits_high, c.bits_high);
  const at::Tensor sl = dev.scale_low.cpu(), sh = dev.scale_high.cpu();
  if (same_scales) {
    EXPECT_TRUE(at::equal(sl, host.scale_low.cpu()));
    EXPECT_TRUE(at::equal(sh, host.scale_high.cpu()));
  }
  const at::Tensor q = dev.q.cpu().to(at::kInt), d = dev.dequant.cpu();
  EXPECT_TRUE(at::isfinite(d).all().item<bool>());
  const at::Tensor m = c.mask.unsqueeze(0);  // [1, K]
  // Per column: quantized? (its part's bits < 16) and its grid.
  const bool lq = is_quantized_bits(c.bits_low), hq = is_quantized_bits(c.bits_high);
  const at::Tensor quantized_col = hq && lq ? at::ones_like(c.mask) : hq ? c.mask.clone()
                                  : lq ? c.mask.logical_not() : at::zeros_like(c.mask);  // [K]
  const at::Tensor quantized = quantized_col.unsqueeze(0).expand({N, K});
  const auto qmax = [](int b) { return is_quantized_bits(b) ? (1 << (b - 1)) - 1 : 0; };
  const auto qmin = [](int b) { return is_quantized_bits(b) ? -(1 << (b - 1)) : 0; };
  EXPECT_TRUE((q >= at::where(m, qmin(c.bits_high), qmin(c.bits_low))).all().item<bool>());
  EXPECT_TRUE((q <= at::where(m, qmax(c.bits_high), qmax(c.bits_low))).all().item<bool>());
  const at::Tensor sq = at::where(m, sh.unsqueeze(1), sl.unsqueeze(1)) * q.to(at::kFloat);  // [N, K]
  EXPECT_TRUE(at::equal(d.view(at::kInt).masked_select(quantized), sq.view(at::kInt).masked_select(quantized)))
      << "dequant != scale * q bit for bit on a quantized column";
  const at::Tensor dead = c.H.diagonal().cpu().eq(0);  // [K]
  if (dead.any().item<bool>()) {
    EXPECT_EQ(d.index({at::indexing::Slice(), dead}).abs().sum().item<float>(), 0.0f);
    EXPECT_EQ(q.index({at::indexing::Slice(), dead}).abs().sum().item<int>(), 0);
  }

  GptqAgreement a;
  a.equal_codes = q.eq(host.q.to(at::kInt)).to(at::kDouble).mean().item<double>();
  const double lh = gptq_proxy_loss(c.w, host.dequant, c.H), ld = gptq_proxy_loss(c.w, d, c.H);
  a.loss_rel_diff = std::abs(ld - lh) / std::abs(lh);  // (an indefinite H can make L negative)
  a.bit_identical = at::equal(d.view(at::kInt), host.dequant.view(at::kInt));
  return a;
}

}  // namespace resq::test
