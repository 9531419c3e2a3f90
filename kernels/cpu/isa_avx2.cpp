// AVX2 kernels: the integer GEMM of the packed W4A4 + W8A8 linear (vpmaddubsw on the 4-bit part,
// widened vpmaddwd on the 8-bit part, which vpmaddubsw would saturate) and the vectorized
// activation quantizer. Functions using AVX2 carry a target attribute (no -march flags needed).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/tile_driver.h"

#define RESQ_TARGET_AVX2 __attribute__((target("avx2,fma")))

namespace resq::cpu::detail {
namespace {

using format::packed4_row_bytes;

constexpr int64_t kChunk4 = 32;  // packed 4-bit bytes per ymm
constexpr int64_t kChunk8 = 16;  // 8-bit elements per ymm of int16

// Returns lane i = sum of v[i]'s 8 int32 lanes, for 8 vectors.
RESQ_TARGET_AVX2 inline __m256i reduce8(const __m256i* v) {
  const __m256i h01 = _mm256_hadd_epi32(v[0], v[1]);
  const __m256i h23 = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i h45 = _mm256_hadd_epi32(v[4], v[5]);
  const __m256i h67 = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i h0123 = _mm256_hadd_epi32(h01, h23);  // [0 1 2 3 | 0 1 2 3] per 128-bit half
  const __m256i h4567 = _mm256_hadd_epi32(h45, h67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(h0123, h4567, 0x20),
                          _mm256_permute2x128_si256(h0123, h4567, 0x31));
}

// Named accumulators a<i>_<j> (i < 2, j < 8) instead of an array, for the reason given in
// isa_avx512.cpp (GCC 12 keeps loop-carried vector arrays in memory).
#define RESQ_FOR_J(F, i) F(i, 0) F(i, 1) F(i, 2) F(i, 3) F(i, 4) F(i, 5) F(i, 6) F(i, 7)
#define RESQ_FOR_IJ(F) RESQ_FOR_J(F, 0) RESQ_FOR_J(F, 1)
#define RESQ_FOR_I(F, j) F(0, j) F(1, j)
#define RESQ_FOR_J1(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7)

#define RESQ_DECL_ACC(i, j) __m256i a##i##_##j = _mm256_setzero_si256();
#define RESQ_GATHER_ACC(i, j) \
  if constexpr (i < MR && j < NR) v[i * NR + j] = a##i##_##j;
#define RESQ_STEP4(i, j)                                                                         \
  if constexpr (i < MR) {                                                                        \
    const __m256i xl = _mm256_load_si256(reinterpret_cast<const __m256i*>(xp + i * xstride + c)); \
    const __m256i xh =                                                                           \
        _mm256_load_si256(reinterpret_cast<const __m256i*>(xp + i * xstride + rbp + c));        \
    const __m256i p16 =                                                                          \
        _mm256_add_epi16(_mm256_maddubs_epi16(xl, wl), _mm256_maddubs_epi16(xh, wh));            \
    a##i##_##j = _mm256_add_epi32(a##i##_##j, _mm256_madd_epi16(p16, ones));                     \
  }
#define RESQ_GROUP4(j)                                                                           \
  if constexpr (j < NR) {                                                                        \
    const __m256i wb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wbase + j * wstride)); \
    const __m256i wl = _mm256_and_si256(_mm256_slli_epi16(wb, 4), f0);                           \
    const __m256i wh = _mm256_and_si256(wb, f0);                                                 \
    RESQ_FOR_I(RESQ_STEP4, j)                                                                    \
  }
#define RESQ_STEP8(i, j)                                                                        \
  if constexpr (i < MR) {                                                                       \
    const __m256i xv =                                                                          \
        _mm256_load_si256(reinterpret_cast<const __m256i*>(x8 + i * xstride + 2 * c));         \
    a##i##_##j = _mm256_add_epi32(a##i##_##j, _mm256_madd_epi16(xv, wv));                       \
  }
#define RESQ_GROUP8(j)                                                                          \
  if constexpr (j < NR) {                                                                       \
    const __m256i wv = _mm256_cvtepi8_epi16(                                                    \
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(wbase + j * wstride)));                \
    RESQ_FOR_I(RESQ_STEP8, j)                                                                   \
  }

