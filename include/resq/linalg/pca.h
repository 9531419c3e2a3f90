// PCA of a calibration covariance (LAPACK dsyevd) and the ResQ basis U = P * blockdiag(R_low,
// R_high) that separates the high-variance subspace (kept in 8 bits) from the rest (4 bits).
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <functional>

#include "resq/linalg/random.h"
#include "resq/linalg/types.h"

namespace resq {

struct PcaResult {
  // [n] ascending eigenvalues of the DAMPED matrix sym(C) + damping * I (what was decomposed);
  // the undamped spectrum is eigenvalues - damping.
  Eigen::VectorXd eigenvalues;
  // [n, n] eigenvectors as columns, column j for eigenvalues[j]: the LAST r columns span the
  // top-r (high-variance) subspace. Sign convention: in each column the entry of largest |value|
  // is positive (the first index wins among entries equal in magnitude to 1e-12 relative).
  MatrixXdR eigenvectors;
  // damp_fraction * mean(diag(C)), added to the diagonal before the decomposition.
  double damping = 0.0;
  // trace(C) = sum of the undamped eigenvalues (exact, unlike summing eigenvalues - damping).
  double total_variance = 0.0;
};

// Eigendecomposition of a covariance C [n, n] (n >= 1): symmetrizes (C + C^T) / 2, adds
// damp_fraction * mean(diag) to the diagonal and calls LAPACK's dsyevd on a copy.
// Throws ShapeError (not square, empty), ConfigError (non-finite entries, negative diagonal,
// damp_fraction negative or not finite) and resq::Error when LAPACK reports info != 0.
// Reproducible bit for bit for one BLAS build and thread count (OpenBLAS may round differently
// with a different OPENBLAS_NUM_THREADS / OMP_NUM_THREADS).
// solver: replaces dsyevd (e.g. torch's eigh on a GPU, src/quant/pipeline_rotations.cpp); it gets
// the damped symmetric matrix a [n, n] and must leave the eigenvectors in a's columns (a is
// column-major) and the ascending eigenvalues in w [n], returning 0 on success (else the LAPACK-style
// info). Validation, damping and the sign convention are the same for every solver.
using SymmetricEigensolver = std::function<int(Eigen::MatrixXd& a, Eigen::VectorXd& w)>;
PcaResult pca_from_covariance(const MatrixXdR& cov, double damp_fraction = 0.01,
                              const SymmetricEigensolver& solver = {});

// Fraction of the (undamped) total variance in the top-r eigen-directions, r in [0, n]
// (ConfigError otherwise); tiny negative undamped eigenvalues count as 0. ConfigError when the
// total variance is not positive (an all-zero covariance has no meaningful fraction).
double captured_variance_fraction(const PcaResult& pca, int64_t r);

// ResQ basis U [n, n] = P * blockdiag(R_low [n-r, n-r], R_high [r, r]) with P = eigenvectors:
// columns [0, n-r) span the low-variance subspace, columns [n-r, n) the top-r subspace.
// rotate = true: R_low = randomized_hadamard(n - r, rng), then R_high = randomized_hadamard(r,
// rng) (that draw order; an empty block draws nothing), applied with the fast transform, so U
// equals that dense product up to rounding (~1e-15). rotate = false: U = P (no draws).
// r in [0, n] (ConfigError otherwise).
MatrixXdR resq_basis(const PcaResult& pca, int64_t r, Rng& rng, bool rotate);

}  // namespace resq
