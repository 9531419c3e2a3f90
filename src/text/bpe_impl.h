// Private to src/text: the byte-level BPE tokenizer's state (BpeTokenizer::Impl) and the pieces
// its loader (bpe_load.cpp), pre-tokenizers (bpe_pretokenize.cpp) and encoder (bpe_tokenizer.cpp)
// share.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "bpe_tables.h"
#include "resq/common/json_fields.h"
#include "resq/text/bpe_tokenizer.h"

namespace resq {
namespace bpe_detail {

// tokenizer.json and tokenizer_config.json: ConfigError, and null means "not set" (HF's Option).
inline constexpr JsonReadOptions kHfJson{JsonErrorKind::kConfig, /*null_is_absent=*/true};

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
};

// A piece of text: either plain text [begin, end) or an added token.
struct Segment {
  size_t begin;
  size_t end;
  int32_t token_id;  // -1 for plain text
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kByteLevel, kSplit } kind = Kind::kSplit;
  // ByteLevel
  bool add_prefix_space = false;
  // Split (regex, or literal when `regex` is null); ByteLevel with use_regex uses `regex` too.
  std::unique_ptr<Regex> regex;
  std::string literal;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
};

// Where the pre-tokenizers send each word: a reference to any callable taking a string_view,
// without std::function's allocation (the callable must outlive the sink).
class WordSink {
 public:
  template <typename F>
  explicit WordSink(F& f)
      : context_(&f), call_([](void* c, std::string_view word) { (*static_cast<F*>(c))(word); }) {}
  void operator()(std::string_view word) const { call_(context_, word); }

 private:
  void* context_;
  void (*call_)(void*, std::string_view);
};

// Appends the steps of the pre_tokenizer object `in` (Sequence flattened) to `steps`.
void parse_pre_tokenizer(const JsonFields& in, std::vector<PreTokenizerStep>& steps);

// "SOURCE: PATH.type 'X' is not supported (supported: ...)" as UnsupportedError.
[[noreturn]] void unsupported_type(const JsonFields& in, const std::string& type,
                                   const char* supported);

}  // namespace bpe_detail

struct BpeTokenizer::Impl {
  using AddedToken = bpe_detail::AddedToken;
  using AddedTrie = bpe_detail::AddedTrie;
  using Segment = bpe_detail::Segment;

  std::string origin;  // "<dir>/tokenizer.json" for messages

  // Vocabulary: token text by id (model vocab and added tokens), and model-vocab lookup.
  std::vector<std::string> token_text;
  std::vector<uint8_t> has_token;
  bpe_detail::VocabTable vocab;  // model vocabulary only
  std::unordered_map<std::string, int32_t> added_ids;  // added token content -> id

  // BPE model options.
  bpe_detail::MergeTable merges;
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
  std::optional<int32_t> unk_id;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
  std::array<int32_t, 256> byte_fallback_ids{};

  std::vector<std::string> normalizers;  // forms applied in order
  std::vector<bpe_detail::PreTokenizerStep> pre_tokenizers;
  std::vector<AddedToken> added;
  AddedTrie raw_trie;         // tokens with normalized == false, matched in the raw text
  AddedTrie normalized_trie;  // tokens with normalized == true, matched after normalization
  bool byte_level_decoder = false;

  std::optional<int32_t> bos;
  bool adds_bos = false;

  mutable std::mutex cache_mutex;
  mutable bpe_detail::WordCache cache;

  // ---- encoding pipeline (bpe_tokenizer.cpp, except pre_tokenize_piece: bpe_pretokenize.cpp)

  std::vector<Segment> split_added(std::string_view s, const AddedTrie& trie) const;
  std::string normalize(std::string_view s) const;
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;
  void merge_word(std::string_view word, std::vector<int32_t>& ids) const;

  // Pre-tokenizer steps [step, end) on one piece; each final non-empty word goes to on_word
  // as soon as it is made (no list of the whole text's words is built).
  void pre_tokenize_piece(size_t step, std::string_view piece, bpe_detail::WordSink on_word) const;

  // Runs the whole pipeline; on_token(id) for added tokens, on_word(word) for model input.
  template <typename OnToken, typename OnWord>
  void run(const std::string& text, OnToken on_token, OnWord on_word) const;
};

}  // namespace resq
