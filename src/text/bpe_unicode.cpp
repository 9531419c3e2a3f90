// Unicode and regex helpers of the byte-level BPE tokenizer: UTF-8 encoding, decoding, validation
// and lossy decoding, character classes, GPT-2's byte table, normalization (utf8proc), and
// Oniguruma-compatible regex matching on PCRE2 (UTF + UCP + JIT).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "bpe_unicode.h"
#include "resq/common/error.h"
#include "resq/text/bpe_tokenizer.h"

namespace resq::bpe_detail {
namespace {

// Length of the valid UTF-8 sequence starting at text[pos], or -k when only the first k bytes
// form a maximal subpart of a valid sequence (k >= 1): the unit that one U+FFFD replaces.
int utf8_sequence_length(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(pos);
  if (lead < 0x80) return 1;
  int need = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead == 0xE0) {
    need = 2, lo = 0xA0;
  } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
    need = 2;
  } else if (lead == 0xED) {
    need = 2, hi = 0x9F;  // excludes the surrogates U+D800..U+DFFF
  } else if (lead == 0xF0) {
    need = 3, lo = 0x90;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    need = 3;
  } else if (lead == 0xF4) {
    need = 3, hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return -1;  // 0x80..0xC1, 0xF5..0xFF never start a sequence
  }
  for (int k = 1; k <= need; ++k) {
    if (pos + k >= text.size()) return -k;
    const unsigned char c = byte(pos + k);
    const unsigned char min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
    if (c < min || c > max) return -k;
  }
  return need + 1;
}

}  // namespace

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

uint32_t decode_last(std::string_view s) {
  size_t pos = s.size() - 1;
  while (pos > 0 && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) --pos;
  return decode_at(s, pos);
}

bool is_word_char(uint32_t cp) {
  if (cp == 0x200C || cp == 0x200D) return true;
  if ((cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) ||
      (cp >= 0x1F150 && cp <= 0x1F169) || (cp >= 0x1F170 && cp <= 0x1F189)) {
    return true;
  }
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

ByteLevelTable::ByteLevelTable() {
  char_to_byte.fill(-1);
  uint32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
    append_utf8(byte_to_utf8[b], cp);
    char_to_byte[cp] = static_cast<int16_t>(b);
  }
}

const ByteLevelTable& byte_level_table() {
  static const ByteLevelTable table;
  return table;
}

std::optional<size_t> find_invalid_utf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    // ASCII fast path, 8 bytes at a time.
    while (pos + 8 <= text.size()) {
      uint64_t word;
      std::memcpy(&word, text.data() + pos, 8);
      if (word & 0x8080808080808080ULL) break;
      pos += 8;
    }
    if (pos >= text.size()) break;
    const int len = utf8_sequence_length(text, pos);
    if (len < 0) return pos;
    pos += static_cast<size_t>(len);
  }
  return std::nullopt;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const int len = utf8_sequence_length(bytes, pos);
    if (len > 0) {
      out.append(bytes.data() + pos, static_cast<size_t>(len));
      pos += static_cast<size_t>(len);
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD
      pos += static_cast<size_t>(-len);
    }
  }
  return out;
}

namespace {

// utf8proc on one run of valid UTF-8.
void normalize_run(std::string_view run, utf8proc_option_t options, const std::string& form,
                   std::string& out) {
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(run.data()),
                   static_cast<utf8proc_ssize_t>(run.size()), &result, options);
  if (n < 0) {
    throw FormatError(std::string("unicode normalization (") + form +
                      ") failed: " + utf8proc_errmsg(n));
  }
  out.append(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
  std::free(result);
}

}  // namespace

std::string unicode_normalize(std::string_view text, const std::string& form) {
  int options = UTF8PROC_STABLE;
  if (form == "NFC") {
    options |= UTF8PROC_COMPOSE;
  } else if (form == "NFD") {
    options |= UTF8PROC_DECOMPOSE;
  } else if (form == "NFKC") {
    options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
  } else if (form == "NFKD") {
    options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
  } else {
    throw UnsupportedError("unicode normalization form '" + form +
                           "' (expected NFC, NFD, NFKC or NFKD)");
  }
  // ASCII is unchanged by every form, never combines with what precedes it, and blocks
  // reordering; so only the non-ASCII runs (with the ASCII character just before each, which a
  // following combining mark may compose with) go through utf8proc. Mostly-ASCII text stays fast.
  std::string out;
  out.reserve(text.size());
  const auto opts = static_cast<utf8proc_option_t>(options);
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      out += text[pos++];
      continue;
    }
    size_t begin = pos;
    if (begin > 0 && static_cast<unsigned char>(text[begin - 1]) < 0x80) {
      --begin;
      out.pop_back();
    }
    size_t end = pos;
    while (end < text.size() && static_cast<unsigned char>(text[end]) >= 0x80) ++end;
    normalize_run(text.substr(begin, end - begin), opts, form, out);
    pos = end;
  }
  return out;
}

