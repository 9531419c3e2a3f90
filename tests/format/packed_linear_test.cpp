// Tests of format::PackedLinear (resq/format/packed_linear.h): pack_linear's bytes, row sums, column
// order and range checks against hand-computed values; the reader's constructor from stored rows;
// restride / unpack round trips on random ragged shapes. Torch-free (runs under ASan too).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "resq/common/error.h"
#include "resq/format/packed_linear.h"

namespace resq::format {
namespace {

TEST(PackLinear, BuildsViewsAndChecksRange) {
  const int8_t q[2 * 5] = {-8, 7, -1, -128, 127, 1, -2, 3, 5, -6};
  const float s4[2] = {0.5f, 0.25f}, s8[2] = {0.1f, 0.2f}, bias[2] = {1.0f, -1.0f};
  const PackedLinear p = pack_linear(q, s4, s8, bias, {2, 3, 2});
  // Row 0: -8 -> 0x8 (low), 7 -> 0x7 (high): 0x78; -1 -> 0xF with pad nibble 0: 0x0F.
  EXPECT_EQ(p.w4, (std::vector<uint8_t>{0x78, 0x0F, 0xE1, 0x03}));
  EXPECT_EQ(p.w8, (std::vector<int8_t>{-128, 127, 5, -6}));
  EXPECT_EQ(p.ldw4, 2);
  EXPECT_EQ(p.ldw8, 2);
  EXPECT_EQ(p.rs4, (std::vector<int32_t>{-2, 2}));
  EXPECT_EQ(p.rs8, (std::vector<int32_t>{-1, -1}));
  const PackedLinearView v = p.view();
  EXPECT_EQ(v.dims.N, 2);
  EXPECT_EQ(v.ldw4, 2);
  EXPECT_EQ(v.bias, p.bias.data());
  EXPECT_EQ(pack_linear(q, s4, s8, nullptr, {2, 3, 2}).view().bias, nullptr);
  const int8_t bad[2] = {3, 8};  // 8 is not an int4
  EXPECT_THROW(pack_linear(bad, s4, s8, nullptr, {1, 2, 0}), ShapeError);
  EXPECT_THROW(pack_linear(q, s4, s8, nullptr, {-1, 2, 0}), ShapeError);
  EXPECT_THROW(pack_linear(q, nullptr, s8, nullptr, {2, 3, 2}), ShapeError);
  EXPECT_THROW(pack_linear(q, s4, s8, nullptr, {1, kMaxPartDim + 1, 0}), ShapeError);
}

TEST(PackLinear, ColumnOrderAndBitWidths) {
  // q [1, 4] in original order; packed column j = original column order[j]: 4-bit part {3, 1}, 8-bit {0, 2}.
  const int8_t q[4] = {100, -3, -50, 2};
  const int32_t order[4] = {3, 1, 0, 2};
  const float s4[1] = {1.0f}, s8[1] = {2.0f};
  PackOptions o;
  o.column_order = order;
  const PackedLinear p = pack_linear(q, s4, s8, nullptr, {1, 2, 2}, o);
  EXPECT_EQ(p.w4, (std::vector<uint8_t>{0xD2}));  // 2 (low), -3 = 0xD (high)
  EXPECT_EQ(p.w8, (std::vector<int8_t>{100, -50}));
  EXPECT_EQ(p.rs4, (std::vector<int32_t>{-1}));
  EXPECT_EQ(p.rs8, (std::vector<int32_t>{50}));
  EXPECT_EQ(unpack_linear(p.view()), (std::vector<int8_t>{2, -3, 100, -50}));

  // 3-bit low part: -3 fits [-4, 3], 4 would not; the message names q's ORIGINAL column.
  o.bits_low = 3;
  o.what = "checkpoint: layers.0.o_proj";
  EXPECT_NO_THROW(pack_linear(q, s4, s8, nullptr, {1, 2, 2}, o));
  const int8_t q4[4] = {0, 4, 0, 0};
  try {
    pack_linear(q4, s4, s8, nullptr, {1, 2, 2}, o);
    FAIL() << "a 4 in a 3-bit part was accepted";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint: layers.0.o_proj: q[0, 1] = 4 is outside the 3-bit range [-4, 3]"),
              std::string::npos)
        << e.what();
  }
  // 6-bit high part: 100 is outside [-32, 31].
  o.bits_low = 4;
  o.bits_high = 6;
  EXPECT_THROW(pack_linear(q, s4, s8, nullptr, {1, 2, 2}, o), ShapeError);
  o.bits_high = 9;  // does not fit the 8-bit container
  EXPECT_THROW(pack_linear(q, s4, s8, nullptr, {1, 2, 2}, o), UsageError);
  o.bits_high = 8;
  const int32_t repeated[4] = {3, 1, 1, 2};
  o.column_order = repeated;
  EXPECT_THROW(pack_linear(q, s4, s8, nullptr, {1, 2, 2}, o), ShapeError);
}

TEST(PackedLinear, FromRowsComputesRowSumsAndChecksSizes) {
  // The bytes of BuildsViewsAndChecksRange: the reader's path must give the same linear.
  const PackedLinear p = packed_linear_from_rows({2, 3, 2}, {0x78, 0x0F, 0xE1, 0x03}, {-128, 127, 5, -6}, {0.5f, 0.25f},
                                                 {0.1f, 0.2f}, {});
  EXPECT_EQ(p.rs4, (std::vector<int32_t>{-2, 2}));
  EXPECT_EQ(p.rs8, (std::vector<int32_t>{-1, -1}));
  EXPECT_EQ(p.ldw4, 2);
  EXPECT_EQ(p.view().bias, nullptr);
  EXPECT_THROW(packed_linear_from_rows({2, 3, 2}, {0x78, 0x0F, 0xE1}, {-128, 127, 5, -6}, {0.5f, 0.25f}, {0.1f, 0.2f}, {}),
               ShapeError);
  EXPECT_THROW(packed_linear_from_rows({2, 3, 2}, {0x78, 0x0F, 0xE1, 0x03}, {-128, 127, 5, -6}, {0.5f}, {0.1f, 0.2f}, {}),
               ShapeError);
  EXPECT_THROW(packed_linear_from_rows({2, 3, 2}, {0x78, 0x0F, 0xE1, 0x03}, {-128, 127, 5, -6}, {0.5f, 0.25f},
                                       {0.1f, 0.2f}, {1.0f}),
               ShapeError);
}

// Random ragged shapes: pack -> restride (any alignment) -> unpack gives q back, row sums are the
// sums of q (computed here from q), and re-striding to 1 gives the compact bytes again.
TEST(PackedLinear, RestrideAndUnpackRoundTrip) {
  std::mt19937 rng(11);
  for (const auto& [N, K4, K8] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 1, 0}, {3, 0, 5}, {5, 37, 19}, {7, 64, 16}, {2, 0, 0}, {0, 8, 8}, {4, 33, 1}}) {
    SCOPED_TRACE(std::to_string(N) + " x (" + std::to_string(K4) + " + " + std::to_string(K8) + ")");
    const int64_t K = K4 + K8;
    std::vector<int8_t> q(static_cast<size_t>(N * K));
    std::vector<int32_t> rs4(static_cast<size_t>(N), 0), rs8(static_cast<size_t>(N), 0);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < K; ++k) {
        const int v = k < K4 ? static_cast<int>(rng() % 16) - 8 : static_cast<int>(rng() % 256) - 128;
        q[static_cast<size_t>(n * K + k)] = static_cast<int8_t>(v);
        (k < K4 ? rs4 : rs8)[static_cast<size_t>(n)] += v;
      }
    }
    const std::vector<float> s4(static_cast<size_t>(N), 0.5f), s8(static_cast<size_t>(N), 0.25f);
    const PackedLinear p = pack_linear(q.data(), s4.data(), s8.data(), nullptr, {N, K4, K8});
    EXPECT_EQ(p.rs4, rs4);
    EXPECT_EQ(p.rs8, rs8);
    EXPECT_EQ(unpack_linear(p.view()), q);
    for (int64_t align : {1, 16, 48}) {
      const PackedLinear g = restride(p.view(), align);
      EXPECT_EQ(g.ldw4 % align, 0);
      EXPECT_GE(g.ldw4, packed4_row_bytes(K4));
      EXPECT_EQ(unpack_linear(g.view()), q);
      EXPECT_EQ(g.rs4, rs4);
      const PackedLinear c = restride(g.view(), 1);
      EXPECT_EQ(c.w4, p.w4);
      EXPECT_EQ(c.w8, p.w8);
    }
  }
  const PackedLinear p = pack_linear(nullptr, nullptr, nullptr, nullptr, {0, 4, 4});
  EXPECT_THROW(restride(p.view(), 0), ShapeError);
}

}  // namespace
}  // namespace resq::format
