// Private to src/text: the UTF-8 and character-class helpers of the byte-level BPE tokenizer, and
// GPT-2's byte <-> character table (the public ones are in resq/text/bpe_tokenizer.h).
#pragma once

#include <utf8proc.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace resq::bpe_detail {

// Appends the UTF-8 encoding of code point `cp`.
void append_utf8(std::string& out, uint32_t cp);

// Byte length of the UTF-8 character starting with `lead` (text already validated).
inline size_t utf8_char_length(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// Decodes the character at s[pos] of valid UTF-8.
inline uint32_t decode_at(std::string_view s, size_t pos) {
  utf8proc_int32_t cp = 0;
  utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + pos),
                   static_cast<utf8proc_ssize_t>(s.size() - pos), &cp);
  return static_cast<uint32_t>(cp);
}

// Decodes the last character of non-empty valid UTF-8.
uint32_t decode_last(std::string_view s);

// Unicode White_Space (what Rust's regex \s matches).
inline bool is_white_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// Rust regex's Unicode \w (Alphabetic, marks, decimal digits, connector punctuation, join
// controls). Alphabetic is taken as letters, letter numbers and the enclosed-letter symbols.
bool is_word_char(uint32_t cp);

// GPT-2's byte <-> printable character table: bytes that are printable Latin-1 map to
// themselves, the other 68 map to U+0100.. in byte order.
struct ByteLevelTable {
  std::array<std::string, 256> byte_to_utf8;  // UTF-8 of the character standing for each byte
  std::array<int16_t, 0x144> char_to_byte;    // code point -> byte, -1 if none
  ByteLevelTable();
};

const ByteLevelTable& byte_level_table();

}  // namespace resq::bpe_detail
