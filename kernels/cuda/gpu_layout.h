// GPU-side operand layout of the packed W4A4+W8A8 linear: the packed format of resq/format/packed.h
// with row strides padded to 16 bytes (so every cp.async source is aligned), the plain-pointer views
// the CUDA launchers take (a packed linear's is built from format::PackedLinear re-strided to 16
// bytes, format/packed_linear.h), and the per-element epilogue shared by the kernel and its CPU
// emulation. Plain C++ (compiles without nvcc).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "resq/common/error.h"
#include "resq/common/host_device.h"
#include "cuda/mixed_gemm_layout.h"
#include "resq/format/packed.h"

namespace resq::gpu {

// One packed linear in GPU layout (device pointers when handed to a kernel). Row n of the 4-bit
// part starts at w4 + n * ldw4 and holds format::packed4_row_bytes(K4) logical bytes (low nibble
// first, an odd K4's pad nibble is 0); ldw4 (bytes) is a multiple of 16. Same for w8 / ldw8.
// Scales, row sums and bias as in format::PackedLinearView ([N]; bias may be null).
struct GpuLinearView {
  int64_t N = 0;
  int64_t K4 = 0;
  int64_t K8 = 0;
  const uint8_t* w4 = nullptr;  // [N][ldw4]
  int64_t ldw4 = 0;
  const int8_t* w8 = nullptr;   // [N][ldw8]
  int64_t ldw8 = 0;
  const float* sw4 = nullptr;   // [N]
  const float* sw8 = nullptr;   // [N]
  const int32_t* rs4 = nullptr; // [N]
  const int32_t* rs8 = nullptr; // [N]
  const float* bias = nullptr;  // [N] or null
};

// M quantized activation rows in GPU layout: row m of the 4-bit part at xq4 + m * ldx4 (bytes,
// a multiple of 16), packed4_row_bytes(K4) logical bytes; bytes between the logical end and the
// stride are never read by the GEMM (zero-filled by cp.async), so they may hold anything.
struct GpuActivationsView {
  int64_t M = 0;
  int64_t K4 = 0;
  int64_t K8 = 0;
  const uint8_t* xq4 = nullptr;  // [M][ldx4]
  int64_t ldx4 = 0;
  const uint8_t* xq8 = nullptr;  // [M][ldx8]
  int64_t ldx8 = 0;
  const float* sx4 = nullptr;    // [M]
  const int32_t* zx4 = nullptr;  // [M]
  const float* sx8 = nullptr;    // [M]
  const int32_t* zx8 = nullptr;  // [M]
};

// Logical bytes per row of each part.
RESQ_HOST_DEVICE constexpr int64_t part4_row_bytes(int64_t K4) { return (K4 + 1) / 2; }
RESQ_HOST_DEVICE constexpr int64_t part8_row_bytes(int64_t K8) { return K8; }

// Global byte (within a row of one part) of chunk `chunk` of pipeline stage `s`.
RESQ_HOST_DEVICE constexpr int64_t stage_chunk_gbyte(int64_t s, int chunk) {
  return s * kStageRowBytes + chunk * kChunkBytes;
}

// Row of a CTA's shared A tile read by `lane` for m16 tile mt of warp row warp_m, and of the B
// tile for the n8-tile pair np (n8 tiles 2*np, 2*np+1) of warp column warp_n.
template <class Cfg>
RESQ_HOST_DEVICE constexpr int a_tile_row(int warp_m, int mt, int lane) {
  return warp_m * Cfg::WM + mt * 16 + ldsm_a_row(lane);
}
template <class Cfg>
RESQ_HOST_DEVICE constexpr int b_tile_row(int warp_n, int np, int lane) {
  return warp_n * Cfg::WN + np * 16 + ldsm_b_row(lane);
}

// Output value y[m, n] from the exact int32 accumulators: format::epilogue_value with the scales,
// zero points, row sums and bias of (m, n); parts with K == 0 are dropped (their pointers may be
// null and are not read).
RESQ_HOST_DEVICE inline float epilogue_element(const GpuActivationsView& x, const GpuLinearView& w,
                                               int64_t m, int64_t n, int32_t acc4, int32_t acc8) {
  const bool has4 = x.K4 > 0;
  const bool has8 = x.K8 > 0;
  const bool has_bias = w.bias != nullptr;
  return format::epilogue_value(has4, acc4, has4 ? x.sx4[m] : 0.0f, has4 ? x.zx4[m] : 0,
                                has4 ? w.sw4[n] : 0.0f, has4 ? w.rs4[n] : 0,  //
                                has8, acc8, has8 ? x.sx8[m] : 0.0f, has8 ? x.zx8[m] : 0,
                                has8 ? w.sw8[n] : 0.0f, has8 ? w.rs8[n] : 0,  //
                                has_bias, has_bias ? w.bias[n] : 0.0f);
}

// Dequantized activation x̂[m, k] = s · (q − z) of quantized rows in GPU layout, k in [0, K4 + K8):
// format::dequantize_activation_value, as resq::PackedKvCacheQuant::unpack (and so KvFakeQuant). Used by dequantize_rows_cuda (kernels/cuda/kv_dequant.cu) and its host reference.
RESQ_HOST_DEVICE inline float dequantize_activation_element(const GpuActivationsView& x, int64_t m,
                                                            int64_t k) {
  if (k < x.K4) {
    return format::dequantize_activation_value(format::uint4_get(x.xq4 + m * x.ldx4, k), x.sx4[m], x.zx4[m]);
  }
  return format::dequantize_activation_value(x.xq8[m * x.ldx8 + (k - x.K4)], x.sx8[m], x.zx8[m]);
}

// Host reference of dequantize_rows_cuda: out [M][ldo] float (ldo >= K4 + K8; elements past K4 + K8
// of a row are not written).
inline void dequantize_activations_reference(const GpuActivationsView& x, float* out, int64_t ldo) {
  const int64_t K = x.K4 + x.K8;
  RESQ_CHECK_OR_THROW(x.M >= 0 && x.K4 >= 0 && x.K8 >= 0 && ldo >= K, ShapeError,
                      "dequantize_activations_reference: M = " + std::to_string(x.M) + ", K4 = " +
                          std::to_string(x.K4) + ", K8 = " + std::to_string(x.K8) + ", ldo = " +
                          std::to_string(ldo) + " (need ldo >= K4 + K8)");
  for (int64_t m = 0; m < x.M; ++m) {
    for (int64_t k = 0; k < K; ++k) out[m * ldo + k] = dequantize_activation_element(x, m, k);
  }
}

// ---------------------------------------------------------------------------- packed linear view

// The GPU view of a packed linear whose rows are in the GPU layout: format::restride(w, kGpuRowAlign)
// of the owner (format::PackedLinear), on the host (the emulation) or uploaded (its device
// pointers). Throws ShapeError when a non-empty part's stride is not a 16-byte multiple covering
// its row, or when a required pointer is null.
inline GpuLinearView gpu_linear_view(const format::PackedLinearView& w) {
  const auto& d = w.dims;
  const int64_t rb4 = part4_row_bytes(d.K4), rb8 = part8_row_bytes(d.K8);
  const bool rows = d.N > 0;
  RESQ_CHECK_OR_THROW(d.N >= 0 && d.K4 >= 0 && d.K8 >= 0, ShapeError,
                      "gpu_linear_view: negative dims N=" + std::to_string(d.N) + " K4=" + std::to_string(d.K4) +
                          " K8=" + std::to_string(d.K8));
  RESQ_CHECK_OR_THROW((d.K4 == 0 || (w.ldw4 >= rb4 && w.ldw4 % kGpuRowAlign == 0)) &&
                          (d.K8 == 0 || (w.ldw8 >= rb8 && w.ldw8 % kGpuRowAlign == 0)),
                      ShapeError,
                      "gpu_linear_view: strides ldw4 = " + std::to_string(w.ldw4) + ", ldw8 = " + std::to_string(w.ldw8) +
                          " are not the GPU layout (16-byte multiples covering " + std::to_string(rb4) + ", " +
                          std::to_string(rb8) + " bytes): restride the linear first");
  RESQ_CHECK_OR_THROW(!rows || ((d.K4 == 0 || (w.w4 && w.sw4 && w.rs4)) && (d.K8 == 0 || (w.w8 && w.sw8 && w.rs8))),
                      ShapeError, "gpu_linear_view: the weights, scales and row sums of a non-empty part are required");
  // Field for field, in GpuLinearView's order (N, K4, K8, w4, ldw4, w8, ldw8, sw4, sw8, rs4, rs8, bias).
  return GpuLinearView{d.N, d.K4, d.K8, w.w4, w.ldw4, w.w8, w.ldw8, w.sw4, w.sw8, w.rs4, w.rs8, w.bias};
}

// Host copy of quantized activations in GPU layout (tests and the emulation).
struct GpuActivationsHost {
  int64_t M = 0, K4 = 0, K8 = 0, ldx4 = 0, ldx8 = 0;
  std::vector<uint8_t> xq4;  // [M][ldx4]
  std::vector<uint8_t> xq8;  // [M][ldx8]
  std::vector<float> sx4, sx8;
  std::vector<int32_t> zx4, zx8;
  GpuActivationsView host_view() const {
    GpuActivationsView v;
    v.M = M;
    v.K4 = K4;
    v.K8 = K8;
    v.xq4 = xq4.empty() ? nullptr : xq4.data();
    v.ldx4 = ldx4;
    v.xq8 = xq8.empty() ? nullptr : xq8.data();
    v.ldx8 = ldx8;
    v.sx4 = sx4.empty() ? nullptr : sx4.data();
    v.zx4 = zx4.empty() ? nullptr : zx4.data();
    v.sx8 = sx8.empty() ? nullptr : sx8.data();
    v.zx8 = zx8.empty() ? nullptr : zx8.data();
    return v;
  }
};

// Copies dense quantized activations (format::QuantizedActivationsView, host) into the GPU layout
// with strides ldx4 >= packed4_row_bytes(K4), ldx8 >= K8 (multiples of 16, 0 = the minimum); the
// bytes past each logical row are set to `pad_byte` (tests use garbage to show they are ignored).
inline GpuActivationsHost restride_activations_for_gpu(const format::QuantizedActivationsView& x,
                                                       int64_t ldx4 = 0, int64_t ldx8 = 0,
                                                       uint8_t pad_byte = 0) {
  const int64_t rb4 = part4_row_bytes(x.K4);
  const int64_t rb8 = part8_row_bytes(x.K8);
  if (ldx4 == 0) ldx4 = gpu_row_stride(rb4);
  if (ldx8 == 0) ldx8 = gpu_row_stride(rb8);
  RESQ_CHECK_OR_THROW(ldx4 >= rb4 && ldx4 % kGpuRowAlign == 0 && ldx8 >= rb8 &&
                          ldx8 % kGpuRowAlign == 0,
                      ShapeError, "restride_activations_for_gpu: bad strides");
  GpuActivationsHost g;
  g.M = x.M;
  g.K4 = x.K4;
  g.K8 = x.K8;
  g.ldx4 = ldx4;
  g.ldx8 = ldx8;
  g.xq4.assign(static_cast<size_t>(x.M * ldx4), pad_byte);
  g.xq8.assign(static_cast<size_t>(x.M * ldx8), pad_byte);
  for (int64_t m = 0; m < x.M; ++m) {
    if (rb4 > 0) std::memcpy(g.xq4.data() + m * ldx4, x.xq4 + m * rb4, static_cast<size_t>(rb4));
    if (rb8 > 0) std::memcpy(g.xq8.data() + m * ldx8, x.xq8 + m * rb8, static_cast<size_t>(rb8));
  }
  if (x.K4 > 0) {
    g.sx4.assign(x.sx4, x.sx4 + x.M);
    g.zx4.assign(x.zx4, x.zx4 + x.M);
  }
  if (x.K8 > 0) {
    g.sx8.assign(x.sx8, x.sx8 + x.M);
    g.zx8.assign(x.zx8, x.zx8 + x.M);
  }
  return g;
}

}  // namespace resq::gpu
