// PackedLinear, the one owning host type of a packed linear: the packing function (codes -> rows +
// row sums), the reader's constructor from stored rows, re-striding (the GPU layout) and unpacking.
#include "resq/format/packed_linear.h"

#include <cstring>
#include <string>

#include "resq/common/error.h"

namespace resq::format {
namespace {

template <typename T>
const T* data_or_null(const std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

void check_dims(const std::string& fn, PackedLinearDims d) {
  if (d.N < 0 || d.K4 < 0 || d.K8 < 0) {
    throw ShapeError(fn + ": dimensions must be >= 0, got N = " + std::to_string(d.N) + ", K4 = " + std::to_string(d.K4) +
                     ", K8 = " + std::to_string(d.K8));
  }
  if (d.K4 > kMaxPartDim || d.K8 > kMaxPartDim) {
    throw ShapeError(fn + ": K4 = " + std::to_string(d.K4) + ", K8 = " + std::to_string(d.K8) +
                     " exceed the packed format limit of " + std::to_string(kMaxPartDim) + " columns per part");
  }
}

void check_ptr(const std::string& fn, const void* p, const char* name, bool required) {
  if (required && p == nullptr) throw ShapeError(fn + ": '" + name + "' is null but its tensor is non-empty");
}

void check_size(const std::string& fn, size_t got, int64_t want, const char* name) {
  if (static_cast<int64_t>(got) != want) {
    throw ShapeError(fn + ": '" + name + "' has " + std::to_string(got) + " elements, expected " + std::to_string(want));
  }
}

// Row sums of stored rows (the reader's path; pack_linear sums the codes as it packs them).
void fill_row_sums(PackedLinear& p) {
  const size_t n = static_cast<size_t>(p.dims.N);
  p.rs4.assign(n, 0);
  p.rs8.assign(n, 0);
  packed_weight_row_sums_reference(p.w4.data(), p.w8.data(), p.dims.N, p.dims.K4, p.dims.K8, p.rs4.data(), p.rs8.data());
}

void check_column_order(const std::string& fn, const int32_t* order, int64_t K) {
  std::vector<bool> seen(static_cast<size_t>(K), false);
  for (int64_t j = 0; j < K; ++j) {
    const int32_t c = order[j];
    if (c < 0 || c >= K || seen[static_cast<size_t>(c)]) {
      throw ShapeError(fn + ": column order entry " + std::to_string(j) + " = " + std::to_string(c) +
                       " is outside [0, " + std::to_string(K) + ") or repeated");
    }
    seen[static_cast<size_t>(c)] = true;
  }
}

}  // namespace

PackedLinearView PackedLinear::view() const {
  return {dims, data_or_null(w4), ldw4, data_or_null(w8), ldw8, sw4.data(), sw8.data(), rs4.data(), rs8.data(), data_or_null(bias)};
}

PackedLinear pack_linear(const int8_t* q, const float* sw4, const float* sw8, const float* bias, PackedLinearDims dims,
                         const PackOptions& o) {
  const std::string& fn = o.what;
  check_dims(fn, dims);
  const int64_t N = dims.N, K4 = dims.K4, K8 = dims.K8, K = dims.K(), rb4 = packed4_row_bytes(K4);
  if (o.bits_low < 1 || o.bits_low > kBits4 || o.bits_high < 1 || o.bits_high > kBits8) {
    throw UsageError(fn + ": bit widths " + std::to_string(o.bits_low) + "/" + std::to_string(o.bits_high) +
                     " do not fit the packed 4/8-bit containers");
  }
  check_ptr(fn, q, "q", N > 0 && K > 0);
  check_ptr(fn, sw4, "sw4", N > 0);
  check_ptr(fn, sw8, "sw8", N > 0);
  if (o.column_order) check_column_order(fn, o.column_order, K);
  const int lo4 = -(1 << (o.bits_low - 1)), hi4 = (1 << (o.bits_low - 1)) - 1;
  const int lo8 = -(1 << (o.bits_high - 1)), hi8 = (1 << (o.bits_high - 1)) - 1;
  PackedLinear p;
  p.dims = dims;
  p.ldw4 = rb4;
  p.ldw8 = K8;
  p.w4.assign(static_cast<size_t>(N * rb4), 0);
  p.w8.assign(static_cast<size_t>(N * K8), 0);
  p.rs4.assign(static_cast<size_t>(N), 0);
  p.rs8.assign(static_cast<size_t>(N), 0);
  std::vector<int8_t> row(static_cast<size_t>(K));  // row n of q in packed column order
  for (int64_t n = 0; n < N; ++n) {
    const int8_t* src = q + n * K;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t c = o.column_order ? o.column_order[j] : j;
      const int v = src[c];
      const bool low = j < K4;
      if (v < (low ? lo4 : lo8) || v > (low ? hi4 : hi8)) {
        throw ShapeError(fn + ": q[" + std::to_string(n) + ", " + std::to_string(c) + "] = " + std::to_string(v) +
                         " is outside the " + std::to_string(low ? o.bits_low : o.bits_high) + "-bit range [" +
                         std::to_string(low ? lo4 : lo8) + ", " + std::to_string(low ? hi4 : hi8) + "]");
      }
      row[static_cast<size_t>(j)] = static_cast<int8_t>(v);
    }
    pack_weights_reference(row.data(), 1, K4, K8, p.w4.data() + n * rb4, p.w8.data() + n * K8);
    weight_row_sums_reference(row.data(), 1, K4, K8, p.rs4.data() + n, p.rs8.data() + n);
  }
  p.sw4.assign(sw4, sw4 + N);
  p.sw8.assign(sw8, sw8 + N);
  if (bias != nullptr) p.bias.assign(bias, bias + N);
  return p;
}

PackedLinear packed_linear_from_rows(PackedLinearDims dims, std::vector<uint8_t> w4, std::vector<int8_t> w8,
                                     std::vector<float> sw4, std::vector<float> sw8, std::vector<float> bias) {
  const std::string fn = "packed_linear_from_rows";
  check_dims(fn, dims);
  const int64_t N = dims.N;
  check_size(fn, w4.size(), N * packed4_row_bytes(dims.K4), "w4");
  check_size(fn, w8.size(), N * dims.K8, "w8");
  check_size(fn, sw4.size(), N, "sw4");
  check_size(fn, sw8.size(), N, "sw8");
  if (!bias.empty()) check_size(fn, bias.size(), N, "bias");
  PackedLinear p;
  p.dims = dims;
  p.ldw4 = packed4_row_bytes(dims.K4);
  p.ldw8 = dims.K8;
  p.w4 = std::move(w4);
  p.w8 = std::move(w8);
  p.sw4 = std::move(sw4);
  p.sw8 = std::move(sw8);
  p.bias = std::move(bias);
  fill_row_sums(p);
  return p;
}

PackedLinear restride(const PackedLinearView& w, int64_t row_align) {
  const std::string fn = "restride";
  const PackedLinearDims& d = w.dims;
  check_dims(fn, d);
  const int64_t N = d.N, rb4 = packed4_row_bytes(d.K4), rb8 = d.K8;
  if (row_align < 1) throw ShapeError(fn + ": row alignment " + std::to_string(row_align) + " < 1");
  if (N > 0) {
    if (d.K4 > 0 && (!w.w4 || !w.sw4 || !w.rs4)) throw ShapeError(fn + ": w4, sw4 and rs4 are required when K4 > 0");
    if (d.K8 > 0 && (!w.w8 || !w.sw8 || !w.rs8)) throw ShapeError(fn + ": w8, sw8 and rs8 are required when K8 > 0");
    if ((d.K4 > 0 && w.ldw4 < rb4) || (d.K8 > 0 && w.ldw8 < rb8)) {
      throw ShapeError(fn + ": strides ldw4 = " + std::to_string(w.ldw4) + ", ldw8 = " + std::to_string(w.ldw8) +
                       " are shorter than the rows (" + std::to_string(rb4) + ", " + std::to_string(rb8) + " bytes)");
    }
  }
  PackedLinear g;
  g.dims = d;
  g.ldw4 = round_up(rb4, row_align);
  g.ldw8 = round_up(rb8, row_align);
  g.w4.assign(static_cast<size_t>(N * g.ldw4), 0);
  g.w8.assign(static_cast<size_t>(N * g.ldw8), 0);
  for (int64_t n = 0; n < N; ++n) {
    if (rb4 > 0) {
      std::memcpy(g.w4.data() + n * g.ldw4, w.w4 + n * w.ldw4, static_cast<size_t>(rb4));
      if (d.K4 % 2 == 1) g.w4[static_cast<size_t>(n * g.ldw4 + rb4 - 1)] &= 0x0F;
    }
    if (rb8 > 0) std::memcpy(g.w8.data() + n * g.ldw8, w.w8 + n * w.ldw8, static_cast<size_t>(rb8));
  }
  const size_t n = static_cast<size_t>(N);
  g.sw4.assign(n, 1.0f);
  g.sw8.assign(n, 1.0f);
  g.rs4.assign(n, 0);
  g.rs8.assign(n, 0);
  if (N > 0 && w.sw4) std::memcpy(g.sw4.data(), w.sw4, n * sizeof(float));
  if (N > 0 && w.sw8) std::memcpy(g.sw8.data(), w.sw8, n * sizeof(float));
  if (N > 0 && w.rs4) std::memcpy(g.rs4.data(), w.rs4, n * sizeof(int32_t));
  if (N > 0 && w.rs8) std::memcpy(g.rs8.data(), w.rs8, n * sizeof(int32_t));
  if (N > 0 && w.bias) g.bias.assign(w.bias, w.bias + N);
  return g;
}

std::vector<int8_t> unpack_linear(const PackedLinearView& w) {
  const int64_t N = w.dims.N, K4 = w.dims.K4, K8 = w.dims.K8, K = K4 + K8;
  std::vector<int8_t> q(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K4; ++k) q[n * K + k] = static_cast<int8_t>(int4_get(w.w4 + n * w.ldw4, k));
    for (int64_t k = 0; k < K8; ++k) q[n * K + K4 + k] = w.w8[n * w.ldw8 + k];
  }
  return q;
}

}  // namespace resq::format
