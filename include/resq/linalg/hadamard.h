// Hadamard matrices built from Sylvester and Paley constructions (no literal tables), their
// Kronecker products, and the plan that picks a construction for a given order.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "resq/linalg/types.h"

namespace resq {

// The non-power-of-two factor of a Hadamard construction.
enum class HadamardBlockKind {
  kNone,    // block == 1: pure Sylvester
  kPaley1,  // order q + 1, q a prime power with q = 3 (mod 4)
  kPaley2,  // order 2(q + 1), q a prime power with q = 1 (mod 4)
};

// How hadamard_matrix(n) builds H_n:  H_n = kron(P_block, S_pow2), n = block * pow2, where
// S_pow2 is the Sylvester matrix and P_block the Paley matrix (or [1]).
//
// Kronecker ordering convention (shared with the online transform in rotation.h): index
// i = b * pow2 + a with b in [0, block), a in [0, pow2), so the power-of-two factor acts on
// contiguous chunks of length pow2 and the block factor mixes those chunks.
//
// Choice: among all splits n = 2^a * m with m = 1 or m a Paley order, the one with the smallest m
// (the cheapest dense block for a fast transform). For one m, a prime field beats a prime-power
// field, then Paley I beats Paley II; e.g. 12 -> paley1(q=11), 28 -> paley2(q=13) (not paley1
// over GF(27)), 52 -> paley2(q=25=5^2), 3584 -> kron(paley2(q=13), sylvester(128)).
struct HadamardPlan {
  int64_t n = 1;
  int64_t pow2 = 1;   // power-of-two (Sylvester) factor
  int64_t block = 1;  // Paley order, or 1
  HadamardBlockKind kind = HadamardBlockKind::kNone;
  int64_t q = 0;            // Paley field order (0 for kNone)
  int64_t q_prime = 0;      // q = q_prime ^ q_exponent
  int64_t q_exponent = 0;
};

// The construction used for order n, or nullopt when n < 1 or no Sylvester/Paley product of that
// order exists (n > 2 not divisible by 4; 92, 116, 156, 172, 184, 188, 232, 236, ...).
// Cost: trial division, O(sqrt(n) log n).
std::optional<HadamardPlan> hadamard_plan(int64_t n);
bool hadamard_constructible(int64_t n);

// Human-readable construction of order n, e.g. "sylvester(1024)", "paley1(q=11)",
// "paley2(q=25=5^2)", "kron(paley2(q=13), sylvester(128))"; "none" when not constructible.
std::string hadamard_construction_name(int64_t n);

// H [n, n] with entries +-1 and H * H^T = n * I, following hadamard_plan(n); nullopt when not
// constructible. Throws ShapeError for n < 1. Memory: n^2 doubles.
std::optional<MatrixXdR> hadamard_matrix(int64_t n);

// Sylvester H [n, n], n a power of two: H(i, j) = (-1)^popcount(i & j) (symmetric; the matrix of
// the unnormalized fast Walsh-Hadamard transform). Throws ShapeError otherwise.
MatrixXdR sylvester_hadamard(int64_t n);

// Paley I [q+1, q+1] for a prime power q = 3 (mod 4): H = I + [[0, 1^T], [-1, Q]] with the
// Jacobsthal matrix Q(i, j) = chi(x_j - x_i) over GF(q) (chi the quadratic character, x_i the
// i-th field element; for prime q, x_i = i). Throws ConfigError for any other q.
MatrixXdR paley1_hadamard(int64_t q);

// Paley II [2(q+1), 2(q+1)] for a prime power q = 1 (mod 4): with S = [[0, 1^T], [1, Q]]
// (symmetric), every 0 of S becomes [[1, -1], [-1, -1]] and every +-1 becomes +-[[1, 1], [1, -1]].
// Throws ConfigError for any other q.
MatrixXdR paley2_hadamard(int64_t q);

// Kronecker product: kron(A, B)(i * rows(B) + k, j * cols(B) + l) = A(i, j) * B(k, l).
MatrixXdR kronecker_product(const MatrixXdR& a, const MatrixXdR& b);

// If q = p^k for a prime p, returns {p, k}; otherwise nullopt (q < 2 included).
std::optional<std::pair<int64_t, int64_t>> prime_power(int64_t q);

}  // namespace resq
