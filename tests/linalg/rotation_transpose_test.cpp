// apply_online_hadamard_transpose (x <- x T^T): against the dense transpose of online_hadamard_dense,
// and as the inverse of apply_online_hadamard (what `resq export` relies on to fold U_D back).
#include <gtest/gtest.h>

#include <vector>

#include "linalg/linalg_test_util.h"
#include "resq/common/error.h"
#include "resq/linalg/random.h"
#include "resq/linalg/rotation.h"

namespace resq {
namespace {

TEST(OnlineHadamardTranspose, MatchesTheDenseTransposeAndInvertsTheTransform) {
  // Power of two, a Paley block, and odd rests with a random orthogonal block (172 = 43 x 4).
  for (int64_t n : {16, 12, 20, 172, 96}) {
    Rng rng(static_cast<uint64_t>(n));
    const OnlineHadamard t = make_online_hadamard(n, rng, /*random_signs=*/true);
    const int64_t rows = 5;
    const MatrixXdR x = test::gaussian_matrix(rows, n, 11 + n);
    const MatrixXdR want = x * online_hadamard_dense(t).transpose();
    std::vector<double> got(x.data(), x.data() + x.size());
    apply_online_hadamard_transpose(t, got.data(), rows);
    for (int64_t i = 0; i < rows * n; ++i) ASSERT_NEAR(got[i], want.data()[i], 1e-12) << "n " << n << " entry " << i;
    // x T T^T = x.
    std::vector<double> round(x.data(), x.data() + x.size());
    apply_online_hadamard(t, round.data(), rows);
    apply_online_hadamard_transpose(t, round.data(), rows);
    for (int64_t i = 0; i < rows * n; ++i) ASSERT_NEAR(round[i], x.data()[i], 1e-12) << "n " << n << " entry " << i;
  }
}

TEST(OnlineHadamardTranspose, RejectsAnInconsistentTransform) {
  Rng rng(3);
  OnlineHadamard t = make_online_hadamard(12, rng, true);
  t.signs.pop_back();
  std::vector<double> x(12, 1.0);
  EXPECT_THROW(apply_online_hadamard_transpose(t, x.data(), 1), ShapeError);
}

}  // namespace
}  // namespace resq
