// XXH64 (xxHash, 64-bit; Yann Collet's specification) of a byte range: the integrity checksum of
// every tensor of a packed checkpoint (docs/FORMAT.md 2.2). One pass, four independent lanes (1.7 GB/s
// measured on one core of the busy 2-core development VM); a changed byte goes unnoticed with
// probability 2^-64; not a defense against deliberate tampering.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace resq {

uint64_t xxh64(const void* data, size_t nbytes, uint64_t seed = 0);

// 16 lowercase hex digits, most significant first (the form xxhsum -H64 prints).
std::string checksum_hex(uint64_t value);

// Parses checksum_hex's form; false unless `text` is exactly 16 hex digits.
bool parse_checksum_hex(const std::string& text, uint64_t* value);

}  // namespace resq