// One MR x NR tile over the whole K (the arguments: TileFn in tile_driver.h). The weight rows are
// not padded, so the last partial chunk is copied into a zero-padded buffer first.
template <int MR, int NR>
RESQ_TARGET_AVX2 void tile_avx2(const uint8_t* xp, int64_t xstride, int64_t rbp,
                                const uint8_t* w4, int64_t rb, const int8_t* w8, int64_t K8,
                                int32_t* t4, int32_t* t8) {
  static_assert(MR >= 1 && MR <= 2 && NR >= 1 && NR <= 8 && MR * NR <= 8,
                "tile too large for the register file");
  constexpr int T = MR * NR;
  alignas(32) int32_t tmp[8];
  alignas(32) uint8_t tail[NR][kChunk4];
  const __m256i f0 = _mm256_set1_epi8(static_cast<char>(0xF0));
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i v[8];

  // ---- 4-bit part: weights as 16*q (see tile_vnni in isa_avx512.cpp). vpmaddubsw pairs:
  // |2 * 15 * 128| = 3840, and the sum of the low- and high-nibble results is at most 7680: no
  // int16 saturation.
  {
    RESQ_FOR_IJ(RESQ_DECL_ACC)
    for (int64_t c = 0; c < rb; c += kChunk4) {
      const uint8_t* wbase = w4 + c;
      int64_t wstride = rb;
      if (rb - c < kChunk4) {
        std::memset(tail, 0, sizeof(tail));
        for (int j = 0; j < NR; ++j) std::memcpy(tail[j], w4 + j * rb + c, size_t(rb - c));
        wbase = &tail[0][0];
        wstride = kChunk4;
      }
      RESQ_FOR_J1(RESQ_GROUP4)
    }
    for (int t = 0; t < 8; ++t) v[t] = _mm256_setzero_si256();
    RESQ_FOR_IJ(RESQ_GATHER_ACC)
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), _mm256_srai_epi32(reduce8(v), 4));
    for (int t = 0; t < T; ++t) t4[t] = tmp[t];
  }

  // ---- 8-bit part: u8 * s8 pairs reach 2 * 255 * 128 > 32767, so both sides are widened to
  // int16 and multiplied with vpmaddwd (exact int32 pair sums).
  {
    RESQ_FOR_IJ(RESQ_DECL_ACC)
    const uint8_t* x8 = xp + 2 * rbp;
    for (int64_t c = 0; c < K8; c += kChunk8) {
      const uint8_t* wbase = reinterpret_cast<const uint8_t*>(w8) + c;
      int64_t wstride = K8;
      if (K8 - c < kChunk8) {
        std::memset(tail, 0, sizeof(tail));
        for (int j = 0; j < NR; ++j) std::memcpy(tail[j], w8 + j * K8 + c, size_t(K8 - c));
        wbase = &tail[0][0];
        wstride = kChunk4;
      }
      RESQ_FOR_J1(RESQ_GROUP8)
    }
    for (int t = 0; t < 8; ++t) v[t] = _mm256_setzero_si256();
    RESQ_FOR_IJ(RESQ_GATHER_ACC)
    _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), reduce8(v));
    for (int t = 0; t < T; ++t) t8[t] = tmp[t];
  }
}

// Register tiles of at most 8 accumulators: 2x4 for batches, 1x8 for a single token; the
// 8-bit part is prepared as int16 for vpmaddwd.
struct Avx2Tiles {
  static constexpr int kMaxRows = 2;
  static constexpr int kAccumulators = 8;
  static constexpr int64_t kAlign = 32;
  static constexpr int64_t kPad4 = kChunk4;
  static constexpr int64_t kPad8 = kChunk8;
  using X8 = int16_t;
  template <int MR, int NR>
  static TileFn tile() { return tile_avx2<MR, NR>; }
};

}  // namespace

void gemm_avx2(const format::QuantizedActivationsView& x, const format::PackedLinearView& w,
               const GemmOutput& out) {
  gemm_tiled<Avx2Tiles>(x, w, out);
}

// ---------------------------------------------------------------- activation quantizer

RESQ_TARGET_AVX2 void quantize_part_avx2(const float* x, int64_t K, int bits, float clip,
                                         uint8_t* out, float* scale, int32_t* zero) {
  const int qmax = (1 << bits) - 1;
  __m256 vmin = _mm256_setzero_ps();
  __m256 vmax = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 v = _mm256_loadu_ps(x + k);
    vmin = _mm256_min_ps(vmin, v);
    vmax = _mm256_max_ps(vmax, v);
  }
  alignas(32) float lanes_min[8];
  alignas(32) float lanes_max[8];
  _mm256_store_ps(lanes_min, vmin);
  _mm256_store_ps(lanes_max, vmax);
  float mn = 0.0f, mx = 0.0f;
  for (int i = 0; i < 8; ++i) {
    mn = std::min(mn, lanes_min[i]);
    mx = std::max(mx, lanes_max[i]);
  }
  for (; k < K; ++k) {
    mn = std::min(mn, x[k]);
    mx = std::max(mx, x[k]);
  }
  format::activation_scale_zero(mn, mx, clip, qmax, scale, zero);
  const float s = *scale;
  const int32_t z = *zero;
  const __m256 vs = _mm256_set1_ps(s);
  const __m256 vz = _mm256_set1_ps(static_cast<float>(z));
  const __m256 vq = _mm256_set1_ps(static_cast<float>(qmax));
  const __m256 v0 = _mm256_setzero_ps();
  alignas(32) int32_t q[8];
  k = 0;
  for (; k + 8 <= K; k += 8) {
    // Same fp32 steps as format::quantize_activation_value.
    __m256 r = _mm256_div_ps(_mm256_loadu_ps(x + k), vs);
    r = _mm256_round_ps(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_add_ps(r, vz);
    r = _mm256_min_ps(_mm256_max_ps(r, v0), vq);
    _mm256_store_si256(reinterpret_cast<__m256i*>(q), _mm256_cvttps_epi32(r));
    if (bits == 8) {
      for (int i = 0; i < 8; ++i) out[k + i] = static_cast<uint8_t>(q[i]);
    } else {
      for (int i = 0; i < 4; ++i) {
        out[k / 2 + i] = static_cast<uint8_t>(q[2 * i] | (q[2 * i + 1] << 4));
      }
    }
  }
  if (bits == 4 && k < K) {
    for (int64_t b = k / 2; b < packed4_row_bytes(K); ++b) out[b] = 0;
  }
  for (; k < K; ++k) {
    const int v = format::quantize_activation_value(x[k], s, z, qmax);
    if (bits == 8) {
      out[k] = static_cast<uint8_t>(v);
    } else {
      format::uint4_set(out, k, v);
    }
  }
}

}  // namespace resq::cpu::detail
