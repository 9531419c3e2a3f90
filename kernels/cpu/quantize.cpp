// Activation and weight quantizers producing the packed layout of resq/format/packed.h: scalar
// references, the dispatching fast activation quantizer and RTN quantization of a whole linear.
#include "cpu/quantize.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu/isa_internal.h"
#include "resq/common/error.h"

namespace resq::cpu {
namespace {

using format::packed4_row_bytes;

void check_dims(const char* fn, const char* rows_name, int64_t rows, int64_t K4, int64_t K8) {
  if (rows < 0 || K4 < 0 || K8 < 0) {
    throw ShapeError(std::string(fn) + ": dimensions must be >= 0, got " + rows_name + " = " +
                     std::to_string(rows) + ", K4 = " + std::to_string(K4) +
                     ", K8 = " + std::to_string(K8));
  }
  if (K4 > format::kMaxPartDim || K8 > format::kMaxPartDim) {
    throw ShapeError(std::string(fn) + ": K4 = " + std::to_string(K4) + ", K8 = " +
                     std::to_string(K8) + " exceed the packed format limit of " +
                     std::to_string(format::kMaxPartDim) + " columns per part");
  }
}

void check_ptr(const char* fn, const void* p, const char* name, bool required) {
  if (required && p == nullptr) {
    throw ShapeError(std::string(fn) + ": '" + name + "' is null but its tensor is non-empty");
  }
}

void check_clip(const char* fn, float clip, const char* name) {
  if (!(clip > 0.0f && clip <= 1.0f)) {
    throw ConfigError(std::string(fn) + ": clip ratio '" + name + "' = " + std::to_string(clip) +
                      " must be in (0, 1]");
  }
}

void check_activation_args(const char* fn, const float* x, int64_t M, int64_t K4, int64_t K8,
                           float clip4, float clip8, const uint8_t* xq4, const uint8_t* xq8,
                           const float* sx4, const int32_t* zx4, const float* sx8,
                           const int32_t* zx8) {
  check_dims(fn, "M", M, K4, K8);
  check_clip(fn, clip4, "clip4");
  check_clip(fn, clip8, "clip8");
  check_ptr(fn, x, "x", M > 0 && K4 + K8 > 0);
  check_ptr(fn, xq4, "xq4", M > 0 && K4 > 0);
  check_ptr(fn, xq8, "xq8", M > 0 && K8 > 0);
  check_ptr(fn, sx4, "sx4", M > 0 && K4 > 0);
  check_ptr(fn, zx4, "zx4", M > 0 && K4 > 0);
  check_ptr(fn, sx8, "sx8", M > 0 && K8 > 0);
  check_ptr(fn, zx8, "zx8", M > 0 && K8 > 0);
}

// Symmetric RTN of one part: w float [K] -> q int8 [K], scale. See quantize_weights_rtn_reference.
RESQ_NO_FP_CONTRACT void rtn_part(const float* w, int64_t K, float clip, int qmin, int qmax,
                                  int8_t* q, float* scale) {
  float amax = 0.0f;
  for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(w[k]));
  float s = (amax * clip) / static_cast<float>(qmax);
  if (s == 0.0f) s = 1.0f;
  for (int64_t k = 0; k < K; ++k) {
    float r = format::round_half_even(w[k] / s);
    r = std::min(std::max(r, static_cast<float>(qmin)), static_cast<float>(qmax));
    q[k] = static_cast<int8_t>(r);
  }
  *scale = s;
}

// A view's pointer to an optional part: null when the part is empty.
template <typename T>
const T* data_or_null(const std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}

}  // namespace

namespace detail {

void quantize_part_scalar(const float* x, int64_t K, int bits, float clip, uint8_t* out,
                          float* scale, int32_t* zero) {
  const int qmax = (1 << bits) - 1;
  float mn = 0.0f;
  float mx = 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    mn = std::min(mn, x[k]);
    mx = std::max(mx, x[k]);
  }
  format::activation_scale_zero(mn, mx, clip, qmax, scale, zero);
  const float s = *scale;
  const int32_t z = *zero;
  if (bits == 4) {
    for (int64_t b = 0; b < packed4_row_bytes(K); ++b) out[b] = 0;
    for (int64_t k = 0; k < K; ++k) {
      format::uint4_set(out, k, format::quantize_activation_value(x[k], s, z, qmax));
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      out[k] = static_cast<uint8_t>(format::quantize_activation_value(x[k], s, z, qmax));
    }
  }
}

}  // namespace detail

namespace {

using PartFn = void (*)(const float*, int64_t, int, float, uint8_t*, float*, int32_t*);

void quantize_activations_with(PartFn part, bool parallel, const float* x, int64_t M, int64_t K4,
                               int64_t K8, float clip4, float clip8, uint8_t* xq4, uint8_t* xq8,
                               float* sx4, int32_t* zx4, float* sx8, int32_t* zx8) {
  const int64_t K = K4 + K8;
  const int64_t rb = packed4_row_bytes(K4);
  // Threads only pay off for a batch of tokens; one token of a 4096-wide layer takes ~1 us.
  const bool use_threads = parallel && M > 1 && M * K >= (int64_t{1} << 15);
#pragma omp parallel for schedule(static) if (use_threads)
  for (int64_t m = 0; m < M; ++m) {
    if (K4 > 0) part(x + m * K, K4, 4, clip4, xq4 + m * rb, sx4 + m, zx4 + m);
    if (K8 > 0) part(x + m * K + K4, K8, 8, clip8, xq8 + m * K8, sx8 + m, zx8 + m);
    // An empty part still gets the documented all-zero scale and zero point.
    if (K4 == 0 && sx4 != nullptr && zx4 != nullptr) { sx4[m] = 1.0f; zx4[m] = 0; }
    if (K8 == 0 && sx8 != nullptr && zx8 != nullptr) { sx8[m] = 1.0f; zx8[m] = 0; }
  }
}

}  // namespace

