// Packed 4/8-bit linear layout (format version 1): the single source of truth for nibble order,
// number conventions and the scalar reference math, shared by host C++, CPU kernels and CUDA code.
//
// One packed linear W[N, K] with K = K4 + K8 (input columns [0, K4) are 4-bit, [K4, K) 8-bit):
//   w4   uint8 [N][packed4_row_bytes(K4)]  int4 two's complement, two per byte along K:
//                                          LOW nibble = even column k, HIGH nibble = column k+1;
//                                          an odd K4 leaves the last high nibble 0 (readers may
//                                          rely on it; the CPU kernels ignore it anyway).
//   w8   int8  [N][K8]
//   sw4, sw8 float32 [N]   symmetric per output channel and per part: w ~ sw4[n]*q4, w ~ sw8[n]*q8
//   rs4, rs8 int32 [N]     rs4[n] = sum_k q4[n,k], rs8[n] = sum_k q8[n,k] (zero-point correction)
//   bias float32 [N]       optional
// Activations X[M, K], dynamic per token, asymmetric, per part (b = 4 or 8, qmax = 2^b - 1):
//   xq4 uint8 [M][packed4_row_bytes(K4)] (unsigned nibbles, same nibble order, pad nibble 0),
//   xq8 uint8 [M][K8], sx4/sx8 float32 [M], zx4/zx8 int32 [M].
// See docs/FORMAT.md for the full statement of every formula below.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "resq/common/host_device.h"

// The fp32 formulas below must round every product and sum separately (no fused multiply-add) so
// that the scalar reference, the vectorized CPU code and the GPU agree bit for bit. GCC contracts
// a*b+c into an FMA by default in C++ whenever FMA is enabled, so host functions carry this
// attribute; device code uses the explicitly rounded intrinsics in mul_rn/add_rn/... instead.
#if defined(__CUDACC__)
#define RESQ_NO_FP_CONTRACT
#define RESQ_NO_FP_CONTRACT_BODY
#elif defined(__clang__)
#define RESQ_NO_FP_CONTRACT
#define RESQ_NO_FP_CONTRACT_BODY _Pragma("clang fp contract(off)")
#elif defined(__GNUC__)
#define RESQ_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#define RESQ_NO_FP_CONTRACT_BODY
#else
#define RESQ_NO_FP_CONTRACT
#define RESQ_NO_FP_CONTRACT_BODY
#endif

