// Header-only in-place Walsh-Hadamard butterfly on one contiguous vector: plain C++ with no Eigen
// and no allocation, so a CUDA kernel can call it per row/chunk (it is __host__ __device__ there).
#pragma once

#include <cstdint>

#include "resq/common/host_device.h"

namespace resq {

// x [n] <- x [n] * S_n, S_n the Sylvester matrix S(i, j) = (-1)^popcount(i & j) (symmetric),
// UNNORMALIZED: applying it twice multiplies x by n. n must be a power of two (not checked here).
// log2(n) passes of n/2 butterflies (a, b) -> (a + b, a - b).
template <typename T>
RESQ_HOST_DEVICE inline void fwht_butterfly(T* x, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      T* lo = x + i;
      T* hi = x + i + h;
      for (int64_t j = 0; j < h; ++j) {
        const T a = lo[j];
        const T b = hi[j];
        lo[j] = a + b;
        hi[j] = a - b;
      }
    }
  }
}

}  // namespace resq
