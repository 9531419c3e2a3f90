// Packed W4A4 + W8A8 GEMM: argument checks, the scalar reference, dispatch to the AVX2 / AVX-512
// VNNI kernels, the shared fp32 epilogue and the bf16 output conversion.
//
// This file is compiled with fp contraction off, so the epilogue loops below round each product
// and sum exactly as format::epilogue_value specifies, even if the library is built with -march
// flags that enable FMA (the tests compare them bit for bit with the reference).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "cpu/gemm.h"

#include <cstring>
#include <string>

#include "cpu/isa_internal.h"
#include "resq/common/error.h"

namespace resq::cpu {
namespace {

using format::packed4_row_bytes;
using format::PackedLinearView;
using format::QuantizedActivationsView;

void check_ptr(const char* fn, const void* p, const char* name, bool required) {
  if (required && p == nullptr) {
    throw ShapeError(std::string(fn) + ": '" + name + "' is null but its tensor is non-empty");
  }
}

// Checks dims and the pointers every GEMM needs; `with_epilogue` adds scales, zeros, row sums.
void check_gemm_args(const char* fn, const QuantizedActivationsView& x, const PackedLinearView& w,
                     bool with_epilogue, const void* out_a, const char* out_a_name,
                     const void* out_b, const char* out_b_name) {
  const int64_t M = x.M, N = w.dims.N, K4 = w.dims.K4, K8 = w.dims.K8;
  if (M < 0 || N < 0 || x.K4 < 0 || x.K8 < 0 || K4 < 0 || K8 < 0) {
    throw ShapeError(std::string(fn) + ": dimensions must be >= 0, got M = " + std::to_string(M) +
                     ", x.K4 = " + std::to_string(x.K4) + ", x.K8 = " + std::to_string(x.K8) +
                     ", N = " + std::to_string(N) + ", w.K4 = " + std::to_string(K4) +
                     ", w.K8 = " + std::to_string(K8));
  }
  if (x.K4 != K4 || x.K8 != K8) {
    throw ShapeError(std::string(fn) + ": activations have K4 = " + std::to_string(x.K4) +
                     ", K8 = " + std::to_string(x.K8) + " but the packed weight expects K4 = " +
                     std::to_string(K4) + ", K8 = " + std::to_string(K8));
  }
  if (K4 > format::kMaxPartDim || K8 > format::kMaxPartDim) {
    throw ShapeError(std::string(fn) + ": K4 = " + std::to_string(K4) + ", K8 = " +
                     std::to_string(K8) + " exceed the packed format limit of " +
                     std::to_string(format::kMaxPartDim) + " columns per part");
  }
  const bool mn = M > 0 && N > 0;
  // The tiles read weight rows back to back: the compact layout (format::PackedLinear as packed or
  // read), not the GPU's 16-byte strides.
  if ((K4 > 0 && w.ldw4 != format::packed4_row_bytes(K4)) || (K8 > 0 && w.ldw8 != K8)) {
    throw ShapeError(std::string(fn) + ": weight row strides ldw4 = " + std::to_string(w.ldw4) + ", ldw8 = " +
                     std::to_string(w.ldw8) + " are not compact (" + std::to_string(format::packed4_row_bytes(K4)) +
                     ", " + std::to_string(K8) + " bytes): the CPU kernels read unpadded rows");
  }
  check_ptr(fn, x.xq4, "x.xq4", mn && K4 > 0);
  check_ptr(fn, x.xq8, "x.xq8", mn && K8 > 0);
  check_ptr(fn, w.w4, "w.w4", mn && K4 > 0);
  check_ptr(fn, w.w8, "w.w8", mn && K8 > 0);
  if (with_epilogue) {
    check_ptr(fn, x.sx4, "x.sx4", mn && K4 > 0);
    check_ptr(fn, x.zx4, "x.zx4", mn && K4 > 0);
    check_ptr(fn, x.sx8, "x.sx8", mn && K8 > 0);
    check_ptr(fn, x.zx8, "x.zx8", mn && K8 > 0);
    check_ptr(fn, w.sw4, "w.sw4", mn && K4 > 0);
    check_ptr(fn, w.rs4, "w.rs4", mn && K4 > 0);
    check_ptr(fn, w.sw8, "w.sw8", mn && K8 > 0);
    check_ptr(fn, w.rs8, "w.rs8", mn && K8 > 0);
  }
  check_ptr(fn, out_a, out_a_name, mn);
  check_ptr(fn, out_b, out_b_name, mn);
}

// Epilogue of one element straight from format::epilogue_value (the specification); the
// optimized kernels go through emit_tile's vectorizable loops instead, and the tests check that
// both give the same bits.
float epilogue_one(const QuantizedActivationsView& x, const PackedLinearView& w, int64_t m,
                   int64_t n, int32_t a4, int32_t a8) {
  const bool has4 = w.dims.K4 > 0, has8 = w.dims.K8 > 0, has_bias = w.bias != nullptr;
  return format::epilogue_value(has4, a4, has4 ? x.sx4[m] : 0.0f, has4 ? x.zx4[m] : 0,
                                has4 ? w.sw4[n] : 0.0f, has4 ? w.rs4[n] : 0,  //
                                has8, a8, has8 ? x.sx8[m] : 0.0f, has8 ? x.zx8[m] : 0,
                                has8 ? w.sw8[n] : 0.0f, has8 ? w.rs8[n] : 0,  //
                                has_bias, has_bias ? w.bias[n] : 0.0f);
}

// Scalar reference: exact int32 dot products straight from the packed bytes, then the
// specified epilogue. Deliberately simple; the optimized kernels are tested against it.
void gemm_reference(const detail::GemmOutput& out) {
  const QuantizedActivationsView& x = *out.x;
  const PackedLinearView& w = *out.w;
  const int64_t M = x.M, N = w.dims.N, K4 = w.dims.K4, K8 = w.dims.K8;
  const int64_t rb = packed4_row_bytes(K4);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      int32_t a4 = 0;
      int32_t a8 = 0;
      for (int64_t k = 0; k < K4; ++k) {
        a4 += format::uint4_get(x.xq4 + m * rb, k) * format::int4_get(w.w4 + n * rb, k);
      }
      for (int64_t k = 0; k < K8; ++k) {
        a8 += static_cast<int32_t>(x.xq8[m * K8 + k]) * static_cast<int32_t>(w.w8[n * K8 + k]);
      }
      if (out.acc4 != nullptr) out.acc4[m * N + n] = a4;
      if (out.acc8 != nullptr) out.acc8[m * N + n] = a8;
      if (out.y != nullptr) out.y[m * N + n] = epilogue_one(x, w, m, n, a4, a8);
    }
  }
}

