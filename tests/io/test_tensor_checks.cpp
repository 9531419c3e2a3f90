// Tests of the in-place finiteness checks (resq/io/tensor_checks.h): NaN, +inf and -inf found at
// their index in every floating dtype, finite extremes (max, subnormals) accepted, integer tensors
// ignored, and the message naming file, tensor, element and purpose.
#include "resq/io/tensor_checks.h"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <vector>

#include "common/test_util.h"
#include "resq/common/error.h"

namespace resq {
namespace {

template <typename Bits>
TensorView view_of(DType dtype, const std::vector<Bits>& bits) {
  TensorView v;
  v.name = "w";
  v.dtype = dtype;
  v.shape = {static_cast<int64_t>(bits.size())};
  v.data = reinterpret_cast<const uint8_t*>(bits.data());
  v.nbytes = bits.size() * sizeof(Bits);
  v.file = "m.safetensors";
  return v;
}

TEST(FirstNonFinite, EveryFloatingDtype) {
  // F32: max finite, smallest subnormal, -0 are finite; then +inf at 3.
  const std::vector<uint32_t> f32 = {0x7F7FFFFFu, 0x00000001u, 0x80000000u, 0x7F800000u, 0x7FC00000u};
  EXPECT_EQ(first_non_finite(view_of(DType::F32, f32)), 3);
  const std::vector<uint16_t> bf16 = {0x3F80, 0x7F7F, 0xFF80, 0x7FC0};  // 1, max, -inf, NaN
  EXPECT_EQ(first_non_finite(view_of(DType::BF16, bf16)), 2);
  const std::vector<uint16_t> f16 = {0x3C00, 0x7BFF, 0x0001, 0x7E00};  // 1, max, subnormal, NaN
  EXPECT_EQ(first_non_finite(view_of(DType::F16, f16)), 3);
  double nan = std::numeric_limits<double>::quiet_NaN(), one = 1.0;
  uint64_t nan_bits, one_bits;
  std::memcpy(&nan_bits, &nan, 8);
  std::memcpy(&one_bits, &one, 8);
  EXPECT_EQ(first_non_finite(view_of(DType::F64, std::vector<uint64_t>{one_bits, nan_bits})), 1);
  EXPECT_EQ(first_non_finite(view_of(DType::F64, std::vector<uint64_t>{one_bits, one_bits})), -1);
  // Integer tensors hold no NaN, whatever their bits.
  EXPECT_EQ(first_non_finite(view_of(DType::I32, std::vector<uint32_t>{0x7F800000u})), -1);
  EXPECT_EQ(first_non_finite(view_of(DType::F32, std::vector<uint32_t>{})), -1);
}

TEST(RequireFinite, NamesFileTensorElementAndPurpose) {
  const std::vector<uint32_t> f32 = {0x3F800000u, 0xFF800000u};
  EXPECT_EQ(test::message_of<FormatError>([&] { require_finite(view_of(DType::F32, f32), "cannot quantize it"); }),
            "m.safetensors: tensor 'w' element 1 is -inf: cannot quantize it");
  const std::vector<uint16_t> bf16 = {0x7FC1};
  EXPECT_EQ(test::message_of<FormatError>([&] { require_finite(view_of(DType::BF16, bf16), "x"); }),
            "m.safetensors: tensor 'w' element 0 is NaN: x");
  const std::vector<uint32_t> ok = {0x3F800000u};
  EXPECT_NO_THROW(require_finite(view_of(DType::F32, ok), "x"));
}

}  // namespace
}  // namespace resq
