// Tests of the PCA (dsyevd wrapper): known spectra, planted subspaces, residuals, the sign
// convention, determinism, error paths, and the ResQ basis built on it.
#include <gtest/gtest.h>

#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "resq/common/error.h"
#include "resq/linalg/pca.h"
#include "resq/linalg/random.h"
#include "resq/linalg/rotation.h"
#include "linalg/linalg_test_util.h"

namespace resq {
namespace {

using test::gaussian_matrix;

// Orthonormal Q [n, n] from Eigen's QR of a Gaussian (test input, independent of resq rotations).
MatrixXdR test_orthonormal(int64_t n, uint64_t seed) {
  const Eigen::MatrixXd g = gaussian_matrix(n, n, seed);
  const Eigen::MatrixXd q = Eigen::HouseholderQR<Eigen::MatrixXd>(g).householderQ();
  return MatrixXdR(q);
}

// Sample covariance X^T X / N of X [N, n].
MatrixXdR covariance(const MatrixXdR& x) {
  return (x.transpose() * x) / static_cast<double>(x.rows());
}

bool bitwise_equal(const MatrixXdR& a, const MatrixXdR& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(double) * a.size()) == 0;
}

TEST(Pca, RecoversAKnownSpectrum) {
  const int64_t n = 29;
  const MatrixXdR q = test_orthonormal(n, 8);
  Eigen::VectorXd lambda(n);
  for (int64_t i = 0; i < n; ++i) lambda(i) = 0.3 + 0.71 * static_cast<double>((i * 11) % n);
  const MatrixXdR cov = q * lambda.asDiagonal() * q.transpose();

  const PcaResult pca = pca_from_covariance(cov, 0.0);
  std::vector<double> sorted(lambda.data(), lambda.data() + n);
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(pca.damping, 0.0);
  for (int64_t j = 0; j < n; ++j) {
    EXPECT_NEAR(pca.eigenvalues(j), sorted[j], 1e-12 * sorted.back()) << j;
    // Column j is +-(the column of q whose eigenvalue is sorted[j]).
    int64_t source = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (lambda(i) == sorted[j]) source = i;
    }
    EXPECT_NEAR(std::abs(pca.eigenvectors.col(j).dot(q.col(source))), 1.0, 1e-10) << j;
  }

  const double damp = 0.05;
  const PcaResult damped = pca_from_covariance(cov, damp);
  const double mean_diag = cov.trace() / static_cast<double>(n);
  EXPECT_NEAR(damped.damping, damp * mean_diag, 1e-14 * mean_diag);
  EXPECT_NEAR(damped.total_variance, lambda.sum(), 1e-12 * lambda.sum());
  for (int64_t j = 0; j < n; ++j) {
    EXPECT_NEAR(damped.eigenvalues(j), sorted[j] + damp * mean_diag, 1e-12 * sorted.back());
  }
}

TEST(Pca, DecompositionResidualAndOrthonormality) {
  for (int64_t n : {1, 2, 5, 37, 130}) {
    const MatrixXdR x = gaussian_matrix(3 * n + 7, n, 40 + n);
    const MatrixXdR cov = covariance(x);
    const PcaResult pca = pca_from_covariance(cov);
    ASSERT_EQ(pca.eigenvalues.size(), n);
    const MatrixXdR& v = pca.eigenvectors;
    const Eigen::VectorXd undamped = pca.eigenvalues.array() - pca.damping;
    const double residual = (cov * v - v * undamped.asDiagonal()).norm() / cov.norm();
    EXPECT_LT(residual, 1e-12) << n;
    EXPECT_LT((v.transpose() * v - MatrixXdR::Identity(n, n)).cwiseAbs().maxCoeff(), 1e-12) << n;
    for (int64_t j = 1; j < n; ++j) EXPECT_LE(pca.eigenvalues(j - 1), pca.eigenvalues(j));
    // Same spectrum as Eigen's own solver.
    const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> reference((Eigen::MatrixXd(cov)));
    EXPECT_LT((undamped - reference.eigenvalues()).cwiseAbs().maxCoeff(),
              1e-12 * reference.eigenvalues().cwiseAbs().maxCoeff())
        << n;
  }
}

