// Sylvester and Paley (I and II, over prime and prime-power fields) Hadamard constructions and
// the search for the cheapest Kronecker split of an order n = 2^a * m.
#include "resq/linalg/hadamard.h"

#include <vector>

#include "resq/common/error.h"

namespace resq {
namespace {

bool is_power_of_two(int64_t n) { return n >= 1 && (n & (n - 1)) == 0; }

int parity(uint64_t v) {
  v ^= v >> 32;
  v ^= v >> 16;
  v ^= v >> 8;
  v ^= v >> 4;
  v ^= v >> 2;
  v ^= v >> 1;
  return static_cast<int>(v & 1);
}

// GF(p^k), elements encoded as integers in [0, q): digit i (base p) is the coefficient of x^i.
// Arithmetic modulo the first monic irreducible polynomial of degree k in lexicographic order.
class GaloisField {
 public:
  GaloisField(int64_t p, int64_t k) : p_(p), k_(k), q_(1) {
    for (int64_t i = 0; i < k; ++i) q_ *= p;
    if (k_ > 1) modulus_ = find_irreducible();
  }

  int64_t order() const { return q_; }

  int64_t sub(int64_t a, int64_t b) const {
    if (k_ == 1) return ((a - b) % p_ + p_) % p_;
    int64_t out = 0;
    int64_t scale = 1;
    for (int64_t i = 0; i < k_; ++i) {
      const int64_t da = a % p_;
      const int64_t db = b % p_;
      a /= p_;
      b /= p_;
      out += ((da - db + p_) % p_) * scale;
      scale *= p_;
    }
    return out;
  }

  int64_t mul(int64_t a, int64_t b) const {
    if (k_ == 1) return (a * b) % p_;
    const std::vector<int64_t> da = digits(a);
    const std::vector<int64_t> db = digits(b);
    std::vector<int64_t> prod(static_cast<size_t>(2 * k_ - 1), 0);
    for (int64_t i = 0; i < k_; ++i) {
      for (int64_t j = 0; j < k_; ++j) prod[i + j] = (prod[i + j] + da[i] * db[j]) % p_;
    }
    reduce(prod, modulus_);
    int64_t out = 0;
    for (int64_t i = k_ - 1; i >= 0; --i) out = out * p_ + prod[i];
    return out;
  }

  // chi[x] = 0 for x = 0, +1 for a nonzero square, -1 otherwise.
  std::vector<int> quadratic_character() const {
    std::vector<int> chi(static_cast<size_t>(q_), -1);
    chi[0] = 0;
    for (int64_t x = 1; x < q_; ++x) chi[static_cast<size_t>(mul(x, x))] = 1;
    return chi;
  }

 private:
  std::vector<int64_t> digits(int64_t a) const {
    std::vector<int64_t> d(static_cast<size_t>(k_), 0);
    for (int64_t i = 0; i < k_; ++i) {
      d[i] = a % p_;
      a /= p_;
    }
    return d;
  }

  // Reduces poly (coefficients low to high) modulo the monic `mod` (size deg+1) in place; the
  // result occupies the first deg coefficients.
  void reduce(std::vector<int64_t>& poly, const std::vector<int64_t>& mod) const {
    const int64_t deg = static_cast<int64_t>(mod.size()) - 1;
    for (int64_t i = static_cast<int64_t>(poly.size()) - 1; i >= deg; --i) {
      const int64_t lead = poly[i] % p_;
      if (lead == 0) continue;
      for (int64_t j = 0; j <= deg; ++j) {
        poly[i - deg + j] = ((poly[i - deg + j] - lead * mod[j]) % p_ + p_) % p_;
      }
    }
  }

  // Monic polynomial of degree `deg` whose lower coefficients are the base-p digits of `code`.
  std::vector<int64_t> monic(int64_t deg, int64_t code) const {
    std::vector<int64_t> poly(static_cast<size_t>(deg + 1), 0);
    for (int64_t i = 0; i < deg; ++i) {
      poly[i] = code % p_;
      code /= p_;
    }
    poly[deg] = 1;
    return poly;
  }

  bool divides(const std::vector<int64_t>& divisor, std::vector<int64_t> poly) const {
    reduce(poly, divisor);
    for (size_t i = 0; i + 1 < divisor.size(); ++i) {
      if (poly[i] % p_ != 0) return false;
    }
    return true;
  }

