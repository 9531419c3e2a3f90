// Finiteness checks of stored tensors on their raw bits (io/tensor_checks.h): an element is not
// finite when its exponent field is all ones, whatever the dtype.
#include "resq/io/tensor_checks.h"

#include <cstring>

#include "resq/common/error.h"

namespace resq {
namespace {

// Index of the first element whose exponent bits (mask) are all ones, or -1.
template <typename Bits>
int64_t first_all_ones(const uint8_t* data, int64_t n, Bits mask) {
  for (int64_t i = 0; i < n; ++i) {
    Bits b;
    std::memcpy(&b, data + i * static_cast<int64_t>(sizeof(Bits)), sizeof(Bits));
    if ((b & mask) == mask) return i;
  }
  return -1;
}

// "NaN", "+inf" or "-inf" for the non-finite element i.
template <typename Bits>
std::string describe(const uint8_t* data, int64_t i, Bits exponent_mask) {
  Bits b;
  std::memcpy(&b, data + i * static_cast<int64_t>(sizeof(Bits)), sizeof(Bits));
  const Bits sign = static_cast<Bits>(Bits{1} << (8 * sizeof(Bits) - 1));
  const Bits mantissa = static_cast<Bits>(~(exponent_mask | sign));
  if (b & mantissa) return "NaN";
  return (b & sign) ? "-inf" : "+inf";
}

}  // namespace

int64_t first_non_finite(const TensorView& v) {
  const int64_t n = static_cast<int64_t>(v.nbytes / (v.dtype == DType::F64 ? 8 : v.dtype == DType::F32 ? 4 : 2));
  switch (v.dtype) {
    case DType::F64: return first_all_ones<uint64_t>(v.data, n, 0x7FF0000000000000ULL);
    case DType::F32: return first_all_ones<uint32_t>(v.data, n, 0x7F800000u);
    case DType::BF16: return first_all_ones<uint16_t>(v.data, n, 0x7F80);
    case DType::F16: return first_all_ones<uint16_t>(v.data, n, 0x7C00);
    default: return -1;
  }
}

void require_finite(const TensorView& v, const std::string& why) {
  const int64_t i = first_non_finite(v);
  if (i < 0) return;
  std::string what;
  switch (v.dtype) {
    case DType::F64: what = describe<uint64_t>(v.data, i, 0x7FF0000000000000ULL); break;
    case DType::F32: what = describe<uint32_t>(v.data, i, 0x7F800000u); break;
    case DType::BF16: what = describe<uint16_t>(v.data, i, 0x7F80); break;
    default: what = describe<uint16_t>(v.data, i, 0x7C00); break;
  }
  throw FormatError(v.file + ": tensor '" + v.name + "' element " + std::to_string(i) + " is " + what + ": " + why);
}

void require_finite(const TensorStore& store, const std::string& why) {
  for (const auto& file : store.files()) {
    for (const auto& [name, view] : file->tensors()) {
      require_finite(view, why);
      // The scan maps every page of a multi-GiB model: drop them tensor by tensor, so that the check
      // does not raise the process's peak resident memory.
      file->release_pages();
    }
  }
}

}  // namespace resq
