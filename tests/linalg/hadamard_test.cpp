// Tests of the Hadamard constructions: H * H^T == n * I exactly for every constructible order up
// to 256 (and larger ones by exact integer probes), the set of orders, and the named choices.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "resq/common/error.h"
#include "resq/linalg/hadamard.h"
#include "resq/linalg/random.h"

namespace resq {
namespace {

// Orders n <= 256, n % 4 == 0, with no Sylvester x Paley construction (they need Williamson-type
// or other constructions): the classical list.
const std::set<int64_t> kNotConstructibleMultiplesOf4 = {92, 116, 156, 172, 184, 188, 232, 236};

bool entries_are_pm1(const MatrixXdR& h) {
  return ((h.array() == 1.0) || (h.array() == -1.0)).all();
}

// H * H^T == n * I, compared exactly (integer arithmetic in double is exact here).
void expect_hadamard_exact(const MatrixXdR& h, int64_t n) {
  ASSERT_EQ(h.rows(), n);
  ASSERT_EQ(h.cols(), n);
  EXPECT_TRUE(entries_are_pm1(h)) << "n=" << n;
  const MatrixXdR gram = h * h.transpose();
  const MatrixXdR expected = MatrixXdR::Identity(n, n) * static_cast<double>(n);
  EXPECT_TRUE(gram == expected) << "n=" << n;
}

TEST(Hadamard, EveryConstructibleOrderUpTo256IsExact) {
  int constructible = 0;
  for (int64_t n = 1; n <= 256; ++n) {
    const bool expected = n <= 2 || (n % 4 == 0 && kNotConstructibleMultiplesOf4.count(n) == 0);
    ASSERT_EQ(hadamard_constructible(n), expected) << "n=" << n;
    const auto h = hadamard_matrix(n);
    ASSERT_EQ(h.has_value(), expected) << "n=" << n;
    if (!h) {
      EXPECT_EQ(hadamard_construction_name(n), "none");
      continue;
    }
    ++constructible;
    expect_hadamard_exact(*h, n);
    const auto plan = hadamard_plan(n);
    ASSERT_TRUE(plan.has_value());
    EXPECT_EQ(plan->pow2 * plan->block, n);
    EXPECT_EQ(plan->pow2 & (plan->pow2 - 1), 0);
  }
  EXPECT_EQ(constructible, 2 + 64 - 8);
}

TEST(Hadamard, ChosenConstructions) {
  EXPECT_EQ(hadamard_construction_name(1), "sylvester(1)");
  EXPECT_EQ(hadamard_construction_name(1024), "sylvester(1024)");
  EXPECT_EQ(hadamard_construction_name(12), "paley1(q=11)");
  EXPECT_EQ(hadamard_construction_name(20), "paley1(q=19)");
  EXPECT_EQ(hadamard_construction_name(24), "kron(paley1(q=11), sylvester(2))");
  EXPECT_EQ(hadamard_construction_name(28), "paley2(q=13)");
  EXPECT_EQ(hadamard_construction_name(52), "paley2(q=25=5^2)");
  EXPECT_EQ(hadamard_construction_name(76), "paley2(q=37)");
  EXPECT_EQ(hadamard_construction_name(100), "paley2(q=49=7^2)");
  EXPECT_EQ(hadamard_construction_name(148), "paley2(q=73)");
  EXPECT_EQ(hadamard_construction_name(896), "kron(paley2(q=13), sylvester(32))");
  EXPECT_EQ(hadamard_construction_name(3072), "kron(paley1(q=11), sylvester(256))");
  EXPECT_EQ(hadamard_construction_name(3584), "kron(paley2(q=13), sylvester(128))");
  EXPECT_EQ(hadamard_construction_name(5120), "kron(paley1(q=19), sylvester(256))");
  EXPECT_EQ(hadamard_construction_name(14336), "kron(paley2(q=13), sylvester(512))");
  // FFN sizes whose only constructions use larger Paley blocks.
  EXPECT_EQ(hadamard_construction_name(4864), "kron(paley2(q=37), sylvester(64))");
  EXPECT_EQ(hadamard_construction_name(18944), "kron(paley2(q=73), sylvester(128))");
  EXPECT_EQ(hadamard_construction_name(11008), "kron(paley1(q=343=7^3), sylvester(32))");
  for (int64_t n : {172, 38, 37, 43, 86, 6, 3}) {
    EXPECT_FALSE(hadamard_constructible(n)) << n;
    EXPECT_FALSE(hadamard_matrix(n).has_value()) << n;
    EXPECT_EQ(hadamard_construction_name(n), "none") << n;
  }
  const auto plan = hadamard_plan(3584);
  ASSERT_TRUE(plan.has_value());
  EXPECT_EQ(plan->pow2, 128);
  EXPECT_EQ(plan->block, 28);
  EXPECT_EQ(plan->kind, HadamardBlockKind::kPaley2);
  EXPECT_EQ(plan->q, 13);
  for (int64_t n : {64, 896, 1536, 2048, 3072, 3584, 4096, 5120, 8192, 128}) {
    EXPECT_TRUE(hadamard_constructible(n)) << "hidden size " << n;
  }
}

TEST(Hadamard, OrderAndNonPositiveSizes) {
  EXPECT_FALSE(hadamard_constructible(0));
  EXPECT_FALSE(hadamard_constructible(-4));
  EXPECT_FALSE(hadamard_plan(0).has_value());
  EXPECT_THROW(hadamard_matrix(0), ShapeError);
  EXPECT_THROW(hadamard_matrix(-8), ShapeError);
}

TEST(Hadamard, SylvesterMatchesPopcountFormula) {
  const MatrixXdR h = sylvester_hadamard(16);
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      int bits = 0;
      for (int v = i & j; v != 0; v >>= 1) bits += v & 1;
      EXPECT_EQ(h(i, j), bits % 2 ? -1.0 : 1.0);
    }
  }
  EXPECT_THROW(sylvester_hadamard(12), ShapeError);
  EXPECT_THROW(sylvester_hadamard(0), ShapeError);
}

