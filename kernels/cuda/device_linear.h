// One packed linear on the device: the host owner (format::PackedLinear) re-strided to the GPU layout
// (16-byte rows, format::restride) and uploaded once, with the GpuLinearView the launchers take.
// Host code of CUDA builds (needs the CUDA runtime): PackedCudaLinear, the CUDA benchmark, tests.
#pragma once

#include <cstdint>

#include "cuda/gpu_layout.h"
#include "resq/cuda/device.h"
#include "resq/format/packed_linear.h"

namespace resq::gpu {

class DevicePackedLinear {
 public:
  DevicePackedLinear() = default;
  // host: a packed linear in host memory, any row strides. Uploads to the current device. Throws
  // like format::restride, CudaError when an allocation or copy fails.
  explicit DevicePackedLinear(const format::PackedLinearView& host)
      : DevicePackedLinear(format::restride(host, kGpuRowAlign)) {}

  // Device pointers, GPU strides (checked by gpu_linear_view).
  GpuLinearView view() const { return gpu_linear_view(view_); }

 private:
  explicit DevicePackedLinear(const format::PackedLinear& g)
      : w4_(g.w4), w8_(g.w8), sw4_(g.sw4), sw8_(g.sw8), rs4_(g.rs4), rs8_(g.rs8), bias_(g.bias), view_(g.view()) {
    view_.w4 = w4_.size() ? w4_.get() : nullptr;
    view_.w8 = w8_.size() ? w8_.get() : nullptr;
    view_.sw4 = sw4_.get();
    view_.sw8 = sw8_.get();
    view_.rs4 = rs4_.get();
    view_.rs8 = rs8_.get();
    view_.bias = bias_.size() ? bias_.get() : nullptr;
  }

  DeviceBuffer<uint8_t> w4_;              // [N][ldw4]
  DeviceBuffer<int8_t> w8_;               // [N][ldw8]
  DeviceBuffer<float> sw4_, sw8_;         // [N]
  DeviceBuffer<int32_t> rs4_, rs8_;       // [N]
  DeviceBuffer<float> bias_;              // [N] or empty
  format::PackedLinearView view_;         // dims and GPU strides of the re-strided copy, device pointers
};

}  // namespace resq::gpu
