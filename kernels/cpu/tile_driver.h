// The ISA-independent half of the SIMD integer GEMMs: activation row preparation, cache blocking
// and the register-tile sweep, shared by isa_avx2.cpp and isa_avx512.cpp (which supply the tiles).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "cpu/isa_internal.h"

namespace resq::cpu::detail {

// One MR x NR register tile over the whole K: t4, t8 int32 [MR][NR].
// xp: prepared row m0 (stride xstride, nibble planes rbp bytes); w4: packed row n0 (stride rb);
// w8: row n0 (stride K8).
using TileFn = void (*)(const uint8_t* xp, int64_t xstride, int64_t rbp, const uint8_t* w4,
                        int64_t rb, const int8_t* w8, int64_t K8, int32_t* t4, int32_t* t8);

// Tile widths the kernels are instantiated for, widest first.
constexpr int kTileWidths[] = {16, 8, 4, 3, 2, 1};
constexpr int kTileWidthCount = sizeof(kTileWidths) / sizeof(kTileWidths[0]);

// What an ISA file supplies (see Avx2Tiles, Avx512Tiles):
//   kMaxRows       largest MR of a tile
//   kAccumulators  largest MR x NR (accumulator registers a tile may use)
//   kAlign         alignment of the prepared rows (the vector width in bytes)
//   kPad4, kPad8   the nibble planes are padded to kPad4 bytes, the 8-bit part to kPad8 elements
//   X8             element type of the prepared 8-bit part (uint8_t, or int16_t for AVX2)
//   tile<MR, NR>() the tile function

// Prepared activation rows: per row [xlo: rbp bytes][xhi: rbp bytes][x8: k8p X8 elements],
// aligned and zero-padded. xlo/xhi hold the low/high nibbles of the packed 4-bit row (element
// 2i / 2i+1), which pair with the in-register split of the weight bytes, so no interleaving is
// needed.
struct PreparedX {
  int64_t rbp = 0;     // padded bytes of one nibble plane
  int64_t k8p = 0;     // padded elements of the 8-bit part
  int64_t stride = 0;  // bytes per prepared row
  std::unique_ptr<uint8_t[]> storage;
  uint8_t* data = nullptr;
};

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

template <class Isa>
void prepare_row(const format::QuantizedActivationsView& x, int64_t m, const PreparedX& p) {
  const int64_t rb = format::packed4_row_bytes(x.K4);
  uint8_t* lo = p.data + m * p.stride;
  uint8_t* hi = lo + p.rbp;
  auto* x8 = reinterpret_cast<typename Isa::X8*>(hi + p.rbp);
  std::memset(lo, 0, static_cast<size_t>(p.stride));
  if (x.K4 > 0) {
    const uint8_t* src = x.xq4 + m * rb;
    for (int64_t b = 0; b < rb; ++b) {
      lo[b] = src[b] & 0x0F;
      hi[b] = src[b] >> 4;
    }
    if (x.K4 & 1) hi[rb - 1] = 0;  // the pad nibble never contributes
  }
  if (x.K8 > 0) std::copy(x.xq8 + m * x.K8, x.xq8 + (m + 1) * x.K8, x8);
}

// The widest instantiated tile of MR rows that is at most nr_max columns; sets *nr to its width.
template <class Isa, int MR, int I = 0>
TileFn pick_nr(int nr_max, int* nr) {
  constexpr int NR = kTileWidths[I];
  if constexpr (MR * NR > Isa::kAccumulators) {
    return pick_nr<Isa, MR, I + 1>(nr_max, nr);
  } else if constexpr (I + 1 == kTileWidthCount) {
    *nr = NR;
    return Isa::template tile<MR, NR>();
  } else {
    if (nr_max >= NR) {
      *nr = NR;
      return Isa::template tile<MR, NR>();
    }
    return pick_nr<Isa, MR, I + 1>(nr_max, nr);
  }
}

template <class Isa, int MR = 1>
TileFn pick_tile(int mr, int nr_max, int* nr) {
  if constexpr (MR == Isa::kMaxRows) {
    return pick_nr<Isa, MR>(nr_max, nr);
  } else {
    return mr == MR ? pick_nr<Isa, MR>(nr_max, nr) : pick_tile<Isa, MR + 1>(mr, nr_max, nr);
  }
}

// Rows [m0, m1) x columns [n0, n1): the X micro-panel (mr rows) stays in L1 while the block's
// weight rows stream from L2.
template <class Isa>
void run_block(const format::PackedLinearView& w, const PreparedX& p, const GemmOutput& out,
               int64_t m0, int64_t m1, int64_t n0, int64_t n1, int mr_main, int nr_main) {
  const int64_t rb = format::packed4_row_bytes(w.dims.K4);
  const int64_t K8 = w.dims.K8;
  alignas(64) int32_t t4[Isa::kAccumulators];
  alignas(64) int32_t t8[Isa::kAccumulators];
  for (int64_t m = m0; m < m1; m += mr_main) {
    const int mr = static_cast<int>(std::min<int64_t>(mr_main, m1 - m));
    for (int64_t n = n0; n < n1;) {
      int nr = 0;
      const TileFn fn = pick_tile<Isa>(mr, static_cast<int>(std::min<int64_t>(nr_main, n1 - n)), &nr);
      fn(p.data + m * p.stride, p.stride, p.rbp, w.w4 + n * rb, rb, w.w8 + n * K8, K8, t4, t8);
      emit_tile(out, m, n, mr, nr, t4, t8);
      n += nr;
    }
  }
}

// The whole GEMM with Isa's tiles: prepares the activation rows, then sweeps the cache blocks in
// parallel with the largest tiles (kMaxRows rows, or all of M when smaller, and the widest NR
// that fits the accumulators), narrower ones at the edges.
template <class Isa>
void gemm_tiled(const format::QuantizedActivationsView& x, const format::PackedLinearView& w,
                const GemmOutput& out) {
  const int64_t M = x.M, N = w.dims.N;
  const int64_t rb = format::packed4_row_bytes(w.dims.K4);
  PreparedX p;
  p.rbp = round_up(rb, Isa::kPad4);
  p.k8p = round_up(w.dims.K8, Isa::kPad8);
  p.stride = 2 * p.rbp + p.k8p * static_cast<int64_t>(sizeof(typename Isa::X8));
  p.storage.reset(new uint8_t[static_cast<size_t>(M * p.stride + Isa::kAlign)]);
  p.data = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p.storage.get()) + Isa::kAlign - 1) &
                                      ~uintptr_t(Isa::kAlign - 1));
#pragma omp parallel for schedule(static) if (M * p.stride >= (int64_t{1} << 16))
  for (int64_t m = 0; m < M; ++m) prepare_row<Isa>(x, m, p);

  const int mr_main = static_cast<int>(std::min<int64_t>(M, Isa::kMaxRows));
  int nr_main = 1;
  for (int width : kTileWidths) {
    if (mr_main * width <= Isa::kAccumulators) {
      nr_main = width;
      break;
    }
  }
  const GemmBlocking blocks = choose_gemm_blocking(M, N, rb + w.dims.K8, p.stride);
  const int64_t mb = blocks.mb, nb = blocks.nb, n_blocks = blocks.n_blocks, tasks = blocks.tasks();
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t mi = t / n_blocks, ni = t % n_blocks;
    run_block<Isa>(w, p, out, mi * mb, std::min(M, (mi + 1) * mb), ni * nb, std::min(N, (ni + 1) * nb),
                   mr_main, nr_main);
  }
}

}  // namespace resq::cpu::detail
