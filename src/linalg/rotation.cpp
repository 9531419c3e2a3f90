// Random orthogonal and randomized Hadamard rotations, and the fast online Hadamard transform
// (signs, per-chunk Walsh-Hadamard butterflies, dense block mix).
#include "resq/linalg/rotation.h"

#include <Eigen/QR>
#include <cmath>
#include <string>
#include <vector>

#include "resq/common/error.h"
#include "resq/linalg/fwht.h"
#include "resq/linalg/hadamard.h"

namespace resq {
namespace {

bool is_power_of_two(int64_t n) { return n >= 1 && (n & (n - 1)) == 0; }

// Sylvester entry S(a, c) = (-1)^popcount(a & c).
double sylvester_entry(int64_t a, int64_t c) {
  uint64_t v = static_cast<uint64_t>(a & c);
  int odd = 0;
  while (v != 0) {
    odd ^= 1;
    v &= v - 1;
  }
  return odd ? -1.0 : 1.0;
}

// x [rows, n] (row r at x + r * row_stride) <- x * T for one precision.
template <typename T>
void apply_online_hadamard_impl(const OnlineHadamard& t, T* x, int64_t rows, int64_t row_stride) {
  check_online_hadamard(t, "apply_online_hadamard");
  RESQ_CHECK_OR_THROW(rows >= 0, ShapeError,
                      "apply_online_hadamard: rows must be >= 0, got " + std::to_string(rows));
  RESQ_CHECK_OR_THROW(row_stride >= t.n, ShapeError,
                      "apply_online_hadamard: row_stride " + std::to_string(row_stride) +
                          " is smaller than n = " + std::to_string(t.n));
  if (rows == 0) return;
  RESQ_CHECK_OR_THROW(x != nullptr, ShapeError, "apply_online_hadamard: x is null");
  const int64_t n = t.n;
  const int64_t p = t.pow2;
  const int64_t m = t.block;
  const double inv_sqrt_p = 1.0 / std::sqrt(static_cast<double>(p));
  bool all_plus = true;
  for (float s : t.signs) all_plus = all_plus && s == 1.0f;
  using RowMajorT = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  // B^T [block, block] in T with the 1/sqrt(pow2) normalization folded in.
  RowMajorT mix(m, m);
  for (int64_t b = 0; b < m; ++b) {
    for (int64_t d = 0; d < m; ++d) {
      mix(d, b) = static_cast<T>(t.block_matrix[b * m + d] * inv_sqrt_p);
    }
  }
  RowMajorT mixed(m > 1 ? m : 0, m > 1 ? p : 0);

  for (int64_t r = 0; r < rows; ++r) {
    T* row = x + r * row_stride;
    if (!all_plus) {
      for (int64_t i = 0; i < n; ++i) row[i] *= static_cast<T>(t.signs[i]);
    }
    if (p > 1) {
      for (int64_t b = 0; b < m; ++b) fwht_butterfly(row + b * p, p);
    }
    if (m == 1) {
      const T scale = mix(0, 0);
      if (scale != T(1)) {
        for (int64_t i = 0; i < n; ++i) row[i] *= scale;
      }
      continue;
    }
    // With the row viewed as Z [block, pow2]: Y = B^T * Z (a small GEMM; GEMV when pow2 == 1).
    Eigen::Map<RowMajorT> z(row, m, p);
    mixed.noalias() = mix * z;
    z = mixed;
  }
}

template <typename T>
void fwht_inplace_impl(T* x, int64_t rows, int64_t n) {
  RESQ_CHECK_OR_THROW(is_power_of_two(n), ShapeError,
                      "fwht_inplace: length " + std::to_string(n) + " is not a power of two");
  RESQ_CHECK_OR_THROW(rows >= 0, ShapeError,
                      "fwht_inplace: rows must be >= 0, got " + std::to_string(rows));
  if (rows == 0) return;
  RESQ_CHECK_OR_THROW(x != nullptr, ShapeError, "fwht_inplace: x is null");
  for (int64_t r = 0; r < rows; ++r) fwht_butterfly(x + r * n, n);
}

}  // namespace

void check_online_hadamard(const OnlineHadamard& t, const char* where) {
  const std::string prefix = std::string(where) + ": OnlineHadamard ";
  RESQ_CHECK_OR_THROW(t.n >= 1 && t.pow2 >= 1 && t.block >= 1 && t.pow2 * t.block == t.n,
                      ShapeError,
                      prefix + "needs n = pow2 * block >= 1, got n=" + std::to_string(t.n) +
                          " pow2=" + std::to_string(t.pow2) + " block=" + std::to_string(t.block));
  RESQ_CHECK_OR_THROW(is_power_of_two(t.pow2), ShapeError,
                      prefix + "pow2=" + std::to_string(t.pow2) + " is not a power of two");
  RESQ_CHECK_OR_THROW(static_cast<int64_t>(t.block_matrix.size()) == t.block * t.block, ShapeError,
                      prefix + "block_matrix has " + std::to_string(t.block_matrix.size()) +
                          " entries, expected block^2 = " + std::to_string(t.block * t.block));
  RESQ_CHECK_OR_THROW(static_cast<int64_t>(t.signs.size()) == t.n, ShapeError,
                      prefix + "signs has " + std::to_string(t.signs.size()) +
                          " entries, expected n = " + std::to_string(t.n));
}

MatrixXdR random_orthogonal(int64_t n, Rng& rng) {
  RESQ_CHECK_OR_THROW(n >= 1, ShapeError,
                      "random_orthogonal: size must be >= 1, got " + std::to_string(n));
  Eigen::MatrixXd gaussian(n, n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) gaussian(i, j) = rng.normal();
  }
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(gaussian);
  Eigen::MatrixXd q = qr.householderQ();
  const auto& r = qr.matrixQR();  // R is its upper triangle
  for (int64_t j = 0; j < n; ++j) {
    if (r(j, j) < 0.0) q.col(j) *= -1.0;
  }
  return MatrixXdR(q);
}

