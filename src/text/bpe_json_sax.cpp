// The streaming tokenizer.json reader: builds the DOM by hand and diverts model.vocab and
// model.merges into flat lists as they are parsed.
#include "bpe_json_sax.h"

#include "resq/common/error.h"
#include "resq/common/json_fields.h"

namespace resq::bpe_detail {

using json = nlohmann::json;

TokenizerJsonReader::TokenizerJsonReader(std::string file, size_t json_size) : file_(std::move(file)) {
  merge_spans.reserve(json_size / 24);  // a merge takes >= 24 bytes of JSON in practice
  merge_text.reserve(json_size / 3);
}

bool TokenizerJsonReader::null() { return value(json()); }
bool TokenizerJsonReader::boolean(bool v) { return value(json(v)); }
bool TokenizerJsonReader::number_integer(number_integer_t v) { return integer(v, json(v)); }
bool TokenizerJsonReader::number_unsigned(number_unsigned_t v) {
  return integer(v > static_cast<number_unsigned_t>(kMaxTokenId) ? -1 : static_cast<int64_t>(v),
                 json(v));
}
bool TokenizerJsonReader::number_float(number_float_t v, const string_t&) { return value(json(v)); }
bool TokenizerJsonReader::binary(binary_t& v) { return value(json(std::move(v))); }

bool TokenizerJsonReader::string(string_t& v) {
  if (mode_ == Mode::kMerges) {
    const size_t space = v.find(' ');
    if (space == std::string::npos) {
      throw ConfigError(merge_where() + ": '" + v + "' is not of the form \"left right\"");
    }
    add_merge(std::string_view(v).substr(0, space), std::string_view(v).substr(space + 1));
    return true;
  }
  if (mode_ == Mode::kMergePair) {
    pair_.push_back(std::move(v));
    return true;
  }
  return value(json(std::move(v)));
}

bool TokenizerJsonReader::start_object(std::size_t) {
  if (mode_ == Mode::kDom && is_model_field("vocab")) {
    place(json::object());  // placeholder; the entries go to `vocab`
    has_vocab = true;
    vocab.clear();
    mode_ = Mode::kVocab;
    return true;
  }
  if (mode_ != Mode::kDom) return unexpected("an object");
  stack_.push_back({place(json::object()), true, std::string()});
  return true;
}

bool TokenizerJsonReader::key(string_t& k) {
  if (mode_ == Mode::kVocab) {
    vocab_key_ = std::move(k);
  } else {
    stack_.back().key = std::move(k);
  }
  return true;
}

bool TokenizerJsonReader::end_object() {
  if (mode_ == Mode::kVocab) {
    mode_ = Mode::kDom;
  } else {
    stack_.pop_back();
  }
  return true;
}

bool TokenizerJsonReader::start_array(std::size_t) {
  if (mode_ == Mode::kDom && is_model_field("merges")) {
    place(json::array());  // placeholder; the pairs go to `merges`
    has_merges = true;
    merge_text.clear();
    merge_spans.clear();
    mode_ = Mode::kMerges;
    return true;
  }
  if (mode_ == Mode::kMerges) {
    mode_ = Mode::kMergePair;
    pair_.clear();
    return true;
  }
  if (mode_ != Mode::kDom) return unexpected("an array");
  stack_.push_back({place(json::array()), false, std::string()});
  return true;
}

bool TokenizerJsonReader::end_array() {
  if (mode_ == Mode::kMergePair) {
    if (pair_.size() != 2) return unexpected("an array of " + std::to_string(pair_.size()));
    add_merge(pair_[0], pair_[1]);
    mode_ = Mode::kMerges;
  } else if (mode_ == Mode::kMerges) {
    mode_ = Mode::kDom;
  } else {
    stack_.pop_back();
  }
  return true;
}

bool TokenizerJsonReader::parse_error(std::size_t, const std::string&,
                                      const nlohmann::detail::exception& e) {
  throw FormatError(file_ + ": invalid JSON: " + e.what());
}

bool TokenizerJsonReader::is_model_field(const char* field) const {
  return stack_.size() == 2 && stack_[0].is_object && stack_[0].key == "model" &&
         stack_[1].is_object && stack_[1].key == field;
}

std::string TokenizerJsonReader::merge_where() const {
  return file_ + ": model.merges[" + std::to_string(merge_spans.size()) + "]";
}

bool TokenizerJsonReader::unexpected(const std::string& what) {
  if (mode_ == Mode::kVocab) {
    throw ConfigError(file_ + ": model.vocab['" + vocab_key_ + "']: expected an integer id in [0, " +
                      std::to_string(kMaxTokenId) + "], got " + what);
  }
  throw ConfigError(merge_where() + ": expected \"left right\" or [\"left\", \"right\"], got " + what);
}

void TokenizerJsonReader::add_merge(std::string_view left, std::string_view right) {
  if (merge_text.size() + left.size() + right.size() > UINT32_MAX) {
    throw ConfigError(file_ + ": model.merges: too large");
  }
  merge_spans.push_back({static_cast<uint32_t>(merge_text.size()),
                         static_cast<uint32_t>(left.size()), static_cast<uint32_t>(right.size())});
  merge_text.append(left);
  merge_text.append(right);
}

bool TokenizerJsonReader::integer(int64_t id, json v) {
  if (mode_ != Mode::kVocab) return value(std::move(v));
  if (id < 0 || id > kMaxTokenId) return unexpected(json_excerpt(v));
  vocab.emplace_back(std::move(vocab_key_), static_cast<int32_t>(id));
  return true;
}

bool TokenizerJsonReader::value(json v) {
  if (mode_ != Mode::kDom) return unexpected(json_excerpt(v));
  place(std::move(v));
  return true;
}

// Stores a value at the current position of the DOM; returns where it lives. Pointers to open
// containers stay valid: a parent only grows after its open child is closed.
json* TokenizerJsonReader::place(json v) {
  if (stack_.empty()) {
    root = std::move(v);
    return &root;
  }
  Frame& top = stack_.back();
  if (top.is_object) {
    json& slot = (*top.value)[top.key];
    slot = std::move(v);
    return &slot;
  }
  top.value->push_back(std::move(v));
  return &top.value->back();
}

}  // namespace resq::bpe_detail
