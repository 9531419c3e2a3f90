// Byte-level BPE tokenizer read from a HuggingFace tokenizer.json (GPT-2, Qwen2/2.5, Llama-3).
// Gives the ids HuggingFace `tokenizers` gives; see docs/TOKENIZER.md for the supported subset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "resq/text/tokenizer.h"

namespace resq {

class BpeTokenizer final : public Tokenizer {
 public:
  // Builds a tokenizer from the text of a tokenizer.json and of its tokenizer_config.json
  // (`config_json` empty = no config file). `origin` names the source in error messages (e.g. the
  // directory). Throws FormatError (bad JSON), ConfigError (invalid content) or UnsupportedError
  // (a recognized field whose value resq does not implement), each naming the field.
  static std::unique_ptr<BpeTokenizer> from_json(const std::string& tokenizer_json,
                                                 const std::string& config_json,
                                                 const std::string& origin);

  ~BpeTokenizer() override;
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  // UTF-8 text -> ids, no post-processor tokens. Invalid UTF-8 throws FormatError naming the byte
  // offset. Thread-safe (the word cache is shared and locked).
  std::vector<int32_t> encode(const std::string& text) const override;

  // ids -> text, special tokens included, invalid UTF-8 sequences replaced by U+FFFD as
  // HuggingFace's decode does. An id with no token throws UsageError.
  std::string decode(const std::vector<int32_t>& ids) const override;

  // One past the largest id of the model vocabulary and the added tokens.
  int32_t vocab_size() const override;
  std::optional<int32_t> bos_id() const override;
  bool adds_bos() const override;
  std::string kind() const override { return "bpe"; }

  // Token string as stored in tokenizer.json (byte-level form, e.g. "Ġthe"); UsageError if none.
  std::string id_to_token(int32_t id) const;
  // Id of a token string (model vocabulary or added token), if any.
  std::optional<int32_t> token_to_id(const std::string& token) const;
  // The words the BPE model sees for `text` (after added-token extraction, normalization and
  // pre-tokenization, in byte-level form); added tokens appear as their content. For debugging.
  std::vector<std::string> pre_tokenize(const std::string& text) const;

  struct Impl;

 private:
  explicit BpeTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

namespace bpe_detail {

// Byte offset of the first invalid UTF-8 sequence in `text` (overlong forms, surrogates and code
// points above U+10FFFF are invalid), or std::nullopt if the whole text is valid.
std::optional<size_t> find_invalid_utf8(std::string_view text);

// Bytes -> valid UTF-8, each maximal invalid subsequence replaced by U+FFFD (the Unicode
// "substitution of maximal subparts" rule that Rust's String::from_utf8_lossy follows).
std::string utf8_lossy(std::string_view bytes);

// Unicode normalization of valid UTF-8 text (utf8proc). form: "NFC", "NFD", "NFKC" or "NFKD".
std::string unicode_normalize(std::string_view text, const std::string& form);

// Rewrites an Oniguruma (Ruby syntax) pattern, as HuggingFace compiles Split regexes, into an
// equivalent PCRE2 pattern: \s/\S -> White_Space property, \h -> hex digit, \w -> Oniguruma's
// Unicode word class, (?m) -> (?s). Throws UnsupportedError for constructs with no translation.
std::string onig_to_pcre2(const std::string& pattern);

// A compiled PCRE2 pattern (UTF + UCP, JIT) with Oniguruma-compatible newline and anchor rules.
class Regex {
 public:
  // `pattern` is PCRE2 syntax; ConfigError naming `what` if it does not compile.
  Regex(const std::string& pattern, const std::string& what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping matches in `text` (valid UTF-8) as [begin, end) byte offsets, found left to
  // right the way rust-onig's find_iter does (an empty match right after the previous match is
  // skipped by one character).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace bpe_detail
}  // namespace resq
