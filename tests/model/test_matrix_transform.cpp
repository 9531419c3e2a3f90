// MatrixTransform (transforms/online.h): one matrix for every head, or one per KV head with the
// GQA grouping, against a per-row loop.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "resq/common/error.h"
#include "resq/transforms/online.h"

namespace resq {
namespace {

// y[b, x, t, :] = x[b, x, t, :] · m[x / group] by explicit row loops, float64.
at::Tensor per_row_reference(const at::Tensor& x, const at::Tensor& m) {
  const at::Tensor xd = x.to(at::kDouble), md = m.to(at::kDouble);
  at::Tensor y = at::zeros_like(xd);
  const int64_t group = x.size(1) / m.size(0), n = x.size(3);
  for (int64_t b = 0; b < x.size(0); ++b)
    for (int64_t h = 0; h < x.size(1); ++h)
      for (int64_t t = 0; t < x.size(2); ++t)
        for (int64_t j = 0; j < n; ++j) {
          double acc = 0.0;
          for (int64_t i = 0; i < n; ++i) acc += xd[b][h][t][i].item<double>() * md[h / group][i][j].item<double>();
          y[b][h][t][j] = acc;
        }
  return y;
}

TEST(MatrixTransform, PerHeadMatricesFollowTheGqaGrouping) {
  at::manual_seed(3);
  const at::Tensor m = at::randn({3, 4, 4}, at::kFloat);  // one per KV head
  const MatrixTransform t(m);
  // q: 6 query heads (2 per KV head), k: 3 KV heads; ragged batch and length.
  for (const int64_t heads : {6, 3}) {
    const at::Tensor x = at::randn({2, heads, 5, 4}, at::kFloat);
    const at::Tensor y = t.apply(x);
    ASSERT_EQ(y.sizes(), x.sizes());
    EXPECT_TRUE(at::allclose(y.to(at::kDouble), per_row_reference(x, m), 1e-5, 1e-5)) << heads << " heads";
  }
  // Transposed views, as the decoder hands q and k over ([B, T, X, n] -> [B, X, T, n]), one token too.
  for (const int64_t len : {1, 5}) {
    const at::Tensor x = at::randn({2, len, 6, 4}, at::kFloat).transpose(1, 2);
    EXPECT_TRUE(at::allclose(t.apply(x).to(at::kDouble), per_row_reference(x, m), 1e-5, 1e-5)) << len << " tokens";
  }
  // The per-head form with equal matrices is the shared form (up to the batched GEMM's summation order).
  const at::Tensor shared = at::randn({4, 4}, at::kFloat);
  const at::Tensor x = at::randn({1, 6, 2, 4}, at::kFloat);
  EXPECT_TRUE(at::allclose(MatrixTransform(shared.expand({3, 4, 4}).contiguous()).apply(x), MatrixTransform(shared).apply(x), 1e-6, 1e-6));
}

TEST(MatrixTransform, ShapeErrorsNameTheShapes) {
  EXPECT_THROW(MatrixTransform(at::zeros({2, 3, 4})), ShapeError);
  EXPECT_THROW(MatrixTransform(at::zeros({4})), ShapeError);
  const MatrixTransform t(at::zeros({3, 4, 4}));
  try {
    t.apply(at::zeros({1, 4, 2, 4}));  // 4 heads is not a multiple of 3
    FAIL() << "no error";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 4, 4] applied to [1, 4, 2, 4]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(t.apply(at::zeros({1, 3, 2, 5})), ShapeError);  // last dim
  EXPECT_THROW(t.apply(at::zeros({3, 2, 4})), ShapeError);     // not [B, X, T, n]
}

}  // namespace
}  // namespace resq
