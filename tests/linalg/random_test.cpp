// Tests of the deterministic RNG: published SplitMix64 / xoshiro256** vectors, the draw
// contract of uniform/sign/normal, the libm-free log/sincos, and derived sub-streams.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "resq/linalg/random.h"

namespace resq {
namespace {

TEST(SplitMix64, MatchesReferenceOutputsForSeed1234567) {
  // Reference sequence of splitmix64.c (Vigna) seeded with 1234567.
  uint64_t state = 1234567;
  const uint64_t expected[] = {6457827717110365317ULL, 3203168211198807973ULL,
                               9817491932198370423ULL, 4593380528125082431ULL,
                               16408922859458223821ULL};
  for (uint64_t value : expected) EXPECT_EQ(splitmix64_next(state), value);
}

TEST(Rng, Xoshiro256StarStarMatchesReferenceFromState1234) {
  // Reference outputs of xoshiro256starstar.c from the state {1, 2, 3, 4}.
  Rng rng = Rng::from_state({1, 2, 3, 4});
  const uint64_t expected[] = {11520ULL,
                               0ULL,
                               1509978240ULL,
                               1215971899390074240ULL,
                               1216172134540287360ULL,
                               607988272756665600ULL,
                               16172922978634559625ULL,
                               8476171486693032832ULL,
                               10595114339597558777ULL,
                               2904607092377533576ULL};
  for (uint64_t value : expected) EXPECT_EQ(rng.next_u64(), value);
}

TEST(Rng, SeedingUsesFourSplitMixOutputs) {
  const Rng rng(1234567);
  const std::array<uint64_t, 4> expected = {6457827717110365317ULL, 3203168211198807973ULL,
                                            9817491932198370423ULL, 4593380528125082431ULL};
  EXPECT_EQ(rng.state(), expected);
}

TEST(Rng, UniformIsTop53BitsScaled) {
  Rng rng(42);
  Rng twin(42);
  for (int i = 0; i < 1000; ++i) {
    const double u = rng.uniform();
    const uint64_t raw = twin.next_u64();
    EXPECT_EQ(u, static_cast<double>(raw >> 11) / 9007199254740992.0);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(Rng, SignIsTopBit) {
  Rng rng(7);
  Rng twin(7);
  int plus = 0;
  for (int i = 0; i < 2000; ++i) {
    const double s = rng.sign();
    const uint64_t raw = twin.next_u64();
    EXPECT_EQ(s, (raw >> 63) ? -1.0 : 1.0);
    plus += s > 0;
  }
  // Binomial(2000, 1/2): sd ~22; both signs well represented.
  EXPECT_GT(plus, 900);
  EXPECT_LT(plus, 1100);
}

TEST(DeterministicMath, LogMatchesLibm) {
  Rng rng(3);
  EXPECT_EQ(detail::det_log(1.0), 0.0);
  std::vector<double> xs = {0x1.0p-53, 1e-300, 0.5, 0.70710678118654752, 0.7071067811865476,
                            0.999999999, 1.0 - 0x1.0p-53, 2.0, 10.0, 1e10};
  for (int i = 0; i < 20000; ++i) xs.push_back(1.0 - rng.uniform());
  for (double x : xs) {
    const double expected = std::log(x);
    // Within one ulp of glibc's (itself within one ulp of the exact value).
    const double ulp = std::nextafter(std::abs(expected), 1e308) - std::abs(expected);
    EXPECT_LE(std::abs(detail::det_log(x) - expected), ulp) << "x=" << x;
  }
}

TEST(DeterministicMath, SinCosMatchLibm) {
  const double two_pi = 6.283185307179586476925;
  double s = 0.0;
  double c = 0.0;
  detail::det_sincos_turns(0.0, &s, &c);
  EXPECT_EQ(s, 0.0);
  EXPECT_EQ(c, 1.0);
  detail::det_sincos_turns(0.25, &s, &c);
  EXPECT_EQ(s, 1.0);
  EXPECT_EQ(std::abs(c), 0.0);
  detail::det_sincos_turns(0.5, &s, &c);
  EXPECT_EQ(c, -1.0);
  Rng rng(5);
  std::vector<double> ts = {0.125, 0.375, 0.625, 0.875, 1.0 - 0x1.0p-53, 0x1.0p-53};
  for (int i = 0; i < 20000; ++i) ts.push_back(rng.uniform());
  for (double t : ts) {
    detail::det_sincos_turns(t, &s, &c);
    // 2*pi*t itself is rounded, so compare at the level of that rounding.
    EXPECT_NEAR(s, std::sin(two_pi * t), 2e-15) << "t=" << t;
    EXPECT_NEAR(c, std::cos(two_pi * t), 2e-15) << "t=" << t;
  }
}

TEST(Rng, NormalIsBoxMullerOfTwoUniforms) {
  const double two_pi = 6.283185307179586476925;
  Rng rng(11);
  Rng twin(11);
  for (int i = 0; i < 500; ++i) {
    const double z0 = rng.normal();
    const double z1 = rng.normal();
    const double u1 = 1.0 - twin.uniform();
    const double u2 = twin.uniform();
    const double radius = std::sqrt(-2.0 * std::log(u1));
    EXPECT_NEAR(z0, radius * std::cos(two_pi * u2), 1e-13);
    EXPECT_NEAR(z1, radius * std::sin(two_pi * u2), 1e-13);
  }
  // Both generators consumed the same number of words.
  EXPECT_EQ(rng.next_u64(), twin.next_u64());
}

TEST(Rng, NormalMomentsAreStandard) {
  Rng rng(2024);
  const int count = 200000;
  double sum = 0.0;
  double sum_sq = 0.0;
  double sum_4 = 0.0;
  for (int i = 0; i < count; ++i) {
    const double z = rng.normal();
    sum += z;
    sum_sq += z * z;
    sum_4 += z * z * z * z;
  }
  const double mean = sum / count;
  const double var = sum_sq / count - mean * mean;
  // ~4.5 standard errors: sd(mean) = 0.0022, sd(var) = 0.0032, sd(4th moment) ~0.022.
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(var, 1.0, 0.015);
  EXPECT_NEAR(sum_4 / count, 3.0, 0.1);
}

TEST(Rng, CopiesContinueIdentically) {
  Rng a(99);
  a.normal();  // leaves a spare normal in the state
  Rng b = a;
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.normal(), b.normal());
  EXPECT_EQ(a.next_u64(), b.next_u64());
}

TEST(Rng, DeriveIsReproducibleAndSeparatesKeys) {
  EXPECT_EQ(Rng::derive_seed(1, "rotation", {3, 4}), Rng::derive_seed(1, "rotation", {3, 4}));
  Rng a = Rng::derive(1, "rotation", {3, 4});
  Rng b = Rng::derive(1, "rotation", {3, 4});
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u64(), b.next_u64());
  EXPECT_EQ(Rng::derive(5, {1, 2}).next_u64(), Rng::derive(5, "", {1, 2}).next_u64());

  const std::vector<uint64_t> seeds = {
      Rng::derive_seed(1, "rotation", {3, 4}), Rng::derive_seed(2, "rotation", {3, 4}),
      Rng::derive_seed(1, "rotatioN", {3, 4}), Rng::derive_seed(1, "rotation", {4, 3}),
      Rng::derive_seed(1, "rotation", {3}),    Rng::derive_seed(1, "rotation", {3, 4, 0}),
      Rng::derive_seed(1, "ab", {}),           Rng::derive_seed(1, "a", {'b'}),
      Rng::derive_seed(1, "", {}),             Rng::derive_seed(1, "", {0}),
      Rng::derive_seed(0, "", {}),             Rng::derive_seed(1, "rotation", {-1, 4})};
  for (size_t i = 0; i < seeds.size(); ++i) {
    for (size_t j = i + 1; j < seeds.size(); ++j) EXPECT_NE(seeds[i], seeds[j]) << i << " " << j;
  }
}

TEST(Rng, DerivedStreamsAreUncorrelated) {
  // Neighbouring layer streams must not be shifted copies of each other.
  Rng a = Rng::derive(7, "layer", {0});
  Rng b = Rng::derive(7, "layer", {1});
  const int count = 20000;
  double sab = 0.0;
  double saa = 0.0;
  double sbb = 0.0;
  for (int i = 0; i < count; ++i) {
    const double x = a.normal();
    const double y = b.normal();
    sab += x * y;
    saa += x * x;
    sbb += y * y;
  }
  EXPECT_LT(std::abs(sab / std::sqrt(saa * sbb)), 0.035);  // sd 0.007
}

}  // namespace
}  // namespace resq
