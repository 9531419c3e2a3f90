// The compute device of the torch code paths (resq/model/device.h): --device parsing, the device's
// name and memory. The CUDA runtime is asked only in binaries that link it (RESQ_HAVE_CUDA).
#include "resq/model/device.h"

#include <ATen/Context.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

#include "resq/common/error.h"
#include "resq/common/log.h"

#if defined(RESQ_HAVE_CUDA)
#include <cuda_runtime.h>
#endif

namespace resq {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

int visible_cuda_devices() { return at::hasCUDA() ? static_cast<int>(at::getNumGPUs()) : 0; }

// The largest "used" any sample saw, per process (one device is used at a time; indexed anyway).
std::atomic<double> g_peak_used_gib[16];

}  // namespace

std::string torch_cuda_unavailable_reason() {
  if (!at::hasCUDA()) {
    return "this libtorch has no CUDA (at::hasCUDA() is false: a CPU-only build, or no usable NVIDIA driver); "
           "build against the CUDA libtorch of an installed PyTorch (scripts/gpu/run.sh does)";
  }
  if (visible_cuda_devices() == 0) {
    return std::string("no CUDA device is visible (CUDA_VISIBLE_DEVICES='") +
           (std::getenv("CUDA_VISIBLE_DEVICES") ? std::getenv("CUDA_VISIBLE_DEVICES") : "") + "')";
  }
  return "";
}

bool cuda_usable() { return torch_cuda_unavailable_reason().empty(); }

at::Device resolve_device(const std::string& flag, const std::string& value) {
  if (value == "cpu") return at::Device(at::kCPU);
  if (value == "auto") return cuda_usable() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  int index = 0;
  if (value == "cuda") {
    index = 0;
  } else if (value.rfind("cuda:", 0) == 0 && value.size() > 5 && value.size() <= 7 &&
             value.find_first_not_of("0123456789", 5) == std::string::npos) {
    index = std::atoi(value.c_str() + 5);
  } else {
    throw UsageError(flag + ": expected cpu, cuda, cuda:N or auto, got '" + value + "'");
  }
  const std::string why = torch_cuda_unavailable_reason();
  if (!why.empty()) throw UnsupportedError(flag + " " + value + ": " + why + ", or use " + flag + " cpu");
  const int n = visible_cuda_devices();
  if (index >= n) {
    throw UnsupportedError(flag + " " + value + ": CUDA device " + std::to_string(index) + " does not exist; " +
                           std::to_string(n) + " device(s) visible (CUDA_VISIBLE_DEVICES='" +
                           (std::getenv("CUDA_VISIBLE_DEVICES") ? std::getenv("CUDA_VISIBLE_DEVICES") : "") + "')");
  }
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
}

std::string device_description(const at::Device& device) {
  std::string s = device.str();
#if defined(RESQ_HAVE_CUDA)
  if (device.is_cuda()) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device.has_index() ? device.index() : 0) == cudaSuccess) {
      s += strprintf(" (%s, %.1f GiB)", prop.name, static_cast<double>(prop.totalGlobalMem) / kGiB);
    } else {
      (void)cudaGetLastError();
    }
  }
#endif
  return s;
}

DeviceMemory device_memory(const at::Device& device) {
  DeviceMemory m;
#if defined(RESQ_HAVE_CUDA)
  if (!device.is_cuda()) return m;
  const int index = device.has_index() ? device.index() : 0;
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) {
    (void)cudaGetLastError();
    return m;
  }
  size_t free_bytes = 0, total_bytes = 0;
  const bool ok = cudaSetDevice(index) == cudaSuccess && cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess;
  (void)cudaSetDevice(previous);
  if (!ok) {
    (void)cudaGetLastError();
    return m;
  }
  m.known = true;
  m.total_gib = static_cast<double>(total_bytes) / kGiB;
  m.used_gib = static_cast<double>(total_bytes - free_bytes) / kGiB;
  std::atomic<double>& peak = g_peak_used_gib[std::clamp(index, 0, 15)];
  double seen = peak.load();
  while (m.used_gib > seen && !peak.compare_exchange_weak(seen, m.used_gib)) {
  }
  m.peak_used_gib = std::max(seen, m.used_gib);
#else
  (void)device;
#endif
  return m;
}

std::string device_memory_note(const at::Device& device) {
  const DeviceMemory m = device_memory(device);
  if (!m.known) return "";
  return strprintf("GPU %.1f / %.1f GiB (peak %.1f)", m.used_gib, m.total_gib, m.peak_used_gib);
}

bool is_out_of_memory(const std::exception& e) {
  const std::string what = e.what();
  return what.find("out of memory") != std::string::npos || what.find("OutOfMemory") != std::string::npos;
}

}  // namespace resq
