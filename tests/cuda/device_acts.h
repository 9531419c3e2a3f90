// Quantized activations in GPU layout uploaded to the device, shared by the CUDA kernel tests.
#pragma once

#include <utility>

#include "cuda/gpu_layout.h"
#include "resq/cuda/device.h"

namespace resq::test {

// Owns the host copy and one device buffer per array; view() points at the device copies (null for
// an empty part, as the launchers expect).
struct DeviceActs {
  gpu::GpuActivationsHost host;
  gpu::DeviceBuffer<uint8_t> xq4, xq8;
  gpu::DeviceBuffer<float> sx4, sx8;
  gpu::DeviceBuffer<int32_t> zx4, zx8;
  explicit DeviceActs(gpu::GpuActivationsHost h)
      : host(std::move(h)), xq4(host.xq4), xq8(host.xq8), sx4(host.sx4), sx8(host.sx8), zx4(host.zx4),
        zx8(host.zx8) {}
  gpu::GpuActivationsView view() const {
    gpu::GpuActivationsView v = host.host_view();
    v.xq4 = host.xq4.empty() ? nullptr : xq4.get();
    v.xq8 = host.xq8.empty() ? nullptr : xq8.get();
    v.sx4 = host.sx4.empty() ? nullptr : sx4.get();
    v.sx8 = host.sx8.empty() ? nullptr : sx8.get();
    v.zx4 = host.zx4.empty() ? nullptr : zx4.get();
    v.zx8 = host.zx8.empty() ? nullptr : zx8.get();
    return v;
  }
};

}  // namespace resq::test
