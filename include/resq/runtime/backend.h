// The one place that picks the packed runtime's backend for a device — the CPU integer kernels or the
// CUDA kernels — and says whether CUDA can be used here and why not; also the few CUDA runtime calls
// the benchmarks make. Apart from the CUDA sources themselves, only its .cpp looks at RESQ_HAVE_CUDA,
// so every caller compiles the same way with or without the CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "resq/format/packed_linear.h"
#include "resq/linalg/rotation.h"
#include "resq/model/decoder.h"
#include "resq/model/linear.h"

namespace resq {

// True when this binary was built with the CUDA kernels (RESQ_WITH_CUDA=ON and nvcc found).
bool cuda_kernels_built();

// Empty when the packed runtime can run on CUDA here; otherwise why not, as a clause to put in an
// error message: this binary was built without CUDA, this libtorch has no CUDA, no device is
// visible, or the device is older than sm_80 (used by load_packed_model, the benchmarks and tests).
std::string packed_cuda_unavailable_reason();

// The packed linear of one site (the arguments of PackedCpuLinear, packed_model.h) on `device`:
// PackedCpuLinear on cpu, PackedCudaLinear on cuda (re-strided to the GPU layout and uploaded once;
// the host copy is dropped). Throws UnsupportedError for cuda in a binary without CUDA and for any other device;
// callers check packed_cuda_unavailable_reason() first to say it in their own terms.
std::shared_ptr<Linear> make_packed_linear(format::PackedLinear packed, std::vector<int32_t> perm, float clip,
                                           std::shared_ptr<const OnlineHadamard> input_hadamard,
                                           const at::Device& device);

// The packed KV-cache quantizer of a layer on `device`: PackedKvCacheQuant (cpu) or
// PackedCudaKvCacheQuant (cuda); the last r_h of head_dim channels are 8-bit. Throws like
// make_packed_linear.
std::shared_ptr<TensorTransform> make_packed_kv_cache_quant(int64_t head_dim, int64_t r_h, float clip,
                                                            const at::Device& device);

// True when `t` is the CUDA packed KV-cache quantizer (so the layer can use the paged CUDA cache,
// kv_caches.h); always false in a binary without CUDA.
bool is_cuda_kv_cache_quant(const TensorTransform* t);

// ------------------------------------------------------------------ CUDA runtime calls (benchmarks)

// The CUDA device `device` names (its index, or the current device when it has none); -1 for a
// non-cuda device or in a binary without CUDA.
int cuda_device_index(const at::Device& device);
// Makes `index` the calling thread's current CUDA device (PackedCudaLinear uploads there); -1 does
// nothing.
void cuda_set_device(int index);
// Waits until the device has finished its work (kernels are asynchronous); nothing on the CPU or in
// a binary without CUDA.
void synchronize_device(const at::Device& device);

// What a benchmark report says about a CUDA device.
struct CudaDeviceFacts {
  std::string name;
  int sm_major = 0, sm_minor = 0;
  int clock_mhz = 0, mem_clock_mhz = 0;
  int64_t memory_bytes = 0;
  int cuda_runtime = 0;  // cudaRuntimeGetVersion
  std::string sm() const { return "sm_" + std::to_string(sm_major) + std::to_string(sm_minor); }
};
// Throws UnsupportedError in a binary without CUDA, resq::Error on a CUDA error.
CudaDeviceFacts cuda_device_facts(int index);

// Median microseconds of fn() timed with CUDA events on stream 0 (torch's default current stream,
// where both the torch ops and the packed kernels run: packed_cuda.h), after `warmup` untimed calls.
// No L2 flush. Throws UnsupportedError in a binary without CUDA.
double cuda_stream0_median_us(int warmup, int repeats, const std::function<void()>& fn);

}  // namespace resq