OnlineHadamard make_online_hadamard(int64_t n, Rng& rng, bool random_signs) {
  RESQ_CHECK_OR_THROW(n >= 1, ShapeError,
                      "make_online_hadamard: size must be >= 1, got " + std::to_string(n));
  OnlineHadamard t;
  t.n = n;
  t.signs.assign(static_cast<size_t>(n), 1.0f);
  if (random_signs) {
    for (auto& s : t.signs) s = static_cast<float>(rng.sign());
  }
  if (const auto plan = hadamard_plan(n)) {
    t.pow2 = plan->pow2;
    t.block = plan->block;
    if (plan->kind == HadamardBlockKind::kNone) {
      t.block_matrix.assign(1, 1.0);
      t.construction = hadamard_construction_name(n);
    } else {
      const MatrixXdR paley = plan->kind == HadamardBlockKind::kPaley1
                                  ? paley1_hadamard(plan->q)
                                  : paley2_hadamard(plan->q);
      const double scale = 1.0 / std::sqrt(static_cast<double>(plan->block));
      t.block_matrix.resize(static_cast<size_t>(plan->block * plan->block));
      for (int64_t i = 0; i < plan->block * plan->block; ++i) {
        t.block_matrix[i] = paley.data()[i] * scale;
      }
      t.construction = hadamard_construction_name(n);
    }
    return t;
  }
  // No Hadamard of order n: keep the largest power-of-two factor, random orthogonal odd rest.
  t.pow2 = 1;
  while (n % (t.pow2 * 2) == 0) t.pow2 *= 2;
  t.block = n / t.pow2;
  const MatrixXdR q = random_orthogonal(t.block, rng);
  t.block_matrix.assign(q.data(), q.data() + q.size());
  t.construction = "random_orthogonal(" + std::to_string(t.block) + ")";
  if (t.pow2 > 1) {
    t.construction = "kron(" + t.construction + ", sylvester(" + std::to_string(t.pow2) + "))";
  }
  return t;
}

MatrixXdR online_hadamard_dense(const OnlineHadamard& t) {
  check_online_hadamard(t, "online_hadamard_dense");
  const int64_t p = t.pow2;
  const int64_t m = t.block;
  const double inv_sqrt_p = 1.0 / std::sqrt(static_cast<double>(p));
  // T(b*p + a, d*p + c) = signs(b*p + a) * B(b, d) * S_p(a, c) / sqrt(p).
  MatrixXdR dense(t.n, t.n);
  for (int64_t b = 0; b < m; ++b) {
    for (int64_t a = 0; a < p; ++a) {
      const int64_t i = b * p + a;
      const double row_scale = static_cast<double>(t.signs[i]) * inv_sqrt_p;
      for (int64_t d = 0; d < m; ++d) {
        const double bd = t.block_matrix[b * m + d] * row_scale;
        for (int64_t c = 0; c < p; ++c) dense(i, d * p + c) = bd * sylvester_entry(a, c);
      }
    }
  }
  return dense;
}

void apply_online_hadamard(const OnlineHadamard& t, float* x, int64_t rows) {
  apply_online_hadamard_impl(t, x, rows, t.n);
}

void apply_online_hadamard(const OnlineHadamard& t, double* x, int64_t rows) {
  apply_online_hadamard_impl(t, x, rows, t.n);
}

void apply_online_hadamard(const OnlineHadamard& t, float* x, int64_t rows, int64_t row_stride) {
  apply_online_hadamard_impl(t, x, rows, row_stride);
}

void apply_online_hadamard(const OnlineHadamard& t, double* x, int64_t rows, int64_t row_stride) {
  apply_online_hadamard_impl(t, x, rows, row_stride);
}

void apply_online_hadamard_transpose(const OnlineHadamard& t, double* x, int64_t rows) {
  if (t.n < 1 || t.block < 1 || static_cast<int64_t>(t.block_matrix.size()) != t.block * t.block ||
      static_cast<int64_t>(t.signs.size()) != t.n) {
    throw ShapeError("apply_online_hadamard_transpose: inconsistent transform (n " + std::to_string(t.n) + ", block " +
                     std::to_string(t.block) + ", " + std::to_string(t.block_matrix.size()) + " block entries, " +
                     std::to_string(t.signs.size()) + " signs)");
  }
  OnlineHadamard k = t;  // K^T: block transposed, no signs
  k.signs.assign(static_cast<size_t>(t.n), 1.0f);
  for (int64_t i = 0; i < t.block; ++i) {
    for (int64_t j = 0; j < t.block; ++j) k.block_matrix[i * t.block + j] = t.block_matrix[j * t.block + i];
  }
  apply_online_hadamard_impl(k, x, rows, t.n);  // validates t's consistency too
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < t.n; ++j) x[r * t.n + j] *= t.signs[j];
  }
}

MatrixXdR randomized_hadamard(int64_t n, Rng& rng) {
  return online_hadamard_dense(make_online_hadamard(n, rng, /*random_signs=*/true));
}

void fwht_inplace(float* x, int64_t rows, int64_t n) { fwht_inplace_impl(x, rows, n); }

void fwht_inplace(double* x, int64_t rows, int64_t n) { fwht_inplace_impl(x, rows, n); }

}  // namespace resq
