// The compute device of the torch code paths: parsing --device (cpu | cuda | cuda:N | auto) against
// what this libtorch and machine offer, the device's name, and its memory (used / total / peak) for
// progress lines and reports. The one owner of "which device, and why not".
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace resq {

// `value` of flag `flag` -> a device: "cpu"; "cuda" / "cuda:N" (UnsupportedError naming the flag
// when this libtorch has no CUDA or the index is not among the visible devices, with how many
// there are); "auto" = cuda:0 when usable, else cpu. Anything else: UsageError naming the flag.
at::Device resolve_device(const std::string& flag, const std::string& value);

// Why torch cannot run on CUDA here ("" when it can): a CPU-only libtorch / no usable driver, or no
// visible device. The one place that says so (resolve_device, runtime/backend's packed-CUDA reason).
std::string torch_cuda_unavailable_reason();

// Whether "auto" would pick a CUDA device here (torch_cuda_unavailable_reason() is empty).
bool cuda_usable();

// "cpu" or "cuda:0 (NVIDIA H200, 139.8 GiB)"; the name only where the CUDA runtime is linked.
std::string device_description(const at::Device& device);

// Memory of a CUDA device as the driver reports it (cudaMemGetInfo: every process's allocations,
// torch's cached blocks and the context included). known = false on the CPU and in binaries built
// without the CUDA runtime (RESQ_WITH_CUDA=OFF).
struct DeviceMemory {
  bool known = false;
  double used_gib = 0.0;
  double total_gib = 0.0;
  double peak_used_gib = 0.0;  // the largest used_gib any device_memory() call of this process saw
};

// Samples the device's memory now (and updates the peak). torch's caching allocator keeps what it
// reserved until empty_cache, so "used" only falls when torch frees its cache: the sampled peak is
// the peak of what the process reserved, up to allocations made and freed between two samples
// beyond the cache (none in the quantization pipeline, which reuses its buffers).
DeviceMemory device_memory(const at::Device& device);

// "GPU 12.3 / 139.8 GiB (peak 14.0)" for a CUDA device whose memory is known, else "".
std::string device_memory_note(const at::Device& device);

// Whether `e` (a c10::Error or std::exception from torch) is torch's out-of-memory error.
bool is_out_of_memory(const std::exception& e);

}  // namespace resq
