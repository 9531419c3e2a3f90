// PCA via LAPACK dsyevd with damping and a deterministic eigenvector sign convention, and the
// ResQ basis built from it. LAPACK is called directly through resq/linalg/lapack.h (Eigen's own
// LAPACK bindings, EIGEN_USE_LAPACKE, are not used).
#include "resq/linalg/pca.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "resq/common/error.h"
#include "resq/linalg/lapack.h"
#include "resq/linalg/rotation.h"

namespace resq {
namespace {

void check_pca(const PcaResult& pca, const char* where) {
  const Eigen::Index n = pca.eigenvalues.size();
  RESQ_CHECK_OR_THROW(n >= 1 && pca.eigenvectors.rows() == n && pca.eigenvectors.cols() == n,
                      ShapeError,
                      std::string(where) + ": PcaResult has " + std::to_string(n) +
                          " eigenvalues and eigenvectors [" +
                          std::to_string(pca.eigenvectors.rows()) + ", " +
                          std::to_string(pca.eigenvectors.cols()) + "], expected [n, n], n >= 1");
}

void check_rank(int64_t r, int64_t n, const char* where) {
  RESQ_CHECK_OR_THROW(r >= 0 && r <= n, ConfigError,
                      std::string(where) + ": r = " + std::to_string(r) + " must be in [0, " +
                          std::to_string(n) + "]");
}

// basis[:, first_col : first_col + k] [n, k] <- itself * R, R the randomized Hadamard of order k
// drawn from rng; in place through the row stride (no copy of the block).
void rotate_columns(MatrixXdR& basis, int64_t first_col, int64_t k, Rng& rng) {
  if (k == 0) return;
  const OnlineHadamard t = make_online_hadamard(k, rng, /*random_signs=*/true);
  apply_online_hadamard(t, basis.data() + first_col, basis.rows(), basis.cols());
}

}  // namespace

PcaResult pca_from_covariance(const MatrixXdR& cov, double damp_fraction, const SymmetricEigensolver& solver) {
  RESQ_CHECK_OR_THROW(cov.rows() >= 1 && cov.rows() == cov.cols(), ShapeError,
                      "pca_from_covariance: covariance must be square [n, n] with n >= 1, got [" +
                          std::to_string(cov.rows()) + ", " + std::to_string(cov.cols()) + "]");
  RESQ_CHECK_OR_THROW(std::isfinite(damp_fraction) && damp_fraction >= 0.0, ConfigError,
                      "pca_from_covariance: damp_fraction must be finite and >= 0, got " +
                          std::to_string(damp_fraction));
  RESQ_CHECK_OR_THROW(cov.rows() <= std::numeric_limits<lapack::Int>::max(), ShapeError,
                      "pca_from_covariance: n = " + std::to_string(cov.rows()) +
                          " exceeds LAPACK's integer range");
  const int64_t n = cov.rows();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      RESQ_CHECK_OR_THROW(std::isfinite(cov(i, j)), ConfigError,
                          "pca_from_covariance: covariance entry (" + std::to_string(i) + ", " +
                              std::to_string(j) + ") is not finite");
    }
    RESQ_CHECK_OR_THROW(cov(i, i) >= 0.0, ConfigError,
                        "pca_from_covariance: covariance diagonal entry " + std::to_string(i) +
                            " is negative (" + std::to_string(cov(i, i)) +
                            "); a covariance has a non-negative diagonal");
  }

  PcaResult result;
  // Symmetric, so row-major and column-major storage coincide; LAPACK overwrites it with the
  // eigenvectors in column-major order.
  Eigen::MatrixXd a = 0.5 * (cov + cov.transpose());
  result.total_variance = a.trace();
  result.damping = damp_fraction * result.total_variance / static_cast<double>(n);
  a.diagonal().array() += result.damping;

  result.eigenvalues.resize(n);
  const int info = solver ? solver(a, result.eigenvalues)
                          : static_cast<int>(lapack::dsyevd('V', 'L', static_cast<lapack::Int>(n), a.data(),
                                                            static_cast<lapack::Int>(n), result.eigenvalues.data()));
  if (info != 0) {
    throw Error(std::string("pca_from_covariance: ") + (solver ? "the eigensolver" : "LAPACK dsyevd") +
                " failed on the [" + std::to_string(n) + ", " + std::to_string(n) + "] covariance with info = " +
                std::to_string(info) + (info < 0 ? " (illegal argument)" : " (eigenvalue iteration did not converge)"));
  }
  RESQ_CHECK_OR_THROW(result.eigenvalues.size() == n && a.rows() == n && a.cols() == n, ShapeError,
                      "pca_from_covariance: the eigensolver returned " + std::to_string(result.eigenvalues.size()) +
                          " eigenvalues for n = " + std::to_string(n));

  // Sign convention: the entry of largest magnitude is positive. Entries within 1e-12 relative of
  // the maximum count as ties (rounding would otherwise decide) and the first one decides.
  for (int64_t j = 0; j < n; ++j) {
    const auto col = a.col(j);
    const double max_abs = col.cwiseAbs().maxCoeff();
    const double threshold = max_abs * (1.0 - 1e-12);
    for (int64_t i = 0; i < n; ++i) {
      if (std::abs(col(i)) >= threshold) {
        if (col(i) < 0.0) a.col(j) *= -1.0;
        break;
      }
    }
  }
  result.eigenvectors = a;
  return result;
}

double captured_variance_fraction(const PcaResult& pca, int64_t r) {
  check_pca(pca, "captured_variance_fraction");
  const int64_t n = pca.eigenvalues.size();
  check_rank(r, n, "captured_variance_fraction");
  RESQ_CHECK_OR_THROW(pca.total_variance > 0.0, ConfigError,
                      "captured_variance_fraction: total variance is " +
                          std::to_string(pca.total_variance) + ", expected > 0");
  double top = 0.0;
  for (int64_t j = n - r; j < n; ++j) top += std::max(0.0, pca.eigenvalues(j) - pca.damping);
  return std::min(1.0, top / pca.total_variance);
}

MatrixXdR resq_basis(const PcaResult& pca, int64_t r, Rng& rng, bool rotate) {
  check_pca(pca, "resq_basis");
  const int64_t n = pca.eigenvalues.size();
  check_rank(r, n, "resq_basis");
  MatrixXdR basis = pca.eigenvectors;
  if (!rotate) return basis;
  rotate_columns(basis, 0, n - r, rng);
  rotate_columns(basis, n - r, r, rng);
  return basis;
}

}  // namespace resq