void quantize_activations_reference(const float* x, int64_t M, int64_t K4, int64_t K8, float clip4,
                                    float clip8, uint8_t* xq4, uint8_t* xq8, float* sx4,
                                    int32_t* zx4, float* sx8, int32_t* zx8) {
  check_activation_args("quantize_activations_reference", x, M, K4, K8, clip4, clip8, xq4, xq8,
                        sx4, zx4, sx8, zx8);
  quantize_activations_with(detail::quantize_part_scalar, false, x, M, K4, K8, clip4, clip8, xq4,
                            xq8, sx4, zx4, sx8, zx8);
}

void quantize_activations(const float* x, int64_t M, int64_t K4, int64_t K8, float clip4,
                          float clip8, uint8_t* xq4, uint8_t* xq8, float* sx4, int32_t* zx4,
                          float* sx8, int32_t* zx8, CpuKernel kernel) {
  check_activation_args("quantize_activations", x, M, K4, K8, clip4, clip8, xq4, xq8, sx4, zx4,
                        sx8, zx8);
  PartFn part = detail::quantize_part_scalar;
  switch (resolve_cpu_kernel(kernel)) {
    case CpuKernel::kVnni: part = detail::quantize_part_avx512; break;
    case CpuKernel::kAvx2: part = detail::quantize_part_avx2; break;
    default: break;
  }
  quantize_activations_with(part, true, x, M, K4, K8, clip4, clip8, xq4, xq8, sx4, zx4, sx8, zx8);
}

format::QuantizedActivationsView QuantizedActivations::view() const {
  return {M, K4, K8, data_or_null(xq4), data_or_null(xq8), sx4.data(), zx4.data(), sx8.data(), zx8.data()};
}

QuantizedActivations quantize_activations(const float* x, int64_t M, int64_t K4, int64_t K8,
                                          float clip4, float clip8, CpuKernel kernel) {
  check_dims("quantize_activations", "M", M, K4, K8);
  QuantizedActivations q;
  q.M = M;
  q.K4 = K4;
  q.K8 = K8;
  q.xq4.assign(static_cast<size_t>(M * packed4_row_bytes(K4)), 0);
  q.xq8.assign(static_cast<size_t>(M * K8), 0);
  q.sx4.assign(static_cast<size_t>(M), 1.0f);
  q.zx4.assign(static_cast<size_t>(M), 0);
  q.sx8.assign(static_cast<size_t>(M), 1.0f);
  q.zx8.assign(static_cast<size_t>(M), 0);
  quantize_activations(x, M, K4, K8, clip4, clip8, q.xq4.data(), q.xq8.data(), q.sx4.data(),
                       q.zx4.data(), q.sx8.data(), q.zx8.data(), kernel);
  return q;
}

void quantize_weights_rtn_reference(const float* w, int64_t N, int64_t K4, int64_t K8,
                                    float clip4, float clip8, int8_t* q, float* sw4, float* sw8) {
  const char* fn = "quantize_weights_rtn_reference";
  check_dims(fn, "N", N, K4, K8);
  check_clip(fn, clip4, "clip4");
  check_clip(fn, clip8, "clip8");
  check_ptr(fn, w, "w", N > 0 && K4 + K8 > 0);
  check_ptr(fn, q, "q", N > 0 && K4 + K8 > 0);
  check_ptr(fn, sw4, "sw4", N > 0);
  check_ptr(fn, sw8, "sw8", N > 0);
  const int64_t K = K4 + K8;
  for (int64_t n = 0; n < N; ++n) {
    rtn_part(w + n * K, K4, clip4, format::kInt4Min, format::kInt4Max, q + n * K, sw4 + n);
    rtn_part(w + n * K + K4, K8, clip8, format::kInt8Min, format::kInt8Max, q + n * K + K4,
             sw8 + n);
  }
}

format::PackedLinear quantize_linear_rtn(const float* w, const float* bias, format::PackedLinearDims dims,
                                 float clip4, float clip8) {
  check_dims("quantize_linear_rtn", "N", dims.N, dims.K4, dims.K8);
  std::vector<int8_t> q(static_cast<size_t>(dims.N * dims.K()));
  std::vector<float> sw4(static_cast<size_t>(dims.N)), sw8(static_cast<size_t>(dims.N));
  quantize_weights_rtn_reference(w, dims.N, dims.K4, dims.K8, clip4, clip8, q.data(), sw4.data(),
                                 sw8.data());
  return format::pack_linear(q.data(), sw4.data(), sw8.data(), bias, dims);
}

}  // namespace resq::cpu