void run_gemm(const detail::GemmOutput& out, CpuKernel kernel) {
  if (out.x->M == 0 || out.w->dims.N == 0) return;
  switch (kernel) {
    case CpuKernel::kVnni: detail::gemm_avx512_vnni(*out.x, *out.w, out); return;
    case CpuKernel::kAvx2: detail::gemm_avx2(*out.x, *out.w, out); return;
    default: gemm_reference(out); return;
  }
}

}  // namespace

namespace detail {

void emit_tile(const GemmOutput& out, int64_t m0, int64_t n0, int mr, int nr, const int32_t* t4,
               const int32_t* t8) {
  const int64_t N = out.w->dims.N;
  if (out.acc4 != nullptr) {
    for (int i = 0; i < mr; ++i) {
      std::memcpy(out.acc4 + (m0 + i) * N + n0, t4 + i * nr, sizeof(int32_t) * nr);
    }
  }
  if (out.acc8 != nullptr) {
    for (int i = 0; i < mr; ++i) {
      std::memcpy(out.acc8 + (m0 + i) * N + n0, t8 + i * nr, sizeof(int32_t) * nr);
    }
  }
  if (out.y == nullptr) return;
  const QuantizedActivationsView& x = *out.x;
  const PackedLinearView& w = *out.w;
  if (w.dims.K4 == 0 || w.dims.K8 == 0) {
    for (int i = 0; i < mr; ++i) {
      for (int j = 0; j < nr; ++j) {
        out.y[(m0 + i) * N + n0 + j] = epilogue_one(x, w, m0 + i, n0 + j, t4[i * nr + j],
                                                    t8[i * nr + j]);
      }
    }
    return;
  }
  // Both parts present (the common case): format::epilogue_value written as plain loops that the
  // compiler vectorizes, with exactly its operation order: ((sx4*sw4)*d4 + (sx8*sw8)*d8) + bias.
  const float* sw4 = w.sw4 + n0;
  const float* sw8 = w.sw8 + n0;
  const int32_t* rs4 = w.rs4 + n0;
  const int32_t* rs8 = w.rs8 + n0;
  for (int i = 0; i < mr; ++i) {
    const int64_t m = m0 + i;
    const float sx4 = x.sx4[m], sx8 = x.sx8[m];
    const uint32_t zx4 = static_cast<uint32_t>(x.zx4[m]), zx8 = static_cast<uint32_t>(x.zx8[m]);
    const int32_t* a4 = t4 + i * nr;
    const int32_t* a8 = t8 + i * nr;
    float* yrow = out.y + m * N + n0;
    for (int j = 0; j < nr; ++j) {
      const int32_t d4 = static_cast<int32_t>(static_cast<uint32_t>(a4[j]) -
                                              zx4 * static_cast<uint32_t>(rs4[j]));
      const int32_t d8 = static_cast<int32_t>(static_cast<uint32_t>(a8[j]) -
                                              zx8 * static_cast<uint32_t>(rs8[j]));
      const float v4 = (sx4 * sw4[j]) * static_cast<float>(d4);
      const float v8 = (sx8 * sw8[j]) * static_cast<float>(d8);
      yrow[j] = v4 + v8;
    }
    if (w.bias != nullptr) {
      for (int j = 0; j < nr; ++j) yrow[j] = yrow[j] + w.bias[n0 + j];
    }
  }
}

}  // namespace detail

