// Tests of the rotations: Haar random orthogonal (sign-fixed QR), randomized Hadamard, the online
// Hadamard transform (fast vs dense, float and double) and the unnormalized FWHT.
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <cmath>
#include <cstring>
#include <vector>

#include "resq/common/error.h"
#include "resq/linalg/hadamard.h"
#include "resq/linalg/random.h"
#include "resq/linalg/rotation.h"
#include "linalg/linalg_test_util.h"

namespace resq {
namespace {

using test::gaussian_matrix;

bool bitwise_equal(const MatrixXdR& a, const MatrixXdR& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * a.size()) == 0;
}

double orthogonality_error(const MatrixXdR& q) {
  const int64_t n = q.rows();
  const double left = (q.transpose() * q - MatrixXdR::Identity(n, n)).cwiseAbs().maxCoeff();
  const double right = (q * q.transpose() - MatrixXdR::Identity(n, n)).cwiseAbs().maxCoeff();
  return std::max(left, right);
}

// Sylvester entry from its definition, independent of the library.
double sylvester(int64_t a, int64_t c) {
  int bits = 0;
  for (int64_t v = a & c; v != 0; v >>= 1) bits += static_cast<int>(v & 1);
  return bits % 2 ? -1.0 : 1.0;
}

TEST(RandomOrthogonal, IsOrthogonalAndSignFixed) {
  for (int64_t n : {1, 2, 3, 7, 43, 100}) {
    Rng rng(1000 + n);
    Rng twin(1000 + n);
    const MatrixXdR q = random_orthogonal(n, rng);
    ASSERT_EQ(q.rows(), n);
    ASSERT_EQ(q.cols(), n);
    EXPECT_LT(orthogonality_error(q), 1e-10) << n;
    // Documented draws: G filled row by row; then R = Q^T G is upper triangular with a positive
    // diagonal (the sign fix that makes the factorization unique).
    MatrixXdR g(n, n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) g(i, j) = twin.normal();
    }
    const MatrixXdR r = q.transpose() * g;
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_GT(r(i, i), 0.0) << n;
      for (int64_t j = 0; j < i; ++j) EXPECT_NEAR(r(i, j), 0.0, 1e-10) << n;
    }
    EXPECT_EQ(rng.next_u64(), twin.next_u64()) << "draw count, n=" << n;
  }
}

TEST(RandomOrthogonal, DeterministicPerSeed) {
  Rng a(5);
  Rng b(5);
  Rng c(6);
  const MatrixXdR qa = random_orthogonal(37, a);
  const MatrixXdR qb = random_orthogonal(37, b);
  const MatrixXdR qc = random_orthogonal(37, c);
  EXPECT_TRUE(bitwise_equal(qa, qb));
  EXPECT_GT((qa - qc).cwiseAbs().maxCoeff(), 0.1);
  EXPECT_THROW(random_orthogonal(0, a), ShapeError);
}

TEST(Fwht, MatchesSylvesterProductBothPrecisionsAndInverts) {
  for (int64_t n : {1, 2, 8, 64, 1024}) {
    const int64_t rows = 3;
    const MatrixXdR x = gaussian_matrix(rows, n, 77 + n);
    MatrixXdR s(n, n);
    for (int64_t a = 0; a < n; ++a) {
      for (int64_t c = 0; c < n; ++c) s(a, c) = sylvester(a, c);
    }
    const MatrixXdR expected = x * s;

    MatrixXdR xd = x;
    fwht_inplace(xd.data(), rows, n);
    EXPECT_LT((xd - expected).cwiseAbs().maxCoeff(), 1e-12 * n) << n;
    fwht_inplace(xd.data(), rows, n);  // unnormalized: twice gives n * x
    EXPECT_LT((xd - x * static_cast<double>(n)).cwiseAbs().maxCoeff(), 1e-12 * n) << n;

    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> xf = x.cast<float>();
    fwht_inplace(xf.data(), rows, n);
    EXPECT_LT((xf.cast<double>() - expected).cwiseAbs().maxCoeff(), 1e-5 * std::sqrt(n)) << n;
    fwht_inplace(xf.data(), rows, n);
    EXPECT_LT((xf.cast<double>() / static_cast<double>(n) - x).cwiseAbs().maxCoeff(), 1e-5) << n;
  }
}

