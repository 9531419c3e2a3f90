// Private to src/text: the streaming tokenizer.json reader — a DOM of everything except
// model.vocab and model.merges, which go straight into flat lists.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace resq::bpe_detail {

// Ids above this are rejected: the id -> token table is dense.
constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;

// Why SAX: a DOM of a 150k-entry vocab object costs more memory and time than the tokenizer
// itself. Invalid JSON throws FormatError; a vocab id that is not an integer in
// [0, kMaxTokenId] or a merge that is neither "left right" nor ["left", "right"] throws
// ConfigError naming the entry.
class TokenizerJsonReader : public nlohmann::json_sax<nlohmann::json> {
 public:
  using json = nlohmann::json;

  // `file` names tokenizer.json in messages; `json_size` sizes the merge buffers.
  TokenizerJsonReader(std::string file, size_t json_size);

  json root;
  bool has_vocab = false;
  bool has_merges = false;
  std::vector<std::pair<std::string, int32_t>> vocab;
  // Merge i is merge_text[offset, +left) and the next `right` bytes: {offset, left, right}.
  std::string merge_text;
  std::vector<std::array<uint32_t, 3>> merge_spans;

  size_t merge_count() const { return merge_spans.size(); }
  std::string_view merge_left(size_t i) const {
    return std::string_view(merge_text).substr(merge_spans[i][0], merge_spans[i][1]);
  }
  std::string_view merge_right(size_t i) const {
    return std::string_view(merge_text).substr(merge_spans[i][0] + merge_spans[i][1],
                                               merge_spans[i][2]);
  }

  bool null() override;
  bool boolean(bool v) override;
  bool number_integer(number_integer_t v) override;
  bool number_unsigned(number_unsigned_t v) override;
  bool number_float(number_float_t v, const string_t&) override;
  bool string(string_t& v) override;
  bool binary(binary_t& v) override;
  bool start_object(std::size_t) override;
  bool key(string_t& k) override;
  bool end_object() override;
  bool start_array(std::size_t) override;
  bool end_array() override;
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override;

 private:
  enum class Mode { kDom, kVocab, kMerges, kMergePair };
  struct Frame {
    json* value;
    bool is_object;
    std::string key;
  };

  // True when the container being opened is root.model.<field>.
  bool is_model_field(const char* field) const;
  std::string merge_where() const;
  [[noreturn]] bool unexpected(const std::string& what);
  void add_merge(std::string_view left, std::string_view right);
  bool integer(int64_t id, json v);
  bool value(json v);
  json* place(json v);

  std::string file_;
  Mode mode_ = Mode::kDom;
  std::vector<Frame> stack_;
  std::string vocab_key_;
  std::vector<std::string> pair_;
};

}  // namespace resq::bpe_detail