TEST(Pca, RecoversPlantedHighVarianceSubspace) {
  const int64_t n = 48;
  const int64_t r = 5;
  const int64_t samples = 4000;
  const MatrixXdR planted = test_orthonormal(n, 99).leftCols(r);  // [n, r]
  // X = Z * A with A = I + (30 - 1) * U U^T: variance 900 along span(U), 1 elsewhere.
  const MatrixXdR a =
      MatrixXdR::Identity(n, n) + 29.0 * planted * planted.transpose();
  const MatrixXdR x = gaussian_matrix(samples, n, 123) * a;
  const PcaResult pca = pca_from_covariance(covariance(x));
  const MatrixXdR top = pca.eigenvectors.rightCols(r);
  // Cosines of the principal angles between span(top) and span(planted).
  const Eigen::JacobiSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(planted.transpose() * top));
  EXPECT_GT(svd.singularValues().minCoeff(), 0.999);
  // The next direction is not in the planted subspace.
  EXPECT_LT((planted.transpose() * pca.eigenvectors.col(n - r - 1)).norm(), 0.05);

  // Captured variance: top-r eigenvalues of Eigen's solver over the trace.
  const MatrixXdR cov = covariance(x);
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> reference((Eigen::MatrixXd(cov)));
  const double expected = reference.eigenvalues().tail(r).sum() / cov.trace();
  EXPECT_NEAR(captured_variance_fraction(pca, r), expected, 1e-10);
  EXPECT_GT(expected, 0.98);
  EXPECT_EQ(captured_variance_fraction(pca, 0), 0.0);
  EXPECT_NEAR(captured_variance_fraction(pca, n), 1.0, 1e-12);
}

TEST(Pca, SignConvention) {
  // [[2, -1], [-1, 2]]: eigenvalue 1 -> (1, 1)/sqrt2, eigenvalue 3 -> (1, -1)/sqrt2 (tied
  // magnitudes: the first index is made positive).
  MatrixXdR c(2, 2);
  c << 2, -1, -1, 2;
  const PcaResult pca = pca_from_covariance(c, 0.0);
  const double h = std::sqrt(0.5);
  EXPECT_NEAR(pca.eigenvalues(0), 1.0, 1e-14);
  EXPECT_NEAR(pca.eigenvalues(1), 3.0, 1e-14);
  EXPECT_NEAR(pca.eigenvectors(0, 0), h, 1e-14);
  EXPECT_NEAR(pca.eigenvectors(1, 0), h, 1e-14);
  EXPECT_NEAR(pca.eigenvectors(0, 1), h, 1e-14);
  EXPECT_NEAR(pca.eigenvectors(1, 1), -h, 1e-14);

  // Diagonal covariance: eigenvectors are +e_i, never -e_i.
  MatrixXdR d = MatrixXdR::Zero(4, 4);
  d.diagonal() << 4.0, 1.0, 3.0, 2.0;
  const PcaResult diag = pca_from_covariance(d, 0.0);
  const int64_t order[] = {1, 3, 2, 0};
  for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(diag.eigenvectors(order[j], j), 1.0) << j;

  // Random covariance: the largest-magnitude entry of every column is positive.
  const PcaResult pca_rand = pca_from_covariance(covariance(gaussian_matrix(100, 23, 5)));
  for (int64_t j = 0; j < 23; ++j) {
    Eigen::Index arg = 0;
    pca_rand.eigenvectors.col(j).cwiseAbs().maxCoeff(&arg);
    EXPECT_GT(pca_rand.eigenvectors(arg, j), 0.0) << j;
  }
}

TEST(Pca, DeterministicAndSymmetrizes) {
  const MatrixXdR cov = covariance(gaussian_matrix(200, 64, 9));
  const PcaResult a = pca_from_covariance(cov);
  const PcaResult b = pca_from_covariance(cov);
  EXPECT_TRUE(bitwise_equal(a.eigenvectors, b.eigenvectors));
  EXPECT_TRUE(std::memcmp(a.eigenvalues.data(), b.eigenvalues.data(), sizeof(double) * 64) == 0);

  // An asymmetric perturbation has no effect beyond its symmetric part.
  MatrixXdR skew = gaussian_matrix(64, 64, 10) * 1e-3;
  skew = skew - MatrixXdR(skew.transpose());
  const MatrixXdR asym = cov + skew;
  const MatrixXdR sym = 0.5 * (asym + asym.transpose());
  const PcaResult from_asym = pca_from_covariance(asym);
  const PcaResult from_sym = pca_from_covariance(sym);
  EXPECT_TRUE(bitwise_equal(from_asym.eigenvectors, from_sym.eigenvectors));
}

TEST(Pca, SingleDimension) {
  MatrixXdR c(1, 1);
  c << 4.0;
  const PcaResult pca = pca_from_covariance(c);
  EXPECT_NEAR(pca.eigenvalues(0), 4.04, 1e-15);
  EXPECT_EQ(pca.eigenvectors(0, 0), 1.0);
  EXPECT_NEAR(captured_variance_fraction(pca, 1), 1.0, 1e-15);
}

