// RESQ_HOST_DEVICE marks functions shared by host C++ and CUDA device code (layout/index math,
// scalar formulas), so that the CPU tests exercise exactly what the kernels run.
#pragma once

#if defined(__CUDACC__)
#define RESQ_HOST_DEVICE __host__ __device__
#else
#define RESQ_HOST_DEVICE
#endif
