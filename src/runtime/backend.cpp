// The backend choice of the packed runtime (backend.h): CPU or CUDA linears and KV-cache quantizers,
// whether CUDA can be used, and the CUDA runtime calls of the benchmarks. The one runtime file, with
// the CUDA sources, that is compiled differently with and without RESQ_HAVE_CUDA.
#include "resq/runtime/backend.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <utility>

#include "resq/common/error.h"
#include "resq/model/device.h"
#include "resq/runtime/packed_model.h"

#if defined(RESQ_HAVE_CUDA)
#include <cuda_runtime.h>

#include "resq/cuda/check.h"
#include "resq/cuda/device.h"
#include "resq/runtime/packed_cuda.h"
#endif

namespace resq {

namespace {

#if !defined(RESQ_HAVE_CUDA)
// The reason every CUDA request fails in a binary built without the kernels.
constexpr const char* kNoCudaBuild =
    "this resq binary was built without CUDA (RESQ_WITH_CUDA=OFF or no nvcc; rebuild with "
    "-DRESQ_WITH_CUDA=ON where nvcc is installed)";
#endif

// The UnsupportedError of a packed part asked for on a device no backend runs on.
[[noreturn]] void throw_no_backend(const char* what, const at::Device& device) {
  if (device.is_cuda()) throw UnsupportedError(std::string(what) + " on cuda: " + packed_cuda_unavailable_reason());
  throw UnsupportedError(std::string(what) + ": the packed runtime runs on cpu or cuda, not " + device.str());
}

}  // namespace

bool cuda_kernels_built() {
#if defined(RESQ_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

std::string packed_cuda_unavailable_reason() {
#if defined(RESQ_HAVE_CUDA)
  if (std::string why = torch_cuda_unavailable_reason(); !why.empty()) return why;
  const auto cc = gpu::current_compute_capability();
  if (cc.first < 8) {
    return "the CUDA integer kernels need compute capability >= 8.0 (sm_80); this device is sm_" +
           std::to_string(cc.first) + std::to_string(cc.second);
  }
  return "";
#else
  return kNoCudaBuild;
#endif
}

std::shared_ptr<Linear> make_packed_linear(format::PackedLinear packed, std::vector<int32_t> perm, float clip,
                                           std::shared_ptr<const OnlineHadamard> input_hadamard,
                                           const at::Device& device) {
  if (device.is_cpu()) {
    return std::make_shared<PackedCpuLinear>(std::move(packed), std::move(perm), clip, std::move(input_hadamard));
  }
#if defined(RESQ_HAVE_CUDA)
  // Re-strided and uploaded once; the host copy `packed` is dropped when this returns.
  if (device.is_cuda()) return std::make_shared<PackedCudaLinear>(packed, std::move(perm), clip, std::move(input_hadamard));
#endif
  throw_no_backend("packed linear", device);
}

std::shared_ptr<TensorTransform> make_packed_kv_cache_quant(int64_t head_dim, int64_t r_h, float clip,
                                                            const at::Device& device) {
  if (device.is_cpu()) return std::make_shared<PackedKvCacheQuant>(head_dim, r_h, clip);
#if defined(RESQ_HAVE_CUDA)
  if (device.is_cuda()) return std::make_shared<PackedCudaKvCacheQuant>(head_dim, r_h, clip);
#endif
  throw_no_backend("packed KV cache", device);
}

bool is_cuda_kv_cache_quant(const TensorTransform* t) {
#if defined(RESQ_HAVE_CUDA)
  return dynamic_cast<const PackedCudaKvCacheQuant*>(t) != nullptr;
#else
  (void)t;
  return false;
#endif
}

// ------------------------------------------------------------------ CUDA runtime calls

int cuda_device_index(const at::Device& device) {
#if defined(RESQ_HAVE_CUDA)
  if (!device.is_cuda()) return -1;
  if (device.has_index()) return device.index();
  int current = 0;
  RESQ_CUDA_CHECK(cudaGetDevice(&current));
  return current;
#else
  (void)device;
  return -1;
#endif
}

void cuda_set_device(int index) {
  if (index < 0) return;
#if defined(RESQ_HAVE_CUDA)
  RESQ_CUDA_CHECK(cudaSetDevice(index));
#else
  throw UnsupportedError(std::string("cuda_set_device: ") + kNoCudaBuild);
#endif
}

void synchronize_device(const at::Device& device) {
#if defined(RESQ_HAVE_CUDA)
  if (device.is_cuda()) RESQ_CUDA_CHECK(cudaDeviceSynchronize());
#else
  (void)device;
#endif
}

CudaDeviceFacts cuda_device_facts(int index) {
#if defined(RESQ_HAVE_CUDA)
  cudaDeviceProp prop{};
  RESQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  int clock_khz = 0, mem_khz = 0;
  CudaDeviceFacts f;
  RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, index));
  RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, index));
  RESQ_CUDA_CHECK(cudaRuntimeGetVersion(&f.cuda_runtime));
  f.name = prop.name;
  f.sm_major = prop.major;
  f.sm_minor = prop.minor;
  f.clock_mhz = clock_khz / 1000;
  f.mem_clock_mhz = mem_khz / 1000;
  f.memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  return f;
#else
  (void)index;
  throw UnsupportedError(std::string("cuda_device_facts: ") + kNoCudaBuild);
#endif
}

double cuda_stream0_median_us(int warmup, int repeats, const std::function<void()>& fn) {
#if defined(RESQ_HAVE_CUDA)
  return gpu::median_event_time_us(warmup, repeats, nullptr, 0, fn);
#else
  (void)warmup;
  (void)repeats;
  (void)fn;
  throw UnsupportedError(std::string("cuda_stream0_median_us: ") + kNoCudaBuild);
#endif
}

}  // namespace resq
