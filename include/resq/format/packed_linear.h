// The one owning host type of a packed 4/8-bit linear (PackedLinear: the layout of packed.h with row
// strides, scales, row sums, bias) and the one packing function that makes it from int8 codes.
// The checkpoint writer stores it, the checkpoint reader returns it, the CPU kernels read its compact
// view and the GPU runtime uploads restride(view, 16) of it. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "resq/format/packed.h"

namespace resq::format {

// One packed linear W[N, K4 + K8] in host memory. Row n of the 4-bit part is w4[n * ldw4, ...) with
// packed4_row_bytes(K4) logical bytes (low nibble first), row n of the 8-bit part w8[n * ldw8, ...)
// with K8 bytes; ldw4 / ldw8 (bytes) are compact (= the logical row) as packed and as read from a
// checkpoint, 16-byte multiples after restride(…, 16) for the GPU. Bytes past a logical row and an
// odd K4's pad nibble are 0. sw4, sw8, rs4, rs8 are [N] for both parts (an empty part: the scale
// it was given, row sum 0); rs4[n] = Σ_k q4[n, k], rs8[n] = Σ_k q8[n, k] (packed.h).
struct PackedLinear {
  PackedLinearDims dims;
  int64_t ldw4 = 0;               // bytes, >= packed4_row_bytes(K4)
  int64_t ldw8 = 0;               // bytes, >= K8
  std::vector<uint8_t> w4;        // [N][ldw4]
  std::vector<int8_t> w8;         // [N][ldw8]
  std::vector<float> sw4, sw8;    // [N]
  std::vector<int32_t> rs4, rs8;  // [N]
  std::vector<float> bias;        // [N] or empty
  // Pointers into this storage (w4 / w8 null when their part is empty, bias null when absent).
  PackedLinearView view() const;
};

// What pack_linear checks and how it names the linear in its errors.
struct PackOptions {
  // [K]: packed column j takes column column_order[j] of q (a permutation of [0, K), checked);
  // null: q is already in packed order (4-bit columns first).
  const int32_t* column_order = nullptr;
  // Every code of the first K4 packed columns lies in [-2^(bits_low-1), 2^(bits_low-1) - 1], of the
  // others in the bits_high range (1 <= bits_low <= 4, 1 <= bits_high <= 8).
  int bits_low = kBits4;
  int bits_high = kBits8;
  std::string what = "pack_linear";  // prefix of every error message (e.g. "checkpoint: layers.0.o_proj")
};

// THE packing function: q int8 [N][K4 + K8] (row-major; original column order when
// o.column_order is given), scales sw4, sw8 float [N], bias float [N] or null -> a compact
// PackedLinear with its row sums. Throws ShapeError for negative dims, a part above kMaxPartDim, a
// null required pointer, a bad column order or a code outside its part's range (naming n and the
// column of q).
PackedLinear pack_linear(const int8_t* q, const float* sw4, const float* sw8, const float* bias, PackedLinearDims dims,
                         const PackOptions& o = {});

// Packed rows that are already validated (a checkpoint's qweight4 [N][packed4_row_bytes(K4)] and
// qweight8 [N][K8]: codes in range, pad nibble 0), scales [N] and bias ([N] or empty) -> the
// compact PackedLinear, row sums computed from the rows. Throws ShapeError on a size mismatch.
PackedLinear packed_linear_from_rows(PackedLinearDims dims, std::vector<uint8_t> w4, std::vector<int8_t> w8,
                                     std::vector<float> sw4, std::vector<float> sw8, std::vector<float> bias);

// The same linear with row strides rounded up to multiples of row_align bytes (1: compact; 16: the
// GPU layout of kernels/cuda/gpu_layout.h); padding bytes and an odd K4's pad nibble are 0; scales,
// row sums and bias copied (a missing scale or row sum of an empty part becomes 1 / 0). Throws
// ShapeError for negative dims, a part above kMaxPartDim, row_align < 1, strides smaller than a
// row or a missing required pointer.
PackedLinear restride(const PackedLinearView& w, int64_t row_align);

// Codes q int8 [N][K4 + K8] in packed column order (inverse of pack_linear without a column order).
std::vector<int8_t> unpack_linear(const PackedLinearView& w);

}  // namespace resq::format