namespace resq::format {

static_assert(sizeof(float) == 4, "resq packed format needs IEEE binary32 float");
static_assert(sizeof(int8_t) == 1 && sizeof(uint8_t) == 1, "resq packed format needs 8-bit bytes");
static_assert(sizeof(int32_t) == 4 && sizeof(int64_t) == 8, "resq packed format needs int32/int64");
static_assert(static_cast<int8_t>(-1) == -1 && (static_cast<int32_t>(-8) >> 1) == -4,
              "resq packed format assumes two's complement with arithmetic right shift");

// Version of the kernel-level layout described in this header (stored in checkpoints).
constexpr int kFormatVersion = 1;

// Bit widths of the two parts.
constexpr int kBits4 = 4;
constexpr int kBits8 = 8;

// Nibble order inside a byte of a 4-bit row: element 2i sits in bits [0, 4), element 2i+1 in
// bits [4, 8). This is the only order format version 1 defines.
enum class NibbleOrder : int { kLowNibbleFirst = 0 };
constexpr NibbleOrder kNibbleOrder = NibbleOrder::kLowNibbleFirst;

// Integer ranges: signed weights, unsigned activations.
constexpr int kInt4Min = -8;
constexpr int kInt4Max = 7;
constexpr int kInt8Min = -128;
constexpr int kInt8Max = 127;
constexpr int kUint4Max = 15;   // activation qmax for 4 bits
constexpr int kUint8Max = 255;  // activation qmax for 8 bits

// Largest K4 or K8 the format allows. It keeps every int32 accumulator exact:
// |sum_k (xq - zx) * q| <= 65536 * 255 * 128 < 2^31, and so are acc and zx*rs on their own.
constexpr int64_t kMaxPartDim = 65536;

// Dimensions of one packed linear: N output channels, K4 4-bit and K8 8-bit input columns.
struct PackedLinearDims {
  int64_t N = 0;
  int64_t K4 = 0;
  int64_t K8 = 0;
  RESQ_HOST_DEVICE int64_t K() const { return K4 + K8; }
};

// Bytes of one packed 4-bit row of K4 elements: ceil(K4 / 2).
RESQ_HOST_DEVICE constexpr int64_t packed4_row_bytes(int64_t K4) { return (K4 + 1) / 2; }

// Signed int4 element k of a packed row (row: [packed4_row_bytes(K)] bytes), sign-extended.
RESQ_HOST_DEVICE inline int int4_get(const uint8_t* row, int64_t k) {
  const int nibble = (row[k >> 1] >> ((k & 1) * 4)) & 0xF;
  return (nibble ^ 8) - 8;  // two's complement of 4 bits: 8..15 -> -8..-1
}

// Stores v (in [-8, 7]) as element k of a packed row; the other nibble of the byte is kept.
RESQ_HOST_DEVICE inline void int4_set(uint8_t* row, int64_t k, int v) {
  const int shift = static_cast<int>(k & 1) * 4;
  const int keep = (k & 1) ? 0x0F : 0xF0;
  row[k >> 1] = static_cast<uint8_t>((row[k >> 1] & keep) | ((v & 0xF) << shift));
}

// Unsigned uint4 element k (0..15) of a packed row.
RESQ_HOST_DEVICE inline int uint4_get(const uint8_t* row, int64_t k) {
  return (row[k >> 1] >> ((k & 1) * 4)) & 0xF;
}

// Stores v (in [0, 15]) as element k of a packed row; the other nibble of the byte is kept.
RESQ_HOST_DEVICE inline void uint4_set(uint8_t* row, int64_t k, int v) { int4_set(row, k, v); }

// ------------------------------------------------------------------ views (non-owning)

// One packed linear as raw pointers (device- or host-resident). Row n of the 4-bit part starts at
// w4 + n * ldw4 (packed4_row_bytes(K4) logical bytes), of the 8-bit part at w8 + n * ldw8 (K8
// bytes): compact strides on the CPU, 16-byte multiples in the GPU layout (format/packed_linear.h
// owns the storage). w4 may be null when K4 == 0, w8 when K8 == 0; bias is null when absent.
// Scales and row sums are always [N].
struct PackedLinearView {
  PackedLinearDims dims;
  const uint8_t* w4 = nullptr;   // [N][ldw4]
  int64_t ldw4 = 0;              // bytes, >= packed4_row_bytes(K4)
  const int8_t* w8 = nullptr;    // [N][ldw8]
  int64_t ldw8 = 0;              // bytes, >= K8
  const float* sw4 = nullptr;    // [N]
  const float* sw8 = nullptr;    // [N]
  const int32_t* rs4 = nullptr;  // [N]
  const int32_t* rs8 = nullptr;  // [N]
  const float* bias = nullptr;   // [N] or null
};

// M quantized activation rows. xq4 may be null when K4 == 0, xq8 when K8 == 0.
struct QuantizedActivationsView {
  int64_t M = 0;
  int64_t K4 = 0;
  int64_t K8 = 0;
  const uint8_t* xq4 = nullptr;  // [M][packed4_row_bytes(K4)]
  const uint8_t* xq8 = nullptr;  // [M][K8]
  const float* sx4 = nullptr;    // [M]
  const int32_t* zx4 = nullptr;  // [M]
  const float* sx8 = nullptr;    // [M]
  const int32_t* zx8 = nullptr;  // [M]
};

// ------------------------------------------------------------------ exactly rounded fp32 ops

RESQ_HOST_DEVICE inline float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
RESQ_HOST_DEVICE inline float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
RESQ_HOST_DEVICE inline float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
RESQ_HOST_DEVICE inline float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
// Round to nearest integer, ties to EVEN (std::nearbyint in the default rounding mode; rintf on
// the GPU). Not std::round, which rounds ties away from zero.
RESQ_HOST_DEVICE inline float round_half_even(float x) {
#if defined(__CUDA_ARCH__)
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}

// ------------------------------------------------------------------ activation quantizer math

// Scale and zero point of one token's part from its raw min and max (over that part's columns),
// clip ratio c in (0, 1] and qmax = 2^bits - 1, exactly in this order:
//   lo = min(x_min, 0) * c;  hi = max(x_max, 0) * c;  s = (hi - lo) / qmax
//   if s == 0 (all-zero part, or empty part):  s = 1, z = 0
//   else z = round_half_even(-lo / s)          (an integer in [0, qmax])
RESQ_HOST_DEVICE inline RESQ_NO_FP_CONTRACT void activation_scale_zero(float x_min, float x_max,
                                                                       float clip, int qmax,
                                                                       float* scale,
                                                                       int32_t* zero) {
  RESQ_NO_FP_CONTRACT_BODY
  const float lo = mul_rn(x_min < 0.0f ? x_min : 0.0f, clip);
  const float hi = mul_rn(x_max > 0.0f ? x_max : 0.0f, clip);
  const float s = div_rn(sub_rn(hi, lo), static_cast<float>(qmax));
  if (s == 0.0f) {
    *scale = 1.0f;
    *zero = 0;
    return;
  }
  *scale = s;
  *zero = static_cast<int32_t>(round_half_even(div_rn(-lo, s)));
}

// One quantized activation value: q = clamp(round_half_even(x / s) + z, 0, qmax), evaluated in
// fp32 in exactly this order (the clamp happens on the float before converting).
RESQ_HOST_DEVICE inline int quantize_activation_value(float x, float scale, int32_t zero,
                                                      int qmax) {
  float r = add_rn(round_half_even(div_rn(x, scale)), static_cast<float>(zero));
  r = r < 0.0f ? 0.0f : r;
  r = r > static_cast<float>(qmax) ? static_cast<float>(qmax) : r;
  return static_cast<int>(r);
}

// One dequantized activation value x̂ = s * (q - z): the integer difference (exact), then one rounded
// fp32 product. The one formula of every dequantization: fake quantization, the CPU KV cache and the
// GPU's dequantize kernel all call it, so they agree bit for bit.
RESQ_HOST_DEVICE inline float dequantize_activation_value(int32_t q, float scale, int32_t zero) {
  return mul_rn(scale, static_cast<float>(q - zero));
}

// ------------------------------------------------------------------ GEMM epilogue

// Output element from the exact int32 accumulators acc4 = sum_k xq4*q4, acc8 = sum_k xq8*q8,
// evaluated in exactly this order (fp32, every operation rounded separately, no FMA):
//   d4 = float(acc4 - zx4*rs4)       (int32 arithmetic, exact by kMaxPartDim)
//   d8 = float(acc8 - zx8*rs8)
//   t4 = (sx4 * sw4) * d4
//   t8 = (sx8 * sw8) * d8
//   y  = t4 + t8;  y = y + bias      (the bias add only when there is a bias)
// An empty part drops its term: K4 == 0 gives y = t8 (+ bias), K8 == 0 gives y = t4 (+ bias), both
// empty give y = 0 (+ bias); has4/has8 say whether the part is non-empty. The integer subtraction
// wraps in 32 bits: the true difference always fits, so the result is exact either way.
RESQ_HOST_DEVICE inline RESQ_NO_FP_CONTRACT float epilogue_value(
    bool has4, int32_t acc4, float sx4, int32_t zx4, float sw4, int32_t rs4,  //
    bool has8, int32_t acc8, float sx8, int32_t zx8, float sw8, int32_t rs8,  //
    bool has_bias, float bias) {
  RESQ_NO_FP_CONTRACT_BODY
  float y = 0.0f;
  if (has4) {
    const uint32_t zr4 = static_cast<uint32_t>(zx4) * static_cast<uint32_t>(rs4);
    const int32_t d4 = static_cast<int32_t>(static_cast<uint32_t>(acc4) - zr4);
    y = mul_rn(mul_rn(sx4, sw4), static_cast<float>(d4));
  }
  if (has8) {
    const uint32_t zr8 = static_cast<uint32_t>(zx8) * static_cast<uint32_t>(rs8);
    const int32_t d8 = static_cast<int32_t>(static_cast<uint32_t>(acc8) - zr8);
    const float t8 = mul_rn(mul_rn(sx8, sw8), static_cast<float>(d8));
    y = has4 ? add_rn(y, t8) : t8;
  }
  if (has_bias) y = add_rn(y, bias);
  return y;
}

// ------------------------------------------------------------------ reference packers

// q: int8 [N][K4 + K8] with q[n, k] in [-8, 7] for k < K4 and in [-128, 127] for k >= K4
// (unchecked). Writes w4 [N][packed4_row_bytes(K4)] (pad nibble 0) and w8 [N][K8].
RESQ_HOST_DEVICE inline void pack_weights_reference(const int8_t* q, int64_t N, int64_t K4,
                                                    int64_t K8, uint8_t* w4, int8_t* w8) {
  const int64_t K = K4 + K8;
  const int64_t rb = packed4_row_bytes(K4);
  for (int64_t n = 0; n < N; ++n) {
    uint8_t* row4 = w4 + n * rb;
    for (int64_t b = 0; b < rb; ++b) row4[b] = 0;
    for (int64_t k = 0; k < K4; ++k) int4_set(row4, k, q[n * K + k]);
    for (int64_t k = 0; k < K8; ++k) w8[n * K8 + k] = q[n * K + K4 + k];
  }
}

// Inverse of pack_weights_reference: w4 [N][packed4_row_bytes(K4)], w8 [N][K8] -> q int8
// [N][K4 + K8].
RESQ_HOST_DEVICE inline void unpack_weights_reference(const uint8_t* w4, const int8_t* w8,
                                                      int64_t N, int64_t K4, int64_t K8,
                                                      int8_t* q) {
  const int64_t K = K4 + K8;
  const int64_t rb = packed4_row_bytes(K4);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K4; ++k) q[n * K + k] = static_cast<int8_t>(int4_get(w4 + n * rb, k));
    for (int64_t k = 0; k < K8; ++k) q[n * K + K4 + k] = w8[n * K8 + k];
  }
}