void gemm_int_accumulate_reference(const QuantizedActivationsView& x, const PackedLinearView& w,
                                   int32_t* acc4, int32_t* acc8) {
  check_gemm_args("gemm_int_accumulate_reference", x, w, false, acc4, "acc4", acc8, "acc8");
  detail::GemmOutput out{&x, &w, acc4, acc8, nullptr};
  run_gemm(out, CpuKernel::kReference);
}

void gemm_int_accumulate(const QuantizedActivationsView& x, const PackedLinearView& w,
                         int32_t* acc4, int32_t* acc8, CpuKernel kernel) {
  check_gemm_args("gemm_int_accumulate", x, w, false, acc4, "acc4", acc8, "acc8");
  detail::GemmOutput out{&x, &w, acc4, acc8, nullptr};
  run_gemm(out, resolve_cpu_kernel(kernel));
}

void gemm_w4a4_w8a8_reference(const QuantizedActivationsView& x, const PackedLinearView& w,
                              float* y) {
  check_gemm_args("gemm_w4a4_w8a8_reference", x, w, true, y, "y", y, "y");
  detail::GemmOutput out{&x, &w, nullptr, nullptr, y};
  run_gemm(out, CpuKernel::kReference);
}

void gemm_w4a4_w8a8(const QuantizedActivationsView& x, const PackedLinearView& w, float* y,
                    CpuKernel kernel) {
  check_gemm_args("gemm_w4a4_w8a8", x, w, true, y, "y", y, "y");
  detail::GemmOutput out{&x, &w, nullptr, nullptr, y};
  run_gemm(out, resolve_cpu_kernel(kernel));
}

void convert_f32_to_bf16(const float* src, int64_t n, uint16_t* dst) {
  if (n < 0) throw ShapeError("convert_f32_to_bf16: n = " + std::to_string(n) + " must be >= 0");
  check_ptr("convert_f32_to_bf16", src, "src", n > 0);
  check_ptr("convert_f32_to_bf16", dst, "dst", n > 0);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, src + i, sizeof(bits));
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
      dst[i] = static_cast<uint16_t>((bits >> 16) | 0x0040u);  // NaN: keep sign, force quiet
      continue;
    }
    // Round to nearest even on the 16 dropped bits; a carry into the exponent is the correct
    // rounding up (and overflows to inf exactly when IEEE rounding would).
    const uint32_t lsb = (bits >> 16) & 1u;
    bits += 0x7FFFu + lsb;
    dst[i] = static_cast<uint16_t>(bits >> 16);
  }
}

}  // namespace resq::cpu