TEST(Fwht, RejectsBadShapes) {
  std::vector<float> xf(24, 1.0f);
  std::vector<double> xd(24, 1.0);
  EXPECT_THROW(fwht_inplace(xf.data(), 2, 12), ShapeError);
  EXPECT_THROW(fwht_inplace(xd.data(), 2, 12), ShapeError);
  EXPECT_THROW(fwht_inplace(xd.data(), 1, 0), ShapeError);
  EXPECT_THROW(fwht_inplace(xd.data(), -1, 8), ShapeError);
  EXPECT_THROW(fwht_inplace(static_cast<double*>(nullptr), 1, 8), ShapeError);
  EXPECT_NO_THROW(fwht_inplace(static_cast<double*>(nullptr), 0, 8));
}

// Dense T built independently of online_hadamard_dense: diag(s) * kron(B, S_pow2) / sqrt(pow2).
MatrixXdR reference_dense(const OnlineHadamard& t) {
  MatrixXdR block(t.block, t.block);
  for (int64_t i = 0; i < t.block * t.block; ++i) block.data()[i] = t.block_matrix[i];
  MatrixXdR s(t.pow2, t.pow2);
  for (int64_t a = 0; a < t.pow2; ++a) {
    for (int64_t c = 0; c < t.pow2; ++c) s(a, c) = sylvester(a, c);
  }
  MatrixXdR dense = kronecker_product(block, s) / std::sqrt(static_cast<double>(t.pow2));
  for (int64_t i = 0; i < t.n; ++i) dense.row(i) *= static_cast<double>(t.signs[i]);
  return dense;
}

struct Split {
  int64_t n, pow2, block;
  bool random_block;
};

TEST(OnlineHadamard, StructureFollowsThePlan) {
  const Split splits[] = {{1, 1, 1, false},     {3, 1, 3, true},     {8, 8, 1, false},
                          {64, 64, 1, false},   {172, 4, 43, true},  {112, 4, 28, false},
                          {76, 1, 76, false},   {1024, 1024, 1, false}, {896, 32, 28, false},
                          {184, 8, 23, true},   {52, 1, 52, false},  {1000, 2, 500, false}};
  for (const Split& split : splits) {
    Rng rng(split.n);
    const OnlineHadamard t = make_online_hadamard(split.n, rng, true);
    EXPECT_EQ(t.n, split.n);
    EXPECT_EQ(t.pow2, split.pow2) << split.n;
    EXPECT_EQ(t.block, split.block) << split.n;
    ASSERT_EQ(static_cast<int64_t>(t.signs.size()), split.n);
    for (float s : t.signs) EXPECT_TRUE(s == 1.0f || s == -1.0f);
    Eigen::Map<const MatrixXdR> block(t.block_matrix.data(), t.block, t.block);
    EXPECT_LT(orthogonality_error(block), 1e-12) << split.n;
    if (!split.random_block && split.block > 1) {
      // A normalized Hadamard block: every entry is +-1/sqrt(block).
      EXPECT_LT((block.cwiseAbs().array() - 1.0 / std::sqrt(split.block)).abs().maxCoeff(), 1e-15);
    }
    EXPECT_EQ(t.construction.find("random_orthogonal") != std::string::npos, split.random_block)
        << t.construction;
  }
}

