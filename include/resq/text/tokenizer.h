// One interface for every tokenizer resq reads: SentencePiece (tokenizer.model) and byte-level
// BPE (HuggingFace tokenizer.json). load_tokenizer() picks the right one for a directory.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace resq {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text (UTF-8 bytes, taken verbatim) -> token ids, WITHOUT any special token added by a
  // post-processor (special tokens written literally in the text are still matched where the
  // tokenizer's format says so, as HuggingFace does).
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;

  // Token ids -> text. Ids out of range throw resq::UsageError.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;

  virtual int32_t vocab_size() const = 0;

  // Id of the BOS token if the tokenizer has one.
  virtual std::optional<int32_t> bos_id() const = 0;

  // Whether the model's own configuration adds BOS in front of an encoded text
  // (tokenizer_config.json add_bos_token, or a post_processor that inserts it).
  virtual bool adds_bos() const = 0;

  // Short name for logs and reports: "sentencepiece" or "bpe".
  virtual std::string kind() const = 0;
};

// Loads tokenizer.model (SentencePiece) from `dir`; reads tokenizer_config.json / config.json
// next to it for BOS handling. Throws IoError/ConfigError naming the file.
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& dir);

// Loads tokenizer.json (byte-level BPE) from `dir`; reads tokenizer_config.json next to it.
std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& dir);

// Picks the tokenizer of a model (or tokenizer-only) directory: tokenizer.json -> BPE,
// otherwise tokenizer.model -> SentencePiece; neither -> IoError naming the directory.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);

}  // namespace resq