  std::vector<int64_t> find_irreducible() const {
    for (int64_t code = 1; code < q_; ++code) {
      std::vector<int64_t> f = monic(k_, code);
      if (f[0] == 0) continue;  // divisible by x
      bool irreducible = true;
      for (int64_t d = 1; d <= k_ / 2 && irreducible; ++d) {
        int64_t count = 1;
        for (int64_t i = 0; i < d; ++i) count *= p_;
        for (int64_t g = 0; g < count && irreducible; ++g) {
          if (divides(monic(d, g), f)) irreducible = false;
        }
      }
      if (irreducible) return f;
    }
    // Irreducible polynomials of every degree exist over every finite field.
    throw Error("GF(" + std::to_string(p_) + "^" + std::to_string(k_) +
                "): no irreducible polynomial found (internal error)");
  }

  int64_t p_;
  int64_t k_;
  int64_t q_;
  std::vector<int64_t> modulus_;
};

// Jacobsthal matrix Q [q, q] over GF(q): Q(i, j) = chi(x_j - x_i).
std::vector<int> jacobsthal(int64_t p, int64_t k) {
  const GaloisField field(p, k);
  const int64_t q = field.order();
  const std::vector<int> chi = field.quadratic_character();
  std::vector<int> jac(static_cast<size_t>(q * q));
  for (int64_t i = 0; i < q; ++i) {
    for (int64_t j = 0; j < q; ++j) jac[i * q + j] = chi[static_cast<size_t>(field.sub(j, i))];
  }
  return jac;
}

// Paley I applies to m = q + 1, q = 3 mod 4; Paley II to m = 2(q + 1), q = 1 mod 4.
std::optional<HadamardPlan> paley_plan_for_block(int64_t m) {
  std::optional<HadamardPlan> best;
  auto consider = [&](HadamardBlockKind kind, int64_t q) {
    const auto pk = prime_power(q);
    if (!pk) return;
    const int64_t residue = kind == HadamardBlockKind::kPaley1 ? 3 : 1;
    if (q % 4 != residue) return;
    HadamardPlan plan;
    plan.block = m;
    plan.kind = kind;
    plan.q = q;
    plan.q_prime = pk->first;
    plan.q_exponent = pk->second;
    // Prime fields first (simpler arithmetic, the classic tables), then Paley I before II.
    if (!best || (best->q_exponent > 1 && plan.q_exponent == 1)) best = plan;
  };
  consider(HadamardBlockKind::kPaley1, m - 1);
  if (m % 2 == 0) consider(HadamardBlockKind::kPaley2, m / 2 - 1);
  return best;
}

std::string paley_name(const HadamardPlan& plan) {
  std::string name = plan.kind == HadamardBlockKind::kPaley1 ? "paley1(q=" : "paley2(q=";
  name += std::to_string(plan.q);
  if (plan.q_exponent > 1) {
    name += "=" + std::to_string(plan.q_prime) + "^" + std::to_string(plan.q_exponent);
  }
  return name + ")";
}

}  // namespace

std::optional<std::pair<int64_t, int64_t>> prime_power(int64_t q) {
  if (q < 2) return std::nullopt;
  int64_t p = q;
  for (int64_t d = 2; d <= q / d; ++d) {
    if (q % d == 0) {
      p = d;
      break;
    }
  }
  int64_t k = 0;
  int64_t rest = q;
  while (rest % p == 0) {
    rest /= p;
    ++k;
  }
  if (rest != 1) return std::nullopt;
  return std::make_pair(p, k);
}

std::optional<HadamardPlan> hadamard_plan(int64_t n) {
  if (n < 1) return std::nullopt;
  int64_t max_pow2 = 1;
  while (n % (max_pow2 * 2) == 0) max_pow2 *= 2;
  // Smallest block first: walk pow2 from the largest power of two dividing n downwards.
  for (int64_t pow2 = max_pow2; pow2 >= 1; pow2 /= 2) {
    const int64_t m = n / pow2;
    if (m == 1) {
      HadamardPlan plan;
      plan.n = n;
      plan.pow2 = pow2;
      return plan;
    }
    if (m % 4 != 0 && m > 2) continue;  // Hadamard orders above 2 are multiples of 4
    if (auto plan = paley_plan_for_block(m)) {
      plan->n = n;
      plan->pow2 = pow2;
      return plan;
    }
  }
  return std::nullopt;
}

bool hadamard_constructible(int64_t n) { return hadamard_plan(n).has_value(); }

std::string hadamard_construction_name(int64_t n) {
  const auto plan = hadamard_plan(n);
  if (!plan) return "none";
  const std::string sylvester = "sylvester(" + std::to_string(plan->pow2) + ")";
  if (plan->kind == HadamardBlockKind::kNone) return sylvester;
  if (plan->pow2 == 1) return paley_name(*plan);
  return "kron(" + paley_name(*plan) + ", " + sylvester + ")";
}

MatrixXdR sylvester_hadamard(int64_t n) {
  RESQ_CHECK_OR_THROW(is_power_of_two(n), ShapeError,
                      "sylvester_hadamard: order " + std::to_string(n) +
                          " is not a power of two");
  MatrixXdR h(n, n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      h(i, j) = parity(static_cast<uint64_t>(i & j)) ? -1.0 : 1.0;
    }
  }
  return h;
}