TEST(OnlineHadamard, SignsAndDrawOrder) {
  // Constructible, no random signs: no draws, all +1.
  Rng rng(3);
  const Rng before = rng;
  const OnlineHadamard plain = make_online_hadamard(896, rng, false);
  EXPECT_EQ(rng.state(), before.state());
  for (float s : plain.signs) EXPECT_EQ(s, 1.0f);
  // Random signs: n sign draws, then the random orthogonal block (172 = 43 * 4).
  Rng a(21);
  Rng twin(21);
  const OnlineHadamard t = make_online_hadamard(172, a, true);
  int minus = 0;
  for (int64_t i = 0; i < 172; ++i) {
    EXPECT_EQ(t.signs[i], static_cast<float>(twin.sign()));
    minus += t.signs[i] < 0;
  }
  EXPECT_GT(minus, 40);
  EXPECT_LT(minus, 132);
  const MatrixXdR q = random_orthogonal(43, twin);
  EXPECT_TRUE(std::memcmp(q.data(), t.block_matrix.data(), sizeof(double) * 43 * 43) == 0);
  EXPECT_EQ(a.state(), twin.state());
}

TEST(OnlineHadamard, DenseMatchesFormulaAndHadamardMatrix) {
  for (int64_t n : {1, 3, 8, 12, 28, 52, 76, 112, 172, 184, 896}) {
    Rng rng(500 + n);
    const OnlineHadamard t = make_online_hadamard(n, rng, true);
    const MatrixXdR dense = online_hadamard_dense(t);
    EXPECT_LT((dense - reference_dense(t)).cwiseAbs().maxCoeff(), 1e-15) << n;
    EXPECT_LT(orthogonality_error(dense), 1e-10) << n;
    if (const auto h = hadamard_matrix(n)) {
      MatrixXdR expected = *h / std::sqrt(static_cast<double>(n));
      for (int64_t i = 0; i < n; ++i) expected.row(i) *= static_cast<double>(t.signs[i]);
      EXPECT_LT((dense - expected).cwiseAbs().maxCoeff(), 1e-15) << n;
    }
  }
}

TEST(OnlineHadamard, FastTransformMatchesDenseProduct) {
  for (int64_t n : {1, 3, 8, 64, 172, 28 * 4, 38 * 2, 1024, 896, 52, 1000, 344}) {
    for (bool random_signs : {false, true}) {
      Rng rng(900 + n);
      const OnlineHadamard t = make_online_hadamard(n, rng, random_signs);
      const MatrixXdR dense = online_hadamard_dense(t);
      const int64_t rows = 5;
      const MatrixXdR x = gaussian_matrix(rows, n, 31 * n + random_signs);
      const MatrixXdR expected = x * dense;

      MatrixXdR yd = x;
      apply_online_hadamard(t, yd.data(), rows);
      EXPECT_LT((yd - expected).cwiseAbs().maxCoeff(), 1e-12) << n;

      Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> yf = x.cast<float>();
      apply_online_hadamard(t, yf.data(), rows);
      EXPECT_LT((yf.cast<double>() - expected).cwiseAbs().maxCoeff(), 1e-5) << n;

      // Orthogonal: x * T * T^T == x.
      EXPECT_LT((yd * dense.transpose() - x).cwiseAbs().maxCoeff(), 1e-12) << n;
    }
  }
}

TEST(OnlineHadamard, FastTransformMatchesHadamardMatrix3584) {
  const int64_t n = 3584;  // 128 * 28, the Llama-3 FFN factor
  Rng rng(3584);
  const OnlineHadamard t = make_online_hadamard(n, rng, true);
  const auto h = hadamard_matrix(n);
  ASSERT_TRUE(h.has_value());
  const MatrixXdR x = gaussian_matrix(3, n, 12);
  MatrixXdR xs = x;
  for (int64_t i = 0; i < n; ++i) xs.col(i) *= static_cast<double>(t.signs[i]);
  const MatrixXdR expected = xs * *h / std::sqrt(static_cast<double>(n));
  MatrixXdR yd = x;
  apply_online_hadamard(t, yd.data(), 3);
  EXPECT_LT((yd - expected).cwiseAbs().maxCoeff(), 1e-12);
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> yf = x.cast<float>();
  apply_online_hadamard(t, yf.data(), 3);
  EXPECT_LT((yf.cast<double>() - expected).cwiseAbs().maxCoeff(), 1e-5);
  // Norm preserved row by row.
  for (int r = 0; r < 3; ++r) EXPECT_NEAR(yd.row(r).norm(), x.row(r).norm(), 1e-10);
}

