// Random orthogonal rotations for ResQ: Haar-random orthogonal matrices, randomized Hadamard
// matrices, and the online (run-time) Hadamard transform with its fast O(n log n) application.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "resq/linalg/random.h"
#include "resq/linalg/types.h"

namespace resq {

// Conventions for every transform in this header: activations are row vectors (rows are tokens),
// x is [rows, n] row-major, and a transform T [n, n] maps x to y = x * T. A weight W [out, in]
// whose input x is rotated is compensated as W * T (T orthogonal), i.e. the same transform applied
// to each row of W.

// Haar-distributed random orthogonal Q [n, n]: G [n, n] is filled row by row with rng.normal()
// (n*n draws), Eigen's Householder QR gives G = Q R, and Q * diag(sign(diag(R))) is returned
// (sign(0) = +1), which makes Q unique and Haar (Mezzadri 2007). Throws ShapeError for n < 1.
MatrixXdR random_orthogonal(int64_t n, Rng& rng);

// Description of the orthogonal n x n transform T applied at run time:
//
//   T = diag(signs) * kron(B, S_pow2) / sqrt(pow2),     n = block * pow2,
//
// S_pow2 the (unnormalized, symmetric) Sylvester matrix and B = block_matrix [block, block]
// orthogonal. With x viewed as X [block, pow2] (row-major, index i = b * pow2 + a) this is
//   Y = B^T * ((X .* signs) * S_pow2) / sqrt(pow2),
// i.e. a fast Walsh-Hadamard transform on each contiguous chunk of length pow2, then a dense
// block x block mix of the chunks. This is the Kronecker ordering of hadamard_matrix().
struct OnlineHadamard {
  int64_t n = 1;
  int64_t pow2 = 1;   // power of two
  int64_t block = 1;  // n / pow2
  std::vector<double> block_matrix{1.0};  // [block, block] row-major, orthogonal
  std::vector<float> signs{1.0f};         // [n], +-1, applied to x before the transform
  // e.g. "sylvester(4096)", "kron(paley2(q=13), sylvester(128))",
  // "kron(random_orthogonal(43), sylvester(4))"
  std::string construction;
};

// ShapeError prefixed by `where` unless t is consistent: n = pow2 * block >= 1, pow2 a power of two,
// block_matrix [block, block], signs [n]. Every implementation of the transform checks with it.
void check_online_hadamard(const OnlineHadamard& t, const char* where);

// Builds the transform for n >= 1 (ShapeError otherwise).
//  * n constructible (hadamard_plan): pow2/block from the plan, B = Paley block / sqrt(block)
//    (B = [1] for a power of two), so T = diag(signs) * hadamard_matrix(n) / sqrt(n).
//  * otherwise: pow2 = the largest power of two dividing n, block = the odd rest, and
//    B = random_orthogonal(block, rng)  (e.g. 172 = 43 * 4, 1000 = 125 * 8).
// Draw order: first n rng.sign() draws when random_signs (none otherwise: all +1), then the
// random orthogonal block if one is needed.
OnlineHadamard make_online_hadamard(int64_t n, Rng& rng, bool random_signs);

// The dense T [n, n] described by t (built entry by entry from the formula, not by running the
// fast transform). Throws ShapeError when t is inconsistent.
MatrixXdR online_hadamard_dense(const OnlineHadamard& t);

// In place x [rows, n] (row-major) <- x * T, T = online_hadamard_dense(t), in O(n log pow2 +
// n * block) per row. float: float arithmetic (accuracy ~1e-6 relative for n ~ 1e4); double:
// double arithmetic. Throws ShapeError when t is inconsistent or rows < 0.
void apply_online_hadamard(const OnlineHadamard& t, float* x, int64_t rows);
void apply_online_hadamard(const OnlineHadamard& t, double* x, int64_t rows);
// Same on rows that are row_stride >= n elements apart (a column slice of a wider row-major
// matrix, e.g. W[:, k0:k0+n]); the elements between rows are left untouched.
void apply_online_hadamard(const OnlineHadamard& t, float* x, int64_t rows, int64_t row_stride);
void apply_online_hadamard(const OnlineHadamard& t, double* x, int64_t rows, int64_t row_stride);
// In place x [rows, n] <- x * T^T (the inverse: T is orthogonal), double arithmetic. With
// T = diag(s) * K, K = kron(B, S_pow2) / sqrt(pow2): x T^T = (x K^T) .* s and K^T = kron(B^T, S_pow2)
// / sqrt(pow2), so it runs the same fast transform with B transposed and no signs, then the signs.
// Undoes a rotation fused into weight rows (W T T^T = W), e.g. to fold an online Hadamard back.
void apply_online_hadamard_transpose(const OnlineHadamard& t, double* x, int64_t rows);

// Randomized Hadamard rotation R [n, n] (orthogonal):
//   R = online_hadamard_dense(make_online_hadamard(n, rng, /*random_signs=*/true)),
// i.e. diag(s) * H_n / sqrt(n) for constructible n (signs on the input side: x -> (x .* s) * H),
// and diag(s) * kron(Q_m, S_2^k) / sqrt(2^k) with a random orthogonal Q_m for the odd rest m
// otherwise. Same draws as make_online_hadamard, so both give the same T for the same rng state.
MatrixXdR randomized_hadamard(int64_t n, Rng& rng);

// Unnormalized in-place fast Walsh-Hadamard transform of each row of x [rows, n]:
// x <- x * S_n, S_n(i, j) = (-1)^popcount(i & j). Its own inverse up to 1/n (applying it twice
// gives n * x). n must be a power of two (ShapeError otherwise).
void fwht_inplace(float* x, int64_t rows, int64_t n);
void fwht_inplace(double* x, int64_t rows, int64_t n);

}  // namespace resq
