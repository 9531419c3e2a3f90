// Quantizer tests: masks, RTN weights (bit-exact vs the packed-format reference, bounds per bit width,
// per-part scales, MSE clip), activation and KV fake quantization (bit-exact vs the CPU reference
// quantizer and packed.h scalar loops), GPTQ (error vs RTN on a realistic Hessian, blocks, dead
// columns, determinism) and error paths.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/gptq_cases.h"
#include "cpu/quantize.h"
#include "resq/common/error.h"
#include "resq/format/packed.h"
#include "resq/quant/quantizers.h"
#include "resq/transforms/fake_quant.h"

namespace resq {
namespace {

using test::randn_tensor;

// Random [K] bool mask with about `fraction` true entries (fixed seed), as tensor and vector.
std::vector<bool> random_mask(int64_t K, double fraction, uint32_t seed) {
  std::mt19937 rng(seed);
  std::bernoulli_distribution d(fraction);
  std::vector<bool> m(static_cast<size_t>(K));
  for (size_t k = 0; k < m.size(); ++k) m[k] = d(rng);
  return m;
}
at::Tensor mask_tensor(const std::vector<bool>& m) {
  at::Tensor t = at::zeros({static_cast<int64_t>(m.size())}, at::TensorOptions().dtype(at::kBool));
  for (size_t k = 0; k < m.size(); ++k) t[static_cast<int64_t>(k)] = static_cast<bool>(m[k]);
  return t;
}

std::vector<float> to_vec(const at::Tensor& t) {
  at::Tensor c = t.to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// Column order "low columns, then high columns" of a mask: gather index and K4.
std::vector<int64_t> gather_order(const std::vector<bool>& m, int64_t* K4) {
  std::vector<int64_t> order;
  for (size_t k = 0; k < m.size(); ++k) if (!m[k]) order.push_back(static_cast<int64_t>(k));
  *K4 = static_cast<int64_t>(order.size());
  for (size_t k = 0; k < m.size(); ++k) if (m[k]) order.push_back(static_cast<int64_t>(k));
  return order;
}

bool bit_equal(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// ------------------------------------------------------------------ masks

TEST(QuantMasks, LastAndPerHead) {
  at::Tensor a = high_mask_last(10, 3);
  ASSERT_EQ(a.scalar_type(), at::kBool);
  ASSERT_EQ(a.size(0), 10);
  for (int64_t k = 0; k < 10; ++k) EXPECT_EQ(a[k].item<bool>(), k >= 7) << k;
  EXPECT_FALSE(high_mask_last(5, 0).any().item<bool>());
  EXPECT_TRUE(high_mask_last(5, 5).all().item<bool>());

  at::Tensor h = high_mask_per_head(3, 4, 1);
  ASSERT_EQ(h.size(0), 12);
  for (int64_t k = 0; k < 12; ++k) EXPECT_EQ(h[k].item<bool>(), k == 3 || k == 7 || k == 11) << k;
  at::Tensor h2 = high_mask_per_head(2, 5, 2);
  for (int64_t k = 0; k < 10; ++k) EXPECT_EQ(h2[k].item<bool>(), (k % 5) >= 3) << k;

  EXPECT_THROW(high_mask_last(4, 5), ShapeError);
  EXPECT_THROW(high_mask_last(4, -1), ShapeError);
  EXPECT_THROW(high_mask_per_head(2, 4, 5), ShapeError);
}

// ------------------------------------------------------------------ RTN weights

// With a mask, RTN must equal the packed-format reference quantizer applied to the gathered columns
// (low part first): same q and same fp32 scales, bit for bit, for clip 1 and clip < 1.
TEST(RtnWeights, MatchesPackedReferenceAfterGather) {
  for (float clip : {1.0f, 0.85f}) {
    const int64_t N = 9, K = 53;
    at::Tensor w = randn_tensor({N, K}, 11);
    w[2].mul_(40.0);  // one loud row
    w.select(1, 5).mul_(25.0);  // one outlier input column
    const std::vector<bool> m = random_mask(K, 0.3, 12);
    QuantizedWeight qw = rtn_quantize_weight(w, mask_tensor(m), 4, 8, clip, false);
    int64_t K4 = 0;
    const std::vector<int64_t> order = gather_order(m, &K4);
    const int64_t K8 = K - K4;
    at::Tensor wg = w.index_select(1, at::tensor(order, at::kLong)).contiguous();
    std::vector<int8_t> q(static_cast<size_t>(N * K));
    std::vector<float> s4(N), s8(N);
    cpu::quantize_weights_rtn_reference(wg.data_ptr<float>(), N, K4, K8, clip, clip, q.data(),
                                        s4.data(), s8.data());
    const auto sl = to_vec(qw.scale_low), sh = to_vec(qw.scale_high), deq = to_vec(qw.dequant);
    at::Tensor qc = qw.q.contiguous();
    const int8_t* qp = qc.data_ptr<int8_t>();
    for (int64_t n = 0; n < N; ++n) {
      EXPECT_TRUE(bit_equal(sl[n], s4[n])) << "row " << n << " " << sl[n] << " vs " << s4[n];
      EXPECT_TRUE(bit_equal(sh[n], s8[n])) << "row " << n << " " << sh[n] << " vs " << s8[n];
      for (int64_t j = 0; j < K; ++j) {
        const int64_t k = order[j];
        ASSERT_EQ(qp[n * K + k], q[n * K + j]) << "n " << n << " k " << k << " clip " << clip;
        const float s = j < K4 ? s4[n] : s8[n];
        ASSERT_TRUE(bit_equal(deq[n * K + k], s * static_cast<float>(q[n * K + j])));
      }
    }
  }
}

// Round-trip bounds for every bit width: |w - ŵ| <= scale / 2 inside the clip range, q in range, and
// each part's scale is its own amax / qmax (the high part's outliers do not leak into the low scale).
TEST(RtnWeights, RoundTripBoundsPerBitWidth) {
  const int64_t N = 6, K = 41;
  const std::vector<bool> m = random_mask(K, 0.25, 21);
  at::Tensor w = randn_tensor({N, K}, 22);
  for (int64_t k = 0; k < K; ++k) if (m[k]) w.select(1, k).mul_(30.0);  // loud high part
  const auto wv = to_vec(w);
  for (int bl : {2, 3, 4, 5, 8}) {
    for (int bh : {4, 6, 8}) {
      for (double clip : {1.0, 0.9}) {
        QuantizedWeight qw = rtn_quantize_weight(w, mask_tensor(m), bl, bh, clip, false);
        ASSERT_EQ(qw.q.scalar_type(), at::kChar);
        ASSERT_EQ(qw.dequant.scalar_type(), at::kFloat);
        const auto sl = to_vec(qw.scale_low), sh = to_vec(qw.scale_high);
        const auto deq = to_vec(qw.dequant);
        at::Tensor qc = qw.q.contiguous();
        const int8_t* qp = qc.data_ptr<int8_t>();
        for (int64_t n = 0; n < N; ++n) {
          double amax_l = 0, amax_h = 0;
          for (int64_t k = 0; k < K; ++k) {
            double a = std::fabs(wv[n * K + k]);
            (m[k] ? amax_h : amax_l) = std::max(m[k] ? amax_h : amax_l, a);
          }
          EXPECT_NEAR(sl[n], amax_l * clip / ((1 << (bl - 1)) - 1), 1e-6 * amax_l) << n;
          EXPECT_NEAR(sh[n], amax_h * clip / ((1 << (bh - 1)) - 1), 1e-6 * amax_h) << n;
          for (int64_t k = 0; k < K; ++k) {
            const int b = m[k] ? bh : bl;
            const float s = m[k] ? sh[n] : sl[n];
            const double amax = m[k] ? amax_h : amax_l;
            const int q = qp[n * K + k];
            EXPECT_GE(q, -(1 << (b - 1)));
            EXPECT_LE(q, (1 << (b - 1)) - 1);
            const double x = wv[n * K + k];
            if (std::fabs(x) <= clip * amax * (1 - 1e-6)) {
              EXPECT_LE(std::fabs(x - deq[n * K + k]), s / 2 * (1 + 1e-5))
                  << "bits " << b << " n " << n << " k " << k;
            }
          }
        }
      }
    }
  }
}

TEST(RtnWeights, OnePartEqualBitsAndUnquantizedParts) {
  const int64_t N = 5, K = 19;
  at::Tensor w = randn_tensor({N, K}, 31);
  // No high channels: one part, identical to the reference with K8 = 0.
  QuantizedWeight one = rtn_quantize_weight(w, high_mask_last(K, 0), 4, 8, 1.0, false);
  std::vector<int8_t> q(N * K);
  std::vector<float> s4(N), s8(N);
  cpu::quantize_weights_rtn_reference(w.data_ptr<float>(), N, K, 0, 1.0f, 1.0f, q.data(),
                                      s4.data(), s8.data());
  at::Tensor qc = one.q.contiguous();
  for (int64_t i = 0; i < N * K; ++i) ASSERT_EQ(qc.data_ptr<int8_t>()[i], q[i]) << i;
  EXPECT_TRUE(at::equal(one.scale_high, at::ones({N})));  // empty part: scale 1

  // bits_high == bits_low still uses two groups (two scales).
  QuantizedWeight eq = rtn_quantize_weight(w, high_mask_last(K, 4), 4, 4, 1.0, false);
  at::Tensor amax_high = w.narrow(1, K - 4, 4).abs().amax(1);
  EXPECT_TRUE(at::allclose(eq.scale_high, amax_high / 7.0, 1e-6, 0));
  EXPECT_GE(eq.q.narrow(1, K - 4, 4).abs().amax().item<int>(), 7);  // each part reaches its max

  // bits >= 16: that part is passed through unchanged, q = 0, scale 1.
  QuantizedWeight pass = rtn_quantize_weight(w, high_mask_last(K, 4), 4, 16, 1.0, false);
  EXPECT_TRUE(at::equal(pass.dequant.narrow(1, K - 4, 4), w.narrow(1, K - 4, 4)));
  EXPECT_EQ(pass.q.narrow(1, K - 4, 4).abs().sum().item<int64_t>(), 0);
  EXPECT_FALSE(at::equal(pass.dequant.narrow(1, 0, K - 4), w.narrow(1, 0, K - 4)));

  // All-zero row: scale 1, q 0.
  at::Tensor z = w.clone();
  z[1].zero_();
  QuantizedWeight zq = rtn_quantize_weight(z, high_mask_last(K, 4), 4, 8, 1.0, false);
  EXPECT_EQ(zq.scale_low[1].item<float>(), 1.0f);
  EXPECT_EQ(zq.scale_high[1].item<float>(), 1.0f);
  EXPECT_EQ(zq.q[1].abs().sum().item<int64_t>(), 0);
}

// MSE clip: per row and part the chosen grid never has a larger sum |w - ŵ|^2.4 than clip 1, the
// chosen clip lies in [0.5, 1], and heavy-tailed rows pick a clip below 1.
TEST(RtnWeights, MseClipNeverWorseThanNoClip) {
  const int64_t N = 12, K = 64;
  at::Tensor w = randn_tensor({N, K}, 41);
  for (int64_t n = 0; n < N; ++n) w[n][n % K] = 12.0f;  // one outlier per row: clipping pays off
  const std::vector<bool> m = random_mask(K, 0.2, 42);
  at::Tensor mt = mask_tensor(m);
  QuantizedWeight plain = rtn_quantize_weight(w, mt, 3, 8, 1.0, false);
  QuantizedWeight mse = rtn_quantize_weight(w, mt, 3, 8, 1.0, true);
  at::Tensor e_plain = (w - plain.dequant).abs().pow(2.4);
  at::Tensor e_mse = (w - mse.dequant).abs().pow(2.4);
  at::Tensor low = mt.logical_not().to(at::kFloat), high = mt.to(at::kFloat);
  at::Tensor lp = (e_plain * low).sum(1), lm = (e_mse * low).sum(1);
  at::Tensor hp = (e_plain * high).sum(1), hm = (e_mse * high).sum(1);
  EXPECT_TRUE((lm <= lp * (1 + 1e-5)).all().item<bool>());
  EXPECT_TRUE((hm <= hp * (1 + 1e-5)).all().item<bool>());
  at::Tensor ratio = mse.scale_low / plain.scale_low;
  EXPECT_TRUE((ratio <= 1.0 + 1e-6).all().item<bool>());
  EXPECT_TRUE((ratio >= 0.5 - 1e-6).all().item<bool>());
  EXPECT_LT(ratio.min().item<float>(), 0.99f);  // the 3-bit low part with an outlier clips

  // The torch-op path (GPUs): fixed clip bit-identical; MSE search at least as good as clip 1 and
  // the same choice as the CPU loop on nearly every row.
  auto [tl, th] = detail::weight_scales_torch(w, mt, 3, 8, 0.9, false);
  auto [cl, ch] = weight_scales(w, mt, 3, 8, 0.9, false);
  EXPECT_TRUE(at::equal(tl.view(at::kInt), cl.view(at::kInt)));
  EXPECT_TRUE(at::equal(th.view(at::kInt), ch.view(at::kInt)));
  auto [ml, mh] = detail::weight_scales_torch(w, mt, 3, 8, 1.0, true);
  EXPECT_GE((ml == mse.scale_low).sum().item<int64_t>(), N - 1);
  EXPECT_GE((mh == mse.scale_high).sum().item<int64_t>(), N - 1);
}

TEST(RtnWeights, ErrorPaths) {
  at::Tensor w = randn_tensor({4, 8}, 51);
  EXPECT_THROW(rtn_quantize_weight(w, high_mask_last(7, 1), 4, 8, 1.0, false), ShapeError);
  EXPECT_THROW(rtn_quantize_weight(w.flatten(), high_mask_last(32, 1), 4, 8, 1.0, false),
               ShapeError);
  EXPECT_THROW(rtn_quantize_weight(w, high_mask_last(8, 1).to(at::kFloat), 4, 8, 1.0, false),
               ShapeError);
  EXPECT_THROW(rtn_quantize_weight(w, high_mask_last(8, 1), 9, 8, 1.0, false), ConfigError);
  EXPECT_THROW(rtn_quantize_weight(w, high_mask_last(8, 1), 4, 1, 1.0, false), ConfigError);
  EXPECT_THROW(rtn_quantize_weight(w, high_mask_last(8, 1), 4, 8, 0.0, false), ConfigError);
  EXPECT_THROW(rtn_quantize_weight(w, high_mask_last(8, 1), 4, 8, 1.5, false), ConfigError);
  try {
    rtn_quantize_weight(w, high_mask_last(8, 1), 4, 12, 1.0, false);
    FAIL() << "bits 12 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("bits"), std::string::npos) << e.what();
  }
}

// ------------------------------------------------------------------ activations

// x̂ of fake_quant_per_token equals s * (q - z) of cpu::quantize_activations_reference on the
// columns gathered low-first, bit for bit, for ragged K, random masks, clip < 1 and 3-D inputs.
TEST(ActivationFakeQuant, BitExactAgainstCpuReference) {
  const std::vector<std::vector<int64_t>> shapes = {{13, 45}, {2, 7, 33}, {1, 1, 9}, {4, 128}};
  uint32_t seed = 100;
  for (const auto& shape : shapes) {
    for (float clip : {1.0f, 0.9f, 0.63f}) {
      const int64_t K = shape.back();
      at::Tensor x = randn_tensor(shape, ++seed, 2.0);
      at::Tensor x2 = x.reshape({-1, K});
      const int64_t M = x2.size(0);
      x2[0].mul_(0.0);                       // all-zero token: s = 1, z = 0
      if (M > 1) x2[1].abs_();               // all-positive token
      if (M > 2) x2[2].select(0, K / 2).fill_(50.0f);  // outlier
      const std::vector<bool> m = random_mask(K, 0.2, ++seed);
      at::Tensor xhat = fake_quant_per_token(x, mask_tensor(m), 4, 8, clip);
      ASSERT_EQ(xhat.sizes(), x.sizes());
      ASSERT_EQ(xhat.scalar_type(), at::kFloat);
      // The whole-tensor torch path (used on GPUs) agrees bit for bit with the CPU loop.
      at::Tensor xhat_torch = detail::fake_quant_per_token_torch(x, mask_tensor(m), 4, 8, clip);
      EXPECT_TRUE(at::equal(xhat.view(at::kInt), xhat_torch.view(at::kInt)));

      int64_t K4 = 0;
      const std::vector<int64_t> order = gather_order(m, &K4);
      const int64_t K8 = K - K4;
      at::Tensor xg = x2.index_select(1, at::tensor(order, at::kLong)).contiguous();
      std::vector<uint8_t> xq4(M * format::packed4_row_bytes(K4) + 1), xq8(M * K8 + 1);
      std::vector<float> sx4(M), sx8(M);
      std::vector<int32_t> zx4(M), zx8(M);
      cpu::quantize_activations_reference(xg.data_ptr<float>(), M, K4, K8, clip, clip, xq4.data(),
                                          xq8.data(), sx4.data(), zx4.data(), sx8.data(),
                                          zx8.data());
      const auto got = to_vec(xhat.reshape({-1, K}));
      for (int64_t r = 0; r < M; ++r) {
        for (int64_t j = 0; j < K; ++j) {
          float expected;
          if (j < K4) {
            const int q = format::uint4_get(xq4.data() + r * format::packed4_row_bytes(K4), j);
            expected = sx4[r] * static_cast<float>(q - zx4[r]);
          } else {
            const int q = xq8[r * K8 + (j - K4)];
            expected = sx8[r] * static_cast<float>(q - zx8[r]);
          }
          ASSERT_TRUE(bit_equal(got[r * K + order[j]], expected))
              << "row " << r << " col " << order[j] << " got " << got[r * K + order[j]]
              << " expected " << expected << " clip " << clip;
        }
      }
    }
  }
}

// Scalar reference of per-token fake quantization for any bit widths, straight from packed.h.
std::vector<float> fake_quant_loop(const std::vector<float>& x, int64_t M, int64_t K,
                                   const std::vector<bool>& m, int bl, int bh, float clip) {
  std::vector<float> out(x.size());
  for (int64_t r = 0; r < M; ++r) {
    for (int part = 0; part < 2; ++part) {
      const bool high = part == 1;
      const int bits = high ? bh : bl;
      const int qmax = (1 << bits) - 1;
      float mn = 0, mx = 0;
      bool any = false;
      for (int64_t k = 0; k < K; ++k) {
        if (m[k] != high) continue;
        any = true;
        mn = std::min(mn, x[r * K + k]);
        mx = std::max(mx, x[r * K + k]);
      }
      if (!any) continue;
      float s;
      int32_t z;
      format::activation_scale_zero(mn, mx, clip, qmax, &s, &z);
      for (int64_t k = 0; k < K; ++k) {
        if (m[k] != high) continue;
        if (bits >= 16) {
          out[r * K + k] = x[r * K + k];
        } else {
          const int q = format::quantize_activation_value(x[r * K + k], s, z, qmax);
          out[r * K + k] = s * static_cast<float>(q - z);
        }
      }
    }
  }
  return out;
}

TEST(ActivationFakeQuant, OtherBitWidthsAndOnePartAgainstLoop) {
  const int64_t M = 11, K = 37;
  at::Tensor x = randn_tensor({M, K}, 201, 3.0);
  const auto xv = to_vec(x);
  struct Case { int bl, bh; double frac; float clip; };
  for (const Case& c : {Case{3, 6, 0.3, 0.95f}, Case{4, 4, 0.25, 1.0f}, Case{2, 8, 0.1, 0.8f},
                        Case{4, 8, 0.0, 1.0f}, Case{4, 8, 1.0, 0.9f}, Case{4, 16, 0.2, 1.0f},
                        Case{16, 8, 0.2, 0.7f}}) {
    const std::vector<bool> m = random_mask(K, c.frac, 202);
    const auto expected = fake_quant_loop(xv, M, K, m, c.bl, c.bh, c.clip);
    ActivationFakeQuant fq(mask_tensor(m), c.bl, c.bh, c.clip);
    const auto got = to_vec(fq.apply(x));
    at::Tensor via_torch =
        detail::fake_quant_per_token_torch(x, mask_tensor(m), c.bl, c.bh, c.clip);
    EXPECT_TRUE(at::equal(fq.apply(x).view(at::kInt), via_torch.view(at::kInt)))
        << "torch path, bits " << c.bl << "/" << c.bh << " frac " << c.frac;
    for (int64_t i = 0; i < M * K; ++i) {
      ASSERT_TRUE(bit_equal(got[i], expected[i]))
          << "bits " << c.bl << "/" << c.bh << " frac " << c.frac << " i " << i << " got "
          << got[i] << " expected " << expected[i];
    }
  }
  // Both parts >= 16 bits: identity.
  EXPECT_TRUE(at::equal(fake_quant_per_token(x, high_mask_last(K, 3), 16, 16, 1.0), x));
}

TEST(ActivationFakeQuant, OtherDtypesQuantizeInFloat32) {
  const int64_t K = 24;
  at::Tensor x = randn_tensor({3, 5, K}, 301);
  at::Tensor mask = high_mask_last(K, 3);
  for (at::ScalarType dt : {at::kDouble, at::kBFloat16}) {
    at::Tensor xd = x.to(dt);
    at::Tensor got = fake_quant_per_token(xd, mask, 4, 8, 0.9);
    ASSERT_EQ(got.scalar_type(), dt);
    at::Tensor want = fake_quant_per_token(xd.to(at::kFloat), mask, 4, 8, 0.9).to(dt);
    EXPECT_TRUE(at::equal(got, want));
    EXPECT_TRUE(at::equal(detail::fake_quant_per_token_torch(xd, mask, 4, 8, 0.9), want));
  }
}

TEST(ActivationFakeQuant, ErrorPaths) {
  at::Tensor x = randn_tensor({2, 8}, 401);
  EXPECT_THROW(fake_quant_per_token(x, high_mask_last(9, 1), 4, 8, 1.0), ShapeError);
  EXPECT_THROW(fake_quant_per_token(x, high_mask_last(8, 1), 4, 10, 1.0), ConfigError);
  EXPECT_THROW(fake_quant_per_token(x, high_mask_last(8, 1), 4, 8, 0.0), ConfigError);
  EXPECT_THROW(ActivationFakeQuant(high_mask_last(8, 1), 1, 8, 1.0), ConfigError);
  ActivationFakeQuant fq(high_mask_last(8, 1), 4, 8, 1.0);
  EXPECT_THROW(fq.apply(randn_tensor({2, 7}, 402)), ShapeError);
}

// ------------------------------------------------------------------ KV cache

TEST(KvFakeQuant, PerTokenHeadGroupsAgainstLoop) {
  const int64_t B = 2, H = 3, T = 5, hd = 12;
  at::Tensor x = randn_tensor({B, H, T, hd}, 501, 1.5);
  x[1][2][3].fill_(0.0f);
  x[0][1][4][hd - 1] = 40.0f;  // outlier in the high group of one (token, head)
  const auto xv = to_vec(x);
  for (int64_t r_h : {int64_t{0}, int64_t{4}}) {
    for (float clip : {1.0f, 0.85f}) {
      KvFakeQuant kv(hd, r_h, 4, 8, clip);
      const auto got = to_vec(kv.apply(x));
      for (int64_t g = 0; g < B * H * T; ++g) {
        const float* row = xv.data() + g * hd;
        // Groups: channels [0, hd - r_h) at 4 bits, [hd - r_h, hd) at 8 bits.
        for (int part = 0; part < 2; ++part) {
          const int64_t c0 = part == 0 ? 0 : hd - r_h;
          const int64_t c1 = part == 0 ? hd - r_h : hd;
          if (c1 == c0) continue;
          const int qmax = part == 0 ? 15 : 255;
          float mn = 0, mx = 0;
          for (int64_t c = c0; c < c1; ++c) { mn = std::min(mn, row[c]); mx = std::max(mx, row[c]); }
          float s;
          int32_t z;
          format::activation_scale_zero(mn, mx, clip, qmax, &s, &z);
          for (int64_t c = c0; c < c1; ++c) {
            const int q = format::quantize_activation_value(row[c], s, z, qmax);
            const float e = s * static_cast<float>(q - z);
            ASSERT_TRUE(bit_equal(got[g * hd + c], e))
                << "group " << g << " channel " << c << " r_h " << r_h;
          }
        }
      }
    }
  }
  KvFakeQuant kv(hd, 4, 4, 8, 1.0);
  EXPECT_THROW(kv.apply(randn_tensor({2, 3, 11}, 502)), ShapeError);
  EXPECT_THROW(kv.apply(randn_tensor({1, 2, 3, hd + 1}, 503)), ShapeError);
  EXPECT_THROW(KvFakeQuant(hd, hd + 1, 4, 8, 1.0), ShapeError);
}

// ------------------------------------------------------------------ GPTQ

using test::Calib;
using test::make_calibration;

double output_error(const Calib& c, const at::Tensor& w, const at::Tensor& what) {
  return (c.X.matmul(w.to(at::kDouble).t()) - c.X.matmul(what.to(at::kDouble).t()))
      .norm()
      .item<double>();
}

TEST(Gptq, BeatsRtnOnRealisticHessian) {
  const int64_t N = 48, K = 96;
  const Calib c = make_calibration(768, K, 601);
  at::Tensor w = randn_tensor({N, K}, 604, 0.05);
  struct Case { at::Tensor mask; int bl, bh; };
  for (const Case& cs : {Case{high_mask_last(K, 0), 4, 8}, Case{high_mask_last(K, K / 8), 4, 8},
                         Case{high_mask_per_head(4, K / 4, 3), 4, 8},
                         Case{high_mask_last(K, K / 8), 3, 6}}) {
    QuantizedWeight rtn = rtn_quantize_weight(w, cs.mask, cs.bl, cs.bh, 1.0, false);
    QuantizedWeight gq = gptq_quantize_weight(w, c.H, cs.mask, cs.bl, cs.bh, 0.01, 32, 1.0, false);
    const double e_rtn = output_error(c, w, rtn.dequant);
    const double e_gptq = output_error(c, w, gq.dequant);
    EXPECT_LT(e_gptq, 0.9 * e_rtn) << "bits " << cs.bl << "/" << cs.bh << " gptq " << e_gptq
                                   << " rtn " << e_rtn;
    // Same per-part grid as RTN (scales from the original weights), q in range, ŵ = s * q exactly.
    EXPECT_TRUE(at::equal(gq.scale_low, rtn.scale_low));
    EXPECT_TRUE(at::equal(gq.scale_high, rtn.scale_high));
    at::Tensor m = cs.mask.unsqueeze(0);
    at::Tensor s = at::where(m, gq.scale_high.unsqueeze(1), gq.scale_low.unsqueeze(1));
    at::Tensor sq = s * gq.q.to(at::kFloat);
    EXPECT_TRUE(at::equal(gq.dequant.view(at::kInt), sq.view(at::kInt)));  // bitwise
    at::Tensor qf = gq.q.to(at::kInt);
    at::Tensor qmin = at::where(m, -(1 << (cs.bh - 1)), -(1 << (cs.bl - 1)));
    at::Tensor qmax = at::where(m, (1 << (cs.bh - 1)) - 1, (1 << (cs.bl - 1)) - 1);
    EXPECT_TRUE((qf >= qmin).all().item<bool>());
    EXPECT_TRUE((qf <= qmax).all().item<bool>());
  }
}

TEST(Gptq, MixedPrecisionReducesErrorAndEightBitIsTiny) {
  const int64_t N = 32, K = 64;
  const Calib c = make_calibration(512, K, 611);
  at::Tensor w = randn_tensor({N, K}, 612, 0.05);
  const double ref = c.X.matmul(w.to(at::kDouble).t()).norm().item<double>();
  QuantizedWeight w4 = gptq_quantize_weight(w, c.H, high_mask_last(K, 0), 4, 8, 0.01, 16, 1.0, false);
  QuantizedWeight w48 = gptq_quantize_weight(w, c.H, high_mask_last(K, 8), 4, 8, 0.01, 16, 1.0, false);
  QuantizedWeight w8 = gptq_quantize_weight(w, c.H, high_mask_last(K, K), 4, 8, 0.01, 16, 1.0, false);
  const double e4 = output_error(c, w, w4.dequant);
  const double e48 = output_error(c, w, w48.dequant);
  const double e8 = output_error(c, w, w8.dequant);
  EXPECT_LT(e48, e4);
  EXPECT_LT(e8 / ref, 5e-3) << "8-bit relative output error " << e8 / ref;
  EXPECT_LT(e8, 0.1 * e4);  // the 8-bit step is 7/127 of the 4-bit one
  QuantizedWeight r8 = rtn_quantize_weight(w, high_mask_last(K, K), 4, 8, 1.0, false);
  EXPECT_LT(e8, output_error(c, w, r8.dequant));
  EXPECT_LT(e4 / ref, 0.2) << "4-bit relative output error " << e4 / ref;
}

// Lazy batch updates are an exact reorganization of the column loop: any block size gives the same
// result up to fp32 rounding (a handful of q may flip at rounding ties).
TEST(Gptq, BlockSizeDoesNotChangeResult) {
  const int64_t N = 20, K = 50;
  const Calib c = make_calibration(300, K, 621);
  at::Tensor w = randn_tensor({N, K}, 622, 0.05);
  at::Tensor mask = high_mask_last(K, 7);
  QuantizedWeight a = gptq_quantize_weight(w, c.H, mask, 4, 8, 0.01, 1, 1.0, false);
  for (int64_t bs : {int64_t{7}, int64_t{16}, int64_t{128}}) {
    QuantizedWeight b = gptq_quantize_weight(w, c.H, mask, 4, 8, 0.01, bs, 1.0, false);
    const int64_t differ = (a.q != b.q).sum().item<int64_t>();
    EXPECT_LE(differ, N * K / 200) << "blocksize " << bs;
    EXPECT_NEAR(output_error(c, w, a.dequant), output_error(c, w, b.dequant),
                1e-3 * output_error(c, w, a.dequant));
  }
}

TEST(Gptq, DeadColumnsDeterminismAndUnquantizedPart) {
  const int64_t N = 16, K = 40;
  Calib c = make_calibration(256, K, 631);
  c.X.select(1, 5).zero_();
  c.X.select(1, 31).zero_();
  c.H = c.X.t().matmul(c.X);
  at::Tensor w = randn_tensor({N, K}, 632, 0.05);
  at::Tensor mask = high_mask_last(K, 10);  // column 31 is in the high part
  QuantizedWeight a = gptq_quantize_weight(w, c.H, mask, 4, 8, 0.01, 8, 1.0, false);
  ASSERT_TRUE(at::isfinite(a.dequant).all().item<bool>());
  EXPECT_EQ(a.dequant.select(1, 5).abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(a.dequant.select(1, 31).abs().sum().item<float>(), 0.0f);
  QuantizedWeight b = gptq_quantize_weight(w, c.H, mask, 4, 8, 0.01, 8, 1.0, false);
  EXPECT_TRUE(at::equal(a.q, b.q));
  EXPECT_TRUE(at::equal(a.dequant, b.dequant));
  // Unnormalized vs normalized Hessian: same result (only relative damping matters).
  QuantizedWeight n = gptq_quantize_weight(w, c.H * (2.0 / 256), mask, 4, 8, 0.01, 8, 1.0, false);
  EXPECT_LE((a.q != n.q).sum().item<int64_t>(), 2);
  // High part left in floating point: q = 0 there, and the error is below the all-quantized one.
  QuantizedWeight p = gptq_quantize_weight(w, c.H, mask, 4, 16, 0.01, 8, 1.0, false);
  EXPECT_EQ(p.q.narrow(1, K - 10, 10).abs().sum().item<int64_t>(), 0);
  EXPECT_LT(output_error(c, w, p.dequant), output_error(c, w, a.dequant));
  // mse_clip works through GPTQ too.
  QuantizedWeight mc = gptq_quantize_weight(w, c.H, mask, 4, 8, 0.01, 8, 1.0, true);
  EXPECT_TRUE(at::isfinite(mc.dequant).all().item<bool>());
}

// The Hessian buffer as the factorization's workspace (the pipeline's memory saving for down_proj)
// gives bit-identical results, also when a failed Cholesky must be retried with more damping (the
// retry restores the factored triangle from the untouched one).
TEST(Gptq, HessianAsWorkspaceGivesIdenticalResults) {
  const int64_t N = 24, K = 72;
  const Calib c = make_calibration(400, K, 651);
  at::Tensor w = randn_tensor({N, K}, 652, 0.05);
  at::Tensor mask = high_mask_last(K, 9);
  at::Tensor indefinite = c.H.clone();
  // A 2x2 principal minor with |H01| > sqrt(H00 H11): no Cholesky without extra damping.
  const double h0 = indefinite[K - 3][K - 3].item<double>(), h1 = indefinite[K - 2][K - 2].item<double>();
  indefinite[K - 3][K - 2] = 1.5 * std::sqrt(h0 * h1);
  indefinite[K - 2][K - 3] = 1.5 * std::sqrt(h0 * h1);
  for (const at::Tensor& H : {c.H, indefinite}) {
    QuantizedWeight ref = gptq_quantize_weight(w, H, mask, 4, 8, 0.0, 16, 1.0, false);
    at::Tensor workspace = H.clone();
    QuantizedWeight ws = gptq_quantize_weight(w, workspace, mask, 4, 8, 0.0, 16, 1.0, false, /*workspace=*/true);
    EXPECT_TRUE(at::equal(ref.q, ws.q));
    EXPECT_TRUE(at::equal(ref.dequant, ws.dequant));
    EXPECT_EQ(ref.damp_fraction, ws.damp_fraction);
    EXPECT_FALSE(at::equal(workspace, H)) << "the buffer was expected to be used as workspace";
  }
  // The indefinite case really needed the retry.
  EXPECT_GT(gptq_quantize_weight(w, indefinite, mask, 4, 8, 0.0, 16, 1.0, false).damp_fraction, 0.0);
  // A float32 Hessian cannot serve as float64 workspace: it is copied and left intact.
  at::Tensor h32 = c.H.to(at::kFloat);
  at::Tensor h32_before = h32.clone();
  gptq_quantize_weight(w, h32, mask, 4, 8, 0.01, 16, 1.0, false, true);
  EXPECT_TRUE(at::equal(h32, h32_before));
}

TEST(Gptq, ErrorPaths) {
  const int64_t N = 4, K = 8;
  at::Tensor w = randn_tensor({N, K}, 641);
  at::Tensor H = at::eye(K, at::kDouble);
  at::Tensor mask = high_mask_last(K, 1);
  EXPECT_THROW(gptq_quantize_weight(w, at::eye(K + 1, at::kDouble), mask, 4, 8, 0.01, 4, 1, false),
               ShapeError);
  EXPECT_THROW(gptq_quantize_weight(w, H.flatten(), mask, 4, 8, 0.01, 4, 1, false), ShapeError);
  EXPECT_THROW(gptq_quantize_weight(w, H, high_mask_last(K - 1, 1), 4, 8, 0.01, 4, 1, false),
               ShapeError);
  EXPECT_THROW(gptq_quantize_weight(w.flatten(), H, mask, 4, 8, 0.01, 4, 1, false), ShapeError);
  EXPECT_THROW(gptq_quantize_weight(w, H, mask, 4, 9, 0.01, 4, 1, false), ConfigError);
  EXPECT_THROW(gptq_quantize_weight(w, H, mask, 4, 8, -0.1, 4, 1, false), ConfigError);
  EXPECT_THROW(gptq_quantize_weight(w, H, mask, 4, 8, 0.01, 0, 1, false), ConfigError);
  // Not positive definite whatever the damping (negative diagonal), or not finite: resq::Error.
  EXPECT_THROW(gptq_quantize_weight(w, -H, mask, 4, 8, 0.01, 4, 1, false), Error);
  at::Tensor nan_h = H.clone();
  nan_h[2][3] = std::nan("");
  nan_h[3][2] = std::nan("");
  EXPECT_THROW(gptq_quantize_weight(w, nan_h, mask, 4, 8, 0.01, 4, 1, false), Error);
  // A slightly indefinite Hessian is rescued by extra damping.
  at::Tensor indef = H.clone();
  indef[0][1] = 1.2;
  indef[1][0] = 1.2;
  QuantizedWeight r = gptq_quantize_weight(w, indef, mask, 4, 8, 0.0, 4, 1, false);
  EXPECT_GT(r.damp_fraction, 0.0);
  EXPECT_TRUE(at::isfinite(r.dequant).all().item<bool>());
}

}  // namespace
}  // namespace resq