TEST(OnlineHadamard, StridedRowsTransformOnlyTheSlice) {
  for (int64_t n : {28, 172, 64}) {
    Rng rng(n + 5);
    const OnlineHadamard t = make_online_hadamard(n, rng, true);
    const int64_t rows = 4;
    const int64_t width = n + 7;
    const int64_t first = 3;
    const MatrixXdR wide = gaussian_matrix(rows, width, n);
    const MatrixXdR expected_slice = wide.middleCols(first, n) * online_hadamard_dense(t);
    MatrixXdR out = wide;
    apply_online_hadamard(t, out.data() + first, rows, width);
    EXPECT_LT((out.middleCols(first, n) - expected_slice).cwiseAbs().maxCoeff(), 1e-12) << n;
    EXPECT_TRUE(out.leftCols(first) == wide.leftCols(first));
    EXPECT_TRUE(out.rightCols(width - first - n) == wide.rightCols(width - first - n));

    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> wf = wide.cast<float>();
    apply_online_hadamard(t, wf.data() + first, rows, width);
    const MatrixXdR wf_slice = wf.cast<double>().middleCols(first, n);
    EXPECT_LT((wf_slice - expected_slice).cwiseAbs().maxCoeff(), 1e-5);
    EXPECT_TRUE(wf.leftCols(first) == wide.leftCols(first).cast<float>());
    EXPECT_THROW(apply_online_hadamard(t, out.data(), rows, n - 1), ShapeError);
  }
}

TEST(OnlineHadamard, RejectsInconsistentDescriptions) {
  Rng rng(1);
  EXPECT_THROW(make_online_hadamard(0, rng, true), ShapeError);
  const OnlineHadamard good = make_online_hadamard(12, rng, true);
  std::vector<double> x(24, 1.0);
  EXPECT_THROW(apply_online_hadamard(good, x.data(), -1), ShapeError);
  EXPECT_THROW(apply_online_hadamard(good, static_cast<double*>(nullptr), 2), ShapeError);

  OnlineHadamard bad_signs = good;
  bad_signs.signs.pop_back();
  EXPECT_THROW(apply_online_hadamard(bad_signs, x.data(), 2), ShapeError);
  EXPECT_THROW(online_hadamard_dense(bad_signs), ShapeError);

  OnlineHadamard bad_block = good;
  bad_block.block_matrix.resize(10);
  EXPECT_THROW(apply_online_hadamard(bad_block, x.data(), 2), ShapeError);

  OnlineHadamard bad_split = good;  // 12 = 3 * 4 but pow2 must be a power of two
  bad_split.pow2 = 3;
  bad_split.block = 4;
  bad_split.block_matrix.assign(16, 0.5);
  std::vector<float> xf(24, 1.0f);
  EXPECT_THROW(apply_online_hadamard(bad_split, xf.data(), 2), ShapeError);

  OnlineHadamard bad_n = good;
  bad_n.n = 13;
  EXPECT_THROW(online_hadamard_dense(bad_n), ShapeError);
}

TEST(RandomizedHadamard, EqualsOnlineDenseAndIsDeterministic) {
  for (int64_t n : {1, 2, 12, 64, 172, 896, 43, 76}) {
    Rng a(n * 7);
    Rng b(n * 7);
    Rng c(n * 7 + 1);
    const MatrixXdR r = randomized_hadamard(n, a);
    const MatrixXdR t = online_hadamard_dense(make_online_hadamard(n, b, true));
    EXPECT_TRUE(bitwise_equal(r, t)) << n;
    EXPECT_EQ(a.state(), b.state());
    EXPECT_LT(orthogonality_error(r), 1e-10) << n;
    Rng a2(n * 7);
    EXPECT_TRUE(bitwise_equal(r, randomized_hadamard(n, a2))) << n;
    if (n >= 8) {
      EXPECT_FALSE(bitwise_equal(r, randomized_hadamard(n, c))) << n;
    }
  }
}

}  // namespace
}  // namespace resq
