// Host helpers around the CUDA runtime for resq's kernels, tests and benchmark: device presence and
// compute-capability checks, and a minimal owning device buffer (raw cudaMalloc, no torch).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "resq/common/error.h"
#include "resq/cuda/check.h"

namespace resq::gpu {

// Number of CUDA devices; 0 when there is none or no usable driver (never throws).
inline int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device / no driver" error
    return 0;
  }
  return n;
}

// Compute capability of the current device.
inline std::pair<int, int> current_compute_capability() {
  int dev = 0;
  RESQ_CUDA_CHECK(cudaGetDevice(&dev));
  int major = 0, minor = 0;
  RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  return {major, minor};
}

// Throws UnsupportedError naming `what` unless the current device is sm_80 or newer (the kernels
// use cp.async, ldmatrix and integer mma.sync shapes introduced with Ampere).
inline void require_sm80(const char* what) {
  const auto cc = current_compute_capability();
  if (cc.first < 8) {
    throw UnsupportedError(std::string(what) + ": needs a GPU of compute capability >= 8.0 (sm_80, "
                           "Ampere or newer); this device is sm_" + std::to_string(cc.first) +
                           std::to_string(cc.second));
  }
}

// Throws UnsupportedError when `status` (from cudaFuncGetAttributes on a kernel) says that the
// binary has no image of the kernel for this device.
inline void require_kernel_image(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  (void)cudaGetLastError();
  const auto cc = current_compute_capability();
  if (status == cudaErrorNoKernelImageForDevice || status == cudaErrorInvalidDeviceFunction) {
    throw UnsupportedError(std::string(what) + ": this build has no kernel for sm_" +
                           std::to_string(cc.first) + std::to_string(cc.second) +
                           " (built for CMAKE_CUDA_ARCHITECTURES; rebuild with this architecture)");
  }
  RESQ_CUDA_CHECK(status);
}

// Owning device allocation of n elements of T (uninitialized). Move-only.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n > 0) RESQ_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  T* get() const { return p_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& host) {
    if (host.size() != n_) throw ShapeError("DeviceBuffer::upload: size mismatch");
    if (n_ > 0) RESQ_CUDA_CHECK(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    if (n_ > 0) RESQ_CUDA_CHECK(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  void release() {
    if (p_) cudaFree(p_);  // errors at teardown are ignored on purpose (destructor)
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

// Times fn() with CUDA events on `stream`: `warmup` untimed calls (then a device sync), then
// `repeats` timed calls (at least one), each preceded (untimed) by a write over `flush` when given so
// that no operand is served from L2. Returns the median in microseconds. Shared by the GEMM and the
// decoder-layer benchmarks.
inline double median_event_time_us(int warmup, int repeats, DeviceBuffer<uint8_t>* flush, cudaStream_t stream,
                                   const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  RESQ_CUDA_CHECK(cudaDeviceSynchronize());
  cudaEvent_t a = nullptr, b = nullptr;
  RESQ_CUDA_CHECK(cudaEventCreate(&a));
  const cudaError_t created_b = cudaEventCreate(&b);
  if (created_b != cudaSuccess) {
    cudaEventDestroy(a);
    RESQ_CUDA_CHECK(created_b);
  }
  std::vector<double> t;
  try {
    for (int i = 0; i < std::max(repeats, 1); ++i) {
      if (flush && flush->size() > 0) {
        RESQ_CUDA_CHECK(cudaMemsetAsync(flush->get(), i & 0xFF, flush->size(), stream));
      }
      RESQ_CUDA_CHECK(cudaEventRecord(a, stream));
      fn();
      RESQ_CUDA_CHECK(cudaEventRecord(b, stream));
      RESQ_CUDA_CHECK(cudaEventSynchronize(b));
      float ms = 0.0f;
      RESQ_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      t.push_back(1000.0 * ms);
    }
  } catch (...) {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    throw;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace resq::gpu
