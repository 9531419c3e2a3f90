// Quantizers that produce the packed 4/8-bit layout of resq/format/packed.h on the CPU: dynamic
// per-token asymmetric activation quantization and round-to-nearest symmetric weight quantization,
// plus the owning host container of one batch of quantized activations (a packed linear's is
// format::PackedLinear).
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/features.h"
#include "resq/format/packed.h"
#include "resq/format/packed_linear.h"

namespace resq::cpu {

// ---------------------------------------------------------------- activations

// x: float [M][K4 + K8] (row-major, finite values). Per token m and part p (4-bit columns
// [0, K4), 8-bit columns [K4, K4 + K8)) with clip ratio clip4 / clip8 in (0, 1]:
//   scale/zero from format::activation_scale_zero, q from format::quantize_activation_value.
// Writes xq4 uint8 [M][packed4_row_bytes(K4)] (pad nibble 0), xq8 uint8 [M][K8],
// sx4, sx8 float [M], zx4, zx8 int32 [M]. Pointers of an empty part may be null.
// Throws resq::ShapeError for negative dims or a missing required pointer, resq::ConfigError for a
// clip ratio outside (0, 1].
void quantize_activations_reference(const float* x, int64_t M, int64_t K4, int64_t K8, float clip4,
                                    float clip8, uint8_t* xq4, uint8_t* xq8, float* sx4,
                                    int32_t* zx4, float* sx8, int32_t* zx8);

// Same contract and bit-identical output, vectorized (AVX-512 or AVX2 per `kernel`, see
// resolve_cpu_kernel) and multithreaded over tokens.
void quantize_activations(const float* x, int64_t M, int64_t K4, int64_t K8, float clip4,
                          float clip8, uint8_t* xq4, uint8_t* xq8, float* sx4, int32_t* zx4,
                          float* sx8, int32_t* zx8, CpuKernel kernel = CpuKernel::kAuto);

// Owning storage of M quantized activation rows (layout of format::QuantizedActivationsView).
struct QuantizedActivations {
  int64_t M = 0;
  int64_t K4 = 0;
  int64_t K8 = 0;
  std::vector<uint8_t> xq4;  // [M][packed4_row_bytes(K4)]
  std::vector<uint8_t> xq8;  // [M][K8]
  std::vector<float> sx4;    // [M]
  std::vector<int32_t> zx4;  // [M]
  std::vector<float> sx8;    // [M]
  std::vector<int32_t> zx8;  // [M]
  format::QuantizedActivationsView view() const;
};

// x: float [M][K4 + K8] -> freshly allocated quantized rows (calls quantize_activations).
QuantizedActivations quantize_activations(const float* x, int64_t M, int64_t K4, int64_t K8,
                                          float clip4 = 1.0f, float clip8 = 1.0f,
                                          CpuKernel kernel = CpuKernel::kAuto);

// ---------------------------------------------------------------- weights

// w: float [N][K4 + K8] (finite). Symmetric round-to-nearest per output channel and per part:
//   s4 = (max_k |w| * clip4) / 7,   q4 = clamp(round_half_even(w / s4), -8, 7)
//   s8 = (max_k |w| * clip8) / 127, q8 = clamp(round_half_even(w / s8), -128, 127)
// with s = 1 (and q = 0) for an all-zero or empty part. Writes q int8 [N][K4 + K8] (unpacked;
// feed it to format::pack_linear) and sw4, sw8 float [N].
// Throws like quantize_activations_reference.
void quantize_weights_rtn_reference(const float* w, int64_t N, int64_t K4, int64_t K8,
                                    float clip4, float clip8, int8_t* q, float* sw4, float* sw8);

// Round-to-nearest quantization then packing (format::pack_linear): w float [N][K4 + K8], bias
// float [N] or null.
format::PackedLinear quantize_linear_rtn(const float* w, const float* bias, format::PackedLinearDims dims,
                                 float clip4 = 1.0f, float clip8 = 1.0f);

}  // namespace resq::cpu
