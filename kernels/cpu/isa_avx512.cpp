// AVX-512 kernels: the VNNI (vpdpbusd) integer GEMM of the packed W4A4 + W8A8 linear and the
// vectorized activation quantizer. Every function that uses AVX-512 carries a target attribute,
// so this file builds without -march flags; callers check the CPU first (features.cpp).
#include <immintrin.h>

#include <algorithm>

#include "cpu/tile_driver.h"

// GCC 12's avx512fintrin.h passes _mm512_undefined_*() as the pass-through operand of masked
// builtins (never read under an all-ones mask), and -Wuninitialized reports it at every inlined
// use (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define RESQ_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vnni")))

namespace resq::cpu::detail {
namespace {

using format::packed4_row_bytes;

constexpr int64_t kChunk = 64;  // bytes per zmm load

// Sums each of 16 vectors of 16 int32 lanes: returns lane i = sum of v[i]'s lanes (45 ops).
RESQ_TARGET_AVX512 inline __m512i reduce16(const __m512i* v) {
  __m512i s2[8];
  for (int i = 0; i < 8; ++i) {
    s2[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
  }
  __m512i s4[4];
  for (int i = 0; i < 4; ++i) {
    s4[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(s2[2 * i], s2[2 * i + 1]),
                             _mm512_unpackhi_epi64(s2[2 * i], s2[2 * i + 1]));
  }
  // s4[i]: each 128-bit lane holds partial sums of sources 4i..4i+3.
  __m512i s8[2];
  for (int i = 0; i < 2; ++i) {
    s8[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(s4[2 * i], s4[2 * i + 1], 0x88),
                             _mm512_shuffle_i32x4(s4[2 * i], s4[2 * i + 1], 0xDD));
  }
  return _mm512_add_epi32(_mm512_shuffle_i32x4(s8[0], s8[1], 0x88),
                          _mm512_shuffle_i32x4(s8[0], s8[1], 0xDD));
}

// Accumulators are named variables a<i>_<j> (i < 4, j < 16), spelled out by these macros, because
// GCC 12 keeps a loop-carried `__m512i acc[16]` array in memory (a store per vpdpbusd) and spills
// heavily; the tiles use only the (i < MR, j < NR) ones, the rest are discarded by if constexpr.
#define RESQ_FOR_J(F, i) \
  F(i, 0) F(i, 1) F(i, 2) F(i, 3) F(i, 4) F(i, 5) F(i, 6) F(i, 7) \
  F(i, 8) F(i, 9) F(i, 10) F(i, 11) F(i, 12) F(i, 13) F(i, 14) F(i, 15)
#define RESQ_FOR_IJ(F) RESQ_FOR_J(F, 0) RESQ_FOR_J(F, 1) RESQ_FOR_J(F, 2) RESQ_FOR_J(F, 3)
#define RESQ_FOR_I(F, j) F(0, j) F(1, j) F(2, j) F(3, j)
#define RESQ_FOR_J1(F) \
  F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11) F(12) F(13) F(14) F(15)

#define RESQ_DECL_ACC(i, j) __m512i a##i##_##j = _mm512_setzero_si512();
#define RESQ_GATHER_ACC(i, j) \
  if constexpr (i < MR && j < NR) v[i * NR + j] = a##i##_##j;
// 4-bit: weight row j's chunk split into 16*q_even (wl) and 16*q_odd (wh), then rows i < MR.
#define RESQ_STEP4(i, j)                                   \
  if constexpr (i < MR) {                                  \
    a##i##_##j = _mm512_dpbusd_epi32(a##i##_##j, xl##i, wl); \
    a##i##_##j = _mm512_dpbusd_epi32(a##i##_##j, xh##i, wh); \
  }
#define RESQ_GROUP4(j)                                                          \
  if constexpr (j < NR) {                                                       \
    const __m512i wb = _mm512_maskz_loadu_epi8(mask, w4 + j * rb + c);          \
    const __m512i wl = _mm512_and_si512(_mm512_slli_epi16(wb, 4), f0);          \
    const __m512i wh = _mm512_and_si512(wb, f0);                                \
    RESQ_FOR_I(RESQ_STEP4, j)                                                   \
  }
#define RESQ_STEP8(i, j) \
  if constexpr (i < MR) a##i##_##j = _mm512_dpbusd_epi32(a##i##_##j, xv##i, wv);
#define RESQ_GROUP8(j)                                                   \
  if constexpr (j < NR) {                                                \
    const __m512i wv = _mm512_maskz_loadu_epi8(mask, w8 + j * K8 + c);   \
    RESQ_FOR_I(RESQ_STEP8, j)                                            \
  }
#define RESQ_LOAD_X4(i)                                        \
  if constexpr (i < MR) {                                      \
    xl##i = _mm512_load_si512(xp + i * xstride + c);           \
    xh##i = _mm512_load_si512(xp + i * xstride + rbp + c);     \
  }
#define RESQ_LOAD_X8(i) \
  if constexpr (i < MR) xv##i = _mm512_load_si512(x8 + i * xstride + c);

// One MR x NR tile over the whole K (the arguments: TileFn in tile_driver.h).
template <int MR, int NR>
RESQ_TARGET_AVX512 void tile_vnni(const uint8_t* xp, int64_t xstride, int64_t rbp,
                                  const uint8_t* w4, int64_t rb, const int8_t* w8, int64_t K8,
                                  int32_t* t4, int32_t* t8) {
  static_assert(MR >= 1 && MR <= 4 && NR >= 1 && NR <= 16 && MR * NR <= 16,
                "tile too large for the register file");
  constexpr int T = MR * NR;
  alignas(64) int32_t tmp[16];
  const __m512i f0 = _mm512_set1_epi8(static_cast<char>(0xF0));
  __m512i v[16];

  // ---- 4-bit part. The weight byte b holds q_even (low) and q_odd (high). (b << 4) & 0xF0 is
  // 16*q_even and b & 0xF0 is 16*q_odd as signed int8, i.e. sign extension for free; the sums are
  // 16x the true ones (|.| <= 16*65536*15*8 < 2^31) and are shifted back exactly at the end.
  {
    RESQ_FOR_IJ(RESQ_DECL_ACC)
    __m512i xl0, xh0, xl1, xh1, xl2, xh2, xl3, xh3;
    for (int64_t c = 0; c < rb; c += kChunk) {
      const __mmask64 mask = (rb - c >= kChunk) ? ~__mmask64{0}
                                                 : ((__mmask64{1} << (rb - c)) - 1);
      RESQ_LOAD_X4(0) RESQ_LOAD_X4(1) RESQ_LOAD_X4(2) RESQ_LOAD_X4(3)
      RESQ_FOR_J1(RESQ_GROUP4)
    }
    for (int t = 0; t < 16; ++t) v[t] = _mm512_setzero_si512();
    RESQ_FOR_IJ(RESQ_GATHER_ACC)
    _mm512_store_si512(tmp, _mm512_srai_epi32(reduce16(v), 4));
    for (int t = 0; t < T; ++t) t4[t] = tmp[t];
  }

  // ---- 8-bit part: u8 activations x s8 weights, vpdpbusd does not saturate.
  {
    RESQ_FOR_IJ(RESQ_DECL_ACC)
    __m512i xv0, xv1, xv2, xv3;
    const uint8_t* x8 = xp + 2 * rbp;
    for (int64_t c = 0; c < K8; c += kChunk) {
      const __mmask64 mask = (K8 - c >= kChunk) ? ~__mmask64{0}
                                                 : ((__mmask64{1} << (K8 - c)) - 1);
      RESQ_LOAD_X8(0) RESQ_LOAD_X8(1) RESQ_LOAD_X8(2) RESQ_LOAD_X8(3)
      RESQ_FOR_J1(RESQ_GROUP8)
    }
    for (int t = 0; t < 16; ++t) v[t] = _mm512_setzero_si512();
    RESQ_FOR_IJ(RESQ_GATHER_ACC)
    _mm512_store_si512(tmp, reduce16(v));
    for (int t = 0; t < T; ++t) t8[t] = tmp[t];
  }
}

// Register tiles of at most 16 accumulators: 4x4 for batches, 2x8 / 1x16 for one or two tokens.
struct Avx512Tiles {
  static constexpr int kMaxRows = 4;
  static constexpr int kAccumulators = 16;
  static constexpr int64_t kAlign = kChunk;
  static constexpr int64_t kPad4 = kChunk;
  static constexpr int64_t kPad8 = kChunk;
  using X8 = uint8_t;
  template <int MR, int NR>
  static TileFn tile() { return tile_vnni<MR, NR>; }
};

}  // namespace

void gemm_avx512_vnni(const format::QuantizedActivationsView& x,
                      const format::PackedLinearView& w, const GemmOutput& out) {
  gemm_tiled<Avx512Tiles>(x, w, out);
}

// ---------------------------------------------------------------- activation quantizer

RESQ_TARGET_AVX512 void quantize_part_avx512(const float* x, int64_t K, int bits, float clip,
                                             uint8_t* out, float* scale, int32_t* zero) {
  const int qmax = (1 << bits) - 1;
  // Min and max are exact whatever the order, so the vector reduction equals the scalar loop.
  __m512 vmin = _mm512_setzero_ps();
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mask = (K - k >= 16) ? __mmask16(0xFFFF) : __mmask16((1u << (K - k)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(mask, x + k);  // masked lanes read as 0: harmless
    vmin = _mm512_min_ps(vmin, v);
    vmax = _mm512_max_ps(vmax, v);
  }
  format::activation_scale_zero(_mm512_reduce_min_ps(vmin), _mm512_reduce_max_ps(vmax), clip, qmax,
                                scale, zero);
  const __m512 vs = _mm512_set1_ps(*scale);
  const __m512 vz = _mm512_set1_ps(static_cast<float>(*zero));
  const __m512 vq = _mm512_set1_ps(static_cast<float>(qmax));
  const __m512 v0 = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const int64_t n = std::min<int64_t>(16, K - k);
    const __mmask16 mask = n == 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    // Same fp32 steps as format::quantize_activation_value: divide, round half even, add z,
    // clamp low, clamp high.
    __m512 r = _mm512_div_ps(_mm512_maskz_loadu_ps(mask, x + k), vs);
    r = _mm512_roundscale_ps(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_add_ps(r, vz);
    r = _mm512_min_ps(_mm512_max_ps(r, v0), vq);
    const __m512i q = _mm512_maskz_mov_epi32(mask, _mm512_cvttps_epi32(r));
    if (bits == 8) {
      _mm512_mask_cvtepi32_storeu_epi8(out + k, mask, q);
    } else {
      // 64-bit lane = q_even | q_odd << 32 -> byte q_even | q_odd << 4 (pad lanes are zero).
      const __m512i b = _mm512_or_si512(q, _mm512_srli_epi64(q, 28));
      const int64_t bytes = (n + 1) / 2;
      _mm512_mask_cvtepi64_storeu_epi8(out + k / 2, __mmask8((1u << bytes) - 1), b);
    }
  }
}

}  // namespace resq::cpu::detail
