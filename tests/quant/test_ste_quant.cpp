// Scale-aware straight-through quantizers (resq/quant/ste_quant.h): the forward value is the exact
// quantizer's; the gradient is that of s·(round_ste(x/s) + z − z) with s a function of the range,
// checked against the formula written out per element in float64 on random ragged shapes.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "resq/common/error.h"
#include "resq/quant/quantizers.h"
#include "resq/quant/ste_quant.h"
#include "resq/transforms/fake_quant.h"

namespace resq {
namespace {

// Columns in the high part: every third one (a ragged split).
at::Tensor mask_every_third(int64_t K) { return at::arange(K).remainder(3).eq(2); }

TEST(SteQuant, WeightValueIsRtnAndGradientFlowsThroughTheRowScales) {
  at::manual_seed(7);
  for (auto [N, K] : {std::pair<int64_t, int64_t>{3, 5}, {7, 13}, {1, 2}}) {
    SCOPED_TRACE(K);
    const at::Tensor mask = mask_every_third(K);
    const at::Tensor w = at::randn({N, K}).requires_grad_(true);
    const at::Tensor exact = rtn_quantize_weight(w.detach(), mask, 4, 8, 1.0, false).dequant;
    const at::Tensor out = ste_weight_quant(w, exact, mask, 4, 8, 1.0);
    EXPECT_LT((out.detach() - exact).abs().max().item<double>(), 1e-6);
    const at::Tensor g = at::randn({N, K});
    (out * g).sum().backward();

    // d/dw[n,k] = g[n,k] + [k = argmax of |w| in its part] · sign(w) / qmax · Σ_{j in part} g[n,j]·(q[n,j] − w[n,j]/s).
    const at::Tensor W = w.detach().to(at::kDouble), G = g.to(at::kDouble);
    std::vector<double> expected(N * K);
    for (int64_t n = 0; n < N; ++n) {
      for (int part = 0; part < 2; ++part) {
        const double qmax = part ? 127 : 7;
        int64_t arg = -1;
        double amax = 0;
        for (int64_t k = 0; k < K; ++k)
          if (mask[k].item<bool>() == (part == 1) && std::abs(W[n][k].item<double>()) > amax) amax = std::abs(W[n][k].item<double>()), arg = k;
        if (arg < 0) continue;
        const double s = amax / qmax;
        double ds = 0;
        for (int64_t k = 0; k < K; ++k) {
          if (mask[k].item<bool>() != (part == 1)) continue;
          const double v = W[n][k].item<double>() / s;
          ds += G[n][k].item<double>() * (std::nearbyint(v) - v);
          expected[n * K + k] += G[n][k].item<double>();
        }
        expected[n * K + arg] += (W[n][arg].item<double>() > 0 ? 1 : -1) / qmax * ds;
      }
    }
    const at::Tensor want = at::tensor(expected, at::kDouble).view({N, K});
    EXPECT_LT((w.grad().to(at::kDouble) - want).abs().max().item<double>(), 1e-4) << w.grad() << want;
  }
}

TEST(SteQuant, ActivationValueIsFakeQuantAndGradientFlowsThroughTheTokenRange) {
  at::manual_seed(8);
  for (auto [M, K] : {std::pair<int64_t, int64_t>{4, 6}, {9, 11}}) {
    SCOPED_TRACE(K);
    const at::Tensor mask = mask_every_third(K);
    const at::Tensor x = (at::randn({M, K}) * 3).requires_grad_(true);
    const at::Tensor exact = fake_quant_per_token(x.detach(), mask, 4, 8, 1.0);
    const at::Tensor out = ste_activation_quant(x, exact, mask, 4, 8, 1.0);
    EXPECT_LT((out.detach() - exact).abs().max().item<double>(), 1e-5);
    const at::Tensor g = at::randn({M, K});
    (out * g).sum().backward();

    // s = (max − min) / qmax (x has both signs per part here), z = round(−min / s) fixed:
    // d/dx[m,k] = g[m,k] + (δ[k = argmax] − δ[k = argmin]) / qmax · Σ_j g[m,j]·(q[m,j] − z − x[m,j]/s).
    const at::Tensor X = x.detach().to(at::kDouble), G = g.to(at::kDouble);
    const at::Tensor Xf = x.detach();
    std::vector<double> expected(M * K);
    for (int64_t m = 0; m < M; ++m) {
      for (int part = 0; part < 2; ++part) {
        const double qmax = part ? 255 : 15;
        float mn = 0, mx = 0;
        int64_t amin = -1, amax = -1;
        for (int64_t k = 0; k < K; ++k) {
          if (mask[k].item<bool>() != (part == 1)) continue;
          const float v = Xf[m][k].item<float>();
          if (v < mn) mn = v, amin = k;
          if (v > mx) mx = v, amax = k;
        }
        const double s = (static_cast<double>(mx) - mn) / qmax, z = std::nearbyint(-mn / s);
        double ds = 0;
        for (int64_t k = 0; k < K; ++k) {
          if (mask[k].item<bool>() != (part == 1)) continue;
          const double v = X[m][k].item<double>() / s;
          ds += G[m][k].item<double>() * (std::nearbyint(v) - v);  // (q − z) − x/s, no value clamped
          expected[m * K + k] += G[m][k].item<double>();
        }
        if (amax >= 0) expected[m * K + amax] += ds / qmax;
        if (amin >= 0) expected[m * K + amin] -= ds / qmax;
      }
    }
    const at::Tensor want = at::tensor(expected, at::kDouble).view({M, K});
    EXPECT_LT((x.grad().to(at::kDouble) - want).abs().max().item<double>(), 1e-3) << x.grad() << want;
  }
}

TEST(SteQuant, UnquantizedPartPassesThroughAndShapesAreChecked) {
  const at::Tensor mask = mask_every_third(6);
  const at::Tensor x = at::randn({2, 6}).requires_grad_(true);
  const at::Tensor exact = fake_quant_per_token(x.detach(), mask, 4, 16, 1.0);
  const at::Tensor out = ste_activation_quant(x, exact, mask, 4, 16, 1.0);
  EXPECT_TRUE(at::allclose(out.detach().index({at::indexing::Slice(), mask}), x.detach().index({at::indexing::Slice(), mask})));
  EXPECT_THROW(ste_weight_quant(x, exact, at::ones({5}, at::kBool), 4, 8, 1.0), ShapeError);
  EXPECT_THROW(ste_activation_quant(x, exact, at::ones({5}, at::kBool), 4, 8, 1.0), ShapeError);
}

}  // namespace
}  // namespace resq
