// Helpers shared by the linalg tests.
#pragma once

#include "resq/linalg/random.h"
#include "resq/linalg/types.h"

namespace resq::test {

// [rows, cols] with i.i.d. standard normal entries from a seeded, platform-independent stream.
inline MatrixXdR gaussian_matrix(int64_t rows, int64_t cols, uint64_t seed) {
  Rng rng(seed);
  MatrixXdR m(rows, cols);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) m(i, j) = rng.normal();
  }
  return m;
}

}  // namespace resq::test
