// Tests of XXH64 (resq/common/checksum.h) against the published reference values of xxHash
// (xxhsum -H64 / python-xxhash), covering the short (< 32 bytes) and the four-lane paths, and of the
// hex form.
#include "resq/common/checksum.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace resq {
namespace {

uint64_t of(const std::string& s, uint64_t seed = 0) { return xxh64(s.data(), s.size(), seed); }

TEST(Xxh64, PublishedReferenceValues) {
  EXPECT_EQ(of(""), 0xEF46DB3751D8E999ULL);
  // An empty tensor may have no data pointer at all (UBSan found pointer arithmetic on null here).
  EXPECT_EQ(xxh64(nullptr, 0, 0), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(of("a"), 0xD24EC4F1A98C6E5BULL);
  EXPECT_EQ(of("abc"), 0x44BC2CF5AD770999ULL);
  EXPECT_EQ(of("Nobody inspects the spammish repetition"), 0xFBCEA83C8A378BF1ULL);  // 39 bytes: four lanes + tail
}

TEST(Xxh64, EveryFlippedBitChangesTheHash) {
  std::vector<uint8_t> bytes(1000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 131 + 7);
  const uint64_t h = xxh64(bytes.data(), bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (int b = 0; b < 8; ++b) {
      bytes[i] ^= static_cast<uint8_t>(1 << b);
      EXPECT_NE(xxh64(bytes.data(), bytes.size()), h) << i << " " << b;
      bytes[i] ^= static_cast<uint8_t>(1 << b);
    }
  }
  EXPECT_NE(xxh64(bytes.data(), bytes.size(), 1), h);  // the seed matters
}

TEST(ChecksumHex, RoundTripsAndRejectsMalformedText) {
  EXPECT_EQ(checksum_hex(0xEF46DB3751D8E999ULL), "ef46db3751d8e999");
  EXPECT_EQ(checksum_hex(1), "0000000000000001");
  uint64_t v = 0;
  EXPECT_TRUE(parse_checksum_hex("ef46db3751d8e999", &v));
  EXPECT_EQ(v, 0xEF46DB3751D8E999ULL);
  EXPECT_FALSE(parse_checksum_hex("EF46DB3751D8E999", &v));  // one spelling only
  EXPECT_FALSE(parse_checksum_hex("ef46db3751d8e99", &v));
  EXPECT_FALSE(parse_checksum_hex("ef46db3751d8e99g", &v));
}

}  // namespace
}  // namespace resq