MatrixXdR paley1_hadamard(int64_t q) {
  const auto pk = prime_power(q);
  RESQ_CHECK_OR_THROW(pk && q % 4 == 3, ConfigError,
                      "paley1_hadamard: q = " + std::to_string(q) +
                          " must be a prime power with q = 3 (mod 4)");
  const std::vector<int> jac = jacobsthal(pk->first, pk->second);
  const int64_t m = q + 1;
  MatrixXdR h(m, m);
  h(0, 0) = 1.0;
  for (int64_t j = 1; j < m; ++j) h(0, j) = 1.0;
  for (int64_t i = 1; i < m; ++i) {
    h(i, 0) = -1.0;
    for (int64_t j = 1; j < m; ++j) {
      h(i, j) = i == j ? 1.0 : static_cast<double>(jac[(i - 1) * q + (j - 1)]);
    }
  }
  return h;
}

MatrixXdR paley2_hadamard(int64_t q) {
  const auto pk = prime_power(q);
  RESQ_CHECK_OR_THROW(pk && q % 4 == 1, ConfigError,
                      "paley2_hadamard: q = " + std::to_string(q) +
                          " must be a prime power with q = 1 (mod 4)");
  const std::vector<int> jac = jacobsthal(pk->first, pk->second);
  const int64_t s_order = q + 1;
  // S = [[0, 1^T], [1, Q]], symmetric with zero diagonal.
  auto s_entry = [&](int64_t i, int64_t j) -> int {
    if (i == j) return 0;
    if (i == 0 || j == 0) return 1;
    return jac[(i - 1) * q + (j - 1)];
  };
  MatrixXdR h(2 * s_order, 2 * s_order);
  for (int64_t i = 0; i < s_order; ++i) {
    for (int64_t j = 0; j < s_order; ++j) {
      const int s = s_entry(i, j);
      if (s == 0) {
        h(2 * i, 2 * j) = 1.0;
        h(2 * i, 2 * j + 1) = -1.0;
        h(2 * i + 1, 2 * j) = -1.0;
        h(2 * i + 1, 2 * j + 1) = -1.0;
      } else {
        h(2 * i, 2 * j) = s;
        h(2 * i, 2 * j + 1) = s;
        h(2 * i + 1, 2 * j) = s;
        h(2 * i + 1, 2 * j + 1) = -s;
      }
    }
  }
  return h;
}

MatrixXdR kronecker_product(const MatrixXdR& a, const MatrixXdR& b) {
  MatrixXdR out(a.rows() * b.rows(), a.cols() * b.cols());
  for (Eigen::Index i = 0; i < a.rows(); ++i) {
    for (Eigen::Index j = 0; j < a.cols(); ++j) {
      out.block(i * b.rows(), j * b.cols(), b.rows(), b.cols()) = a(i, j) * b;
    }
  }
  return out;
}

std::optional<MatrixXdR> hadamard_matrix(int64_t n) {
  RESQ_CHECK_OR_THROW(n >= 1, ShapeError,
                      "hadamard_matrix: order must be >= 1, got " + std::to_string(n));
  const auto plan = hadamard_plan(n);
  if (!plan) return std::nullopt;
  const MatrixXdR sylvester = sylvester_hadamard(plan->pow2);
  switch (plan->kind) {
    case HadamardBlockKind::kNone:
      return sylvester;
    case HadamardBlockKind::kPaley1:
      return kronecker_product(paley1_hadamard(plan->q), sylvester);
    case HadamardBlockKind::kPaley2:
      return kronecker_product(paley2_hadamard(plan->q), sylvester);
  }
  return std::nullopt;
}

}  // namespace resq