TEST(Hadamard, PaleyOverPrimeAndPrimePowerFields) {
  // Paley I: H - I is skew-symmetric. Prime q and GF(27), GF(243), GF(343).
  for (int64_t q : {3, 7, 11, 19, 27, 43, 243, 343}) {
    const MatrixXdR h = paley1_hadamard(q);
    expect_hadamard_exact(h, q + 1);
    const MatrixXdR s = h - MatrixXdR::Identity(q + 1, q + 1);
    EXPECT_TRUE((s + s.transpose()).isZero(0.0)) << "q=" << q;
  }
  // Paley II: symmetric. Prime q and GF(9), GF(25), GF(49), GF(125).
  for (int64_t q : {5, 9, 13, 25, 37, 49, 125}) {
    const MatrixXdR h = paley2_hadamard(q);
    expect_hadamard_exact(h, 2 * (q + 1));
    EXPECT_TRUE(h == h.transpose()) << "q=" << q;
  }
  // Paley I over GF(27) and Paley II over GF(13) both have order 28 and are different matrices.
  EXPECT_FALSE(paley1_hadamard(27) == paley2_hadamard(13));
}

TEST(Hadamard, PaleyRejectsInvalidFields) {
  EXPECT_THROW(paley1_hadamard(13), ConfigError);  // 13 = 1 mod 4
  EXPECT_THROW(paley1_hadamard(15), ConfigError);  // not a prime power
  EXPECT_THROW(paley1_hadamard(1), ConfigError);
  EXPECT_THROW(paley2_hadamard(7), ConfigError);   // 7 = 3 mod 4
  EXPECT_THROW(paley2_hadamard(45), ConfigError);  // not a prime power
  EXPECT_THROW(paley2_hadamard(0), ConfigError);
}

TEST(Hadamard, PrimePower) {
  EXPECT_FALSE(prime_power(1).has_value());
  EXPECT_FALSE(prime_power(0).has_value());
  EXPECT_FALSE(prime_power(15).has_value());
  EXPECT_FALSE(prime_power(171).has_value());
  using PK = std::pair<int64_t, int64_t>;
  EXPECT_EQ(prime_power(2), PK(2, 1));
  EXPECT_EQ(prime_power(343), PK(7, 3));
  EXPECT_EQ(prime_power(4096), PK(2, 12));
  EXPECT_EQ(prime_power(5503), PK(5503, 1));
  EXPECT_EQ(prime_power(25), PK(5, 2));
}

TEST(Hadamard, KroneckerProduct) {
  MatrixXdR a(2, 3);
  a << 1, 2, 3, 4, 5, 6;
  MatrixXdR b(2, 1);
  b << 1, -1;
  MatrixXdR expected(4, 3);
  expected << 1, 2, 3, -1, -2, -3, 4, 5, 6, -4, -5, -6;
  EXPECT_TRUE(kronecker_product(a, b) == expected);
}

TEST(Hadamard, Order1024IsExact) {
  const auto h = hadamard_matrix(1024);
  ASSERT_TRUE(h.has_value());
  expect_hadamard_exact(*h, 1024);
}

TEST(Hadamard, LargeOrdersPassExactIntegerProbes) {
  // A full H * H^T is ~n^3 flops; instead H * (H^T * V) == n * V for random small-integer probes V,
  // exact in double (|entries| < 2^53), which a wrong H fails with overwhelming probability.
  Rng rng(17);
  for (int64_t n : {3584, 1792, 2 * 344}) {
    const auto h = hadamard_matrix(n);
    ASSERT_TRUE(h.has_value()) << n;
    EXPECT_TRUE(entries_are_pm1(*h)) << n;
    MatrixXdR probes(n, 4);
    for (int64_t i = 0; i < n; ++i) {
      for (int j = 0; j < 4; ++j) probes(i, j) = static_cast<double>(rng.next_u64() % 21) - 10.0;
    }
    const MatrixXdR round_trip = *h * (h->transpose() * probes);
    EXPECT_TRUE(round_trip == probes * static_cast<double>(n)) << n;
  }
}

}  // namespace
}  // namespace resq