// Row sums from unpacked q int8 [N][K4 + K8]: rs4[n] = sum_{k<K4} q, rs8[n] = sum_{k>=K4} q.
RESQ_HOST_DEVICE inline void weight_row_sums_reference(const int8_t* q, int64_t N, int64_t K4,
                                                       int64_t K8, int32_t* rs4, int32_t* rs8) {
  const int64_t K = K4 + K8;
  for (int64_t n = 0; n < N; ++n) {
    int32_t s4 = 0;
    int32_t s8 = 0;
    for (int64_t k = 0; k < K4; ++k) s4 += q[n * K + k];
    for (int64_t k = K4; k < K; ++k) s8 += q[n * K + k];
    rs4[n] = s4;
    rs8[n] = s8;
  }
}

// Row sums from packed w4 [N][packed4_row_bytes(K4)] and w8 [N][K8] (pad nibble ignored).
RESQ_HOST_DEVICE inline void packed_weight_row_sums_reference(const uint8_t* w4, const int8_t* w8,
                                                              int64_t N, int64_t K4, int64_t K8,
                                                              int32_t* rs4, int32_t* rs8) {
  const int64_t rb = packed4_row_bytes(K4);
  for (int64_t n = 0; n < N; ++n) {
    int32_t s4 = 0;
    int32_t s8 = 0;
    for (int64_t k = 0; k < K4; ++k) s4 += int4_get(w4 + n * rb, k);
    for (int64_t k = 0; k < K8; ++k) s8 += w8[n * K8 + k];
    rs4[n] = s4;
    rs8[n] = s8;
  }
}

}  // namespace resq::format
