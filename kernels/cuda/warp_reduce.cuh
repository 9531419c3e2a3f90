// Warp-level reductions shared by the CUDA kernels (device code only).
#pragma once

namespace resq::gpu {

// In-warp min/max of the two parts' activation ranges, v = {min4, max4, min8, max8}: after the call
// every lane holds the warp's result. Exact in any order (min/max), so every kernel that reduces
// this way gets the same activation scales as the CPU reference.
__device__ __forceinline__ void warp_min_max4(float (&v)[4]) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    v[0] = fminf(v[0], __shfl_xor_sync(0xFFFFFFFFu, v[0], off));
    v[1] = fmaxf(v[1], __shfl_xor_sync(0xFFFFFFFFu, v[1], off));
    v[2] = fminf(v[2], __shfl_xor_sync(0xFFFFFFFFu, v[2], off));
    v[3] = fmaxf(v[3], __shfl_xor_sync(0xFFFFFFFFu, v[3], off));
  }
}

}  // namespace resq::gpu
