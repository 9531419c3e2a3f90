// RESQ_CUDA_CHECK / RESQ_CUDA_CHECK_LAUNCH: every CUDA runtime and cuBLAS(Lt) call is checked and a
// failure throws resq::CudaError naming the call text, file:line and the driver's message.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "resq/common/error.h"

namespace resq {

// A CUDA runtime or cuBLAS call failed (no device, out of memory, launch failure, ...).
class CudaError : public Error {
 public:
  using Error::Error;
};

namespace cuda_detail {

[[noreturn]] inline void throw_cuda_error(const std::string& what, const char* expr,
                                          const char* file, int line) {
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                  what);
}

inline void check(cudaError_t status, const char* expr, const char* file, int line) {
  if (status == cudaSuccess) return;
  throw_cuda_error(std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")",
                   expr, file, line);
}

// cublasGetStatusName lives in libcublas, which resq does not link (only cublasLt): own table.
inline const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cublasStatus_t";
  }
}

inline void check(cublasStatus_t status, const char* expr, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw_cuda_error(std::string(cublas_status_name(status)) + " (" +
                       std::to_string(static_cast<int>(status)) + ")",
                   expr, file, line);
}

}  // namespace cuda_detail
}  // namespace resq

// Checks a cudaError_t or cublasStatus_t expression; throws resq::CudaError on failure.
#define RESQ_CUDA_CHECK(expr) ::resq::cuda_detail::check((expr), #expr, __FILE__, __LINE__)

// Checks the launch just made (<<<...>>> returns nothing): picks up the launch error, if any,
// without synchronizing (asynchronous execution errors surface at the next checked call).
#define RESQ_CUDA_CHECK_LAUNCH(kernel_name) \
  ::resq::cuda_detail::check(cudaGetLastError(), "launch of " kernel_name, __FILE__, __LINE__)