TEST(Pca, RejectsInvalidInput) {
  EXPECT_THROW(pca_from_covariance(MatrixXdR::Identity(3, 4)), ShapeError);
  EXPECT_THROW(pca_from_covariance(MatrixXdR(0, 0)), ShapeError);
  MatrixXdR c = MatrixXdR::Identity(3, 3);
  c(1, 2) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_THROW(pca_from_covariance(c), ConfigError);
  c(1, 2) = std::numeric_limits<double>::infinity();
  EXPECT_THROW(pca_from_covariance(c), ConfigError);
  MatrixXdR negative = MatrixXdR::Identity(3, 3);
  negative(2, 2) = -1.0;
  EXPECT_THROW(pca_from_covariance(negative), ConfigError);
  EXPECT_THROW(pca_from_covariance(MatrixXdR::Identity(3, 3), -0.1), ConfigError);
  EXPECT_THROW(pca_from_covariance(MatrixXdR::Identity(3, 3),
                                   std::numeric_limits<double>::quiet_NaN()),
               ConfigError);

  const PcaResult pca = pca_from_covariance(MatrixXdR::Identity(3, 3));
  EXPECT_THROW(captured_variance_fraction(pca, -1), ConfigError);
  EXPECT_THROW(captured_variance_fraction(pca, 4), ConfigError);
  Rng rng(1);
  EXPECT_THROW(resq_basis(pca, 4, rng, true), ConfigError);
  EXPECT_THROW(resq_basis(pca, -1, rng, false), ConfigError);
  PcaResult broken = pca;
  broken.eigenvectors.resize(3, 2);
  EXPECT_THROW(resq_basis(broken, 1, rng, true), ShapeError);
  EXPECT_THROW(captured_variance_fraction(broken, 1), ShapeError);

  const PcaResult zero = pca_from_covariance(MatrixXdR::Zero(3, 3));
  EXPECT_EQ(zero.damping, 0.0);
  EXPECT_THROW(captured_variance_fraction(zero, 1), ConfigError);
}

// blockdiag(R_low, R_high) [n, n].
MatrixXdR block_diag(const MatrixXdR& low, const MatrixXdR& high) {
  const int64_t n = low.rows() + high.rows();
  MatrixXdR out = MatrixXdR::Zero(n, n);
  out.topLeftCorner(low.rows(), low.cols()) = low;
  out.bottomRightCorner(high.rows(), high.cols()) = high;
  return out;
}

TEST(ResqBasis, IsPTimesBlockRotations) {
  struct Case {
    int64_t n, r;
  };
  // 48 - 5 = 43 (random orthogonal block), 64 - 8 = 56 (= 2 * 28), r = 0 and r = n edges.
  for (const Case c : {Case{48, 5}, Case{64, 8}, Case{30, 0}, Case{30, 30}, Case{1, 1}}) {
    const PcaResult pca = pca_from_covariance(covariance(gaussian_matrix(3 * c.n, c.n, c.n)));
    Rng rng(77);
    Rng twin(77);
    const MatrixXdR u = resq_basis(pca, c.r, rng, true);
    MatrixXdR low = MatrixXdR::Zero(0, 0);
    MatrixXdR high = MatrixXdR::Zero(0, 0);
    if (c.n - c.r > 0) low = randomized_hadamard(c.n - c.r, twin);
    if (c.r > 0) high = randomized_hadamard(c.r, twin);
    const MatrixXdR expected = pca.eigenvectors * block_diag(low, high);
    EXPECT_LT((u - expected).cwiseAbs().maxCoeff(), 1e-13) << c.n << " " << c.r;
    EXPECT_EQ(rng.state(), twin.state());
    const int64_t n = c.n;
    EXPECT_LT((u.transpose() * u - MatrixXdR::Identity(n, n)).cwiseAbs().maxCoeff(), 1e-12);
    // The rotation stays inside each subspace: equal projectors onto the top-r subspace.
    const MatrixXdR p_top = pca.eigenvectors.rightCols(c.r);
    const MatrixXdR u_top = u.rightCols(c.r);
    EXPECT_LT((u_top * u_top.transpose() - p_top * p_top.transpose()).cwiseAbs().maxCoeff(),
              1e-12);
    Rng again(77);
    EXPECT_TRUE(bitwise_equal(u, resq_basis(pca, c.r, again, true)));
  }
}

TEST(ResqBasis, NoRotationIsPAndDrawsNothing) {
  const PcaResult pca = pca_from_covariance(covariance(gaussian_matrix(100, 20, 3)));
  Rng rng(5);
  const Rng before = rng;
  EXPECT_TRUE(bitwise_equal(resq_basis(pca, 4, rng, false), pca.eigenvectors));
  EXPECT_EQ(rng.state(), before.state());
  Rng other(6);
  Rng same(5);
  EXPECT_FALSE(bitwise_equal(resq_basis(pca, 4, same, true), resq_basis(pca, 4, other, true)));
}

}  // namespace
}  // namespace resq