std::string onig_to_pcre2(const std::string& pattern) {
  // Oniguruma's Unicode \w: Alphabetic, marks, numbers, connector punctuation, join controls.
  static const std::string kWord = "\\p{Alphabetic}\\p{M}\\p{N}\\p{Pc}\\x{200C}\\x{200D}";
  const auto unsupported = [&](const std::string& what) {
    return UnsupportedError("regex '" + pattern + "': " + what +
                            " has no PCRE2 translation in resq (see docs/TOKENIZER.md)");
  };
  std::string out;
  out.reserve(pattern.size() + 16);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\') {
      if (i + 1 >= pattern.size()) throw unsupported("trailing backslash");
      const char e = pattern[++i];
      switch (e) {
        case 's': out += "\\p{White_Space}"; break;  // PCRE2's \s also takes U+180E
        case 'S': out += "\\P{White_Space}"; break;
        case 'h': out += in_class ? "0-9A-Fa-f" : "[0-9A-Fa-f]"; break;  // Ruby: hex digit
        case 'H':
          if (in_class) throw unsupported("\\H inside a character class");
          out += "[^0-9A-Fa-f]";
          break;
        case 'w': out += in_class ? kWord : "[" + kWord + "]"; break;
        case 'W':
          if (in_class) throw unsupported("\\W inside a character class");
          out += "[^" + kWord + "]";
          break;
        case 'b': case 'B': throw unsupported(std::string("word boundary \\") + e);
        default: out += '\\'; out += e; break;  // same meaning in both engines
      }
      continue;
    }
    if (in_class) {
      if (c == ']') {
        in_class = false;
      } else if (c == '[') {
        // Only POSIX classes ([:alpha:]) nest in PCRE2; Oniguruma's nested sets do not.
        const size_t close = pattern.find(":]", i);
        if (i + 1 >= pattern.size() || pattern[i + 1] != ':' || close == std::string::npos) {
          throw unsupported("nested character class");
        }
        out.append(pattern, i, close + 2 - i);
        i = close + 1;
        continue;
      } else if (c == '&' && i + 1 < pattern.size() && pattern[i + 1] == '&') {
        throw unsupported("character class intersection &&");
      }
      out += c;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal in both engines.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == '(' && i + 2 < pattern.size() && pattern[i + 1] == '?') {
      // Inline options (?imx-imx) / (?imx-imx:...): Ruby's m is PCRE2's s (dot matches \n).
      size_t j = i + 2;
      while (j < pattern.size() && std::strchr("imx-", pattern[j]) != nullptr) ++j;
      if (j > i + 2 && j < pattern.size() && (pattern[j] == ':' || pattern[j] == ')')) {
        out += "(?";
        for (size_t k = i + 2; k < j; ++k) out += pattern[k] == 'm' ? 's' : pattern[k];
        i = j - 1;
        continue;
      }
    }
    out += c;
  }
  return out;
}

struct Regex::State {
  pcre2_code* code = nullptr;
  bool jit = false;
  std::string what;
  ~State() { pcre2_code_free(code); }
};

namespace {

// One JIT stack per thread, grown up to 8 MiB: patterns such as \s+(?!\S) backtrack over long
// whitespace runs, which can exceed PCRE2's default 32 KiB.
pcre2_jit_stack* thread_jit_stack() {
  struct Holder {
    pcre2_jit_stack* stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    ~Holder() { pcre2_jit_stack_free(stack); }
  };
  thread_local Holder holder;
  return holder.stack;
}

struct MatchData {
  pcre2_match_data* data;
  pcre2_match_context* context;
  explicit MatchData(const pcre2_code* code)
      : data(pcre2_match_data_create_from_pattern(code, nullptr)),
        context(pcre2_match_context_create(nullptr)) {}
  ~MatchData() {
    pcre2_match_data_free(data);
    pcre2_match_context_free(context);
  }
};

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& what) : state_(new State) {
  state_->what = what;
  pcre2_compile_context* context = pcre2_compile_context_create(nullptr);
  // Oniguruma (Ruby syntax): only \n ends a line, and ^/$ match at every line.
  pcre2_set_newline(context, PCRE2_NEWLINE_LF);
  int error = 0;
  PCRE2_SIZE offset = 0;
  state_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                               PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE | PCRE2_NO_UTF_CHECK,
                               &error, &offset, context);
  pcre2_compile_context_free(context);
  if (state_->code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    throw ConfigError(what + ": regex '" + pattern + "' does not compile at offset " +
                      std::to_string(offset) + ": " + reinterpret_cast<const char*>(message));
  }
  state_->jit = pcre2_jit_compile(state_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() = default;

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  MatchData md(state_->code);
  if (state_->jit) pcre2_jit_stack_assign(md.context, nullptr, thread_jit_stack());
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t search_from = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (search_from <= text.size()) {
    const int rc =
        state_->jit ? pcre2_jit_match(state_->code, subject, text.size(), search_from, 0, md.data,
                                      md.context)
                    : pcre2_match(state_->code, subject, text.size(), search_from,
                                  PCRE2_NO_UTF_CHECK, md.data, md.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      throw FormatError(state_->what + ": regex matching failed: " +
                        reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(md.data);
    const size_t begin = ovector[0], end = ovector[1];
    if (begin == end && have_last && last_match_end == end) {
      // rust-onig: an empty match right after the previous match is not reported; step one
      // character and search again.
      if (search_from >= text.size()) break;
      size_t step = 1;
      while (search_from + step < text.size() &&
             (static_cast<unsigned char>(text[search_from + step]) & 0xC0) == 0x80) {
        ++step;
      }
      search_from += step;
      continue;
    }
    matches.emplace_back(begin, end);
    search_from = end;
    have_last = true;
    last_match_end = end;
  }
  return matches;
}

}  // namespace resq::bpe_detail
