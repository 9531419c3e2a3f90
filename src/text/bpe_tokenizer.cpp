// Byte-level BPE tokenizer from a HuggingFace tokenizer.json: added-token extraction, normalizer,
// pre-tokenizers, BPE merges by rank and the ByteLevel decoder, mirroring HF `tokenizers` 0.23.
#include "resq/text/bpe_tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "resq/common/error.h"

namespace resq {
namespace {

using json = nlohmann::json;
using bpe_detail::Regex;

// Ids above this are rejected: the id -> token table is dense.
constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;
// Words kept in the BPE cache (HF keeps 10,000; results do not depend on it).
constexpr size_t kCacheCapacity = 1 << 17;

// GPT-2's pre-tokenizer regex, used by ByteLevel when use_regex is true.
const char* const kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// ---------------------------------------------------------------- UTF-8 and Unicode helpers

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

// Byte length of the UTF-8 character starting with `lead` (text already validated).
inline size_t utf8_char_length(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// Decodes the character at s[pos] of valid UTF-8.
uint32_t decode_at(std::string_view s, size_t pos) {
  utf8proc_int32_t cp = 0;
  utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + pos),
                   static_cast<utf8proc_ssize_t>(s.size() - pos), &cp);
  return static_cast<uint32_t>(cp);
}

// Decodes the last character of non-empty valid UTF-8.
uint32_t decode_last(std::string_view s) {
  size_t pos = s.size() - 1;
  while (pos > 0 && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) --pos;
  return decode_at(s, pos);
}

// Unicode White_Space (what Rust's regex \s matches).
bool is_white_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// Rust regex's Unicode \w (Alphabetic, marks, decimal digits, connector punctuation, join
// controls). Alphabetic is taken as letters, letter numbers and the enclosed-letter symbols.
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

// GPT-2's byte <-> printable character table: bytes that are printable Latin-1 map to
// themselves, the other 68 map to U+0100.. in byte order.
struct ByteLevelTable {
  std::array<std::string, 256> byte_to_utf8;  // UTF-8 of the character standing for each byte
  std::array<int16_t, 0x144> char_to_byte;    // code point -> byte, -1 if none
  ByteLevelTable() {
    char_to_byte.fill(-1);
    uint32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      append_utf8(byte_to_utf8[b], cp);
      char_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelTable& byte_level_table() {
  static const ByteLevelTable table;
  return table;
}

// ---------------------------------------------------------------- JSON helpers

std::string dump_short(const json& value) {
  std::string s = value.dump();
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

bool get_bool(const json& object, const char* key, bool fallback, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    throw ConfigError(where + "." + key + ": expected true or false, got " + dump_short(*it));
  }
  return it->get<bool>();
}

std::optional<std::string> get_optional_string(const json& object, const char* key,
                                               const std::string& where) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) {
    throw ConfigError(where + "." + key + ": expected a string or null, got " + dump_short(*it));
  }
  return it->get<std::string>();
}

std::string get_type(const json& object, const std::string& where) {
  if (!object.is_object()) {
    throw ConfigError(where + ": expected an object, got " + dump_short(object));
  }
  auto it = object.find("type");
  if (it == object.end() || !it->is_string()) {
    throw ConfigError(where + ".type: missing or not a string");
  }
  return it->get<std::string>();
}

// tokenizer.json reader: a DOM of everything except model.vocab and model.merges, which are
// streamed into flat lists (a DOM of a 150k-entry object costs more than the tokenizer itself).
class TokenizerJsonReader : public nlohmann::json_sax<json> {
 public:
  TokenizerJsonReader(std::string file, size_t json_size) : file_(std::move(file)) {
    merge_spans.reserve(json_size / 24);  // a merge takes >= 24 bytes of JSON in practice
    merge_text.reserve(json_size / 3);
  }

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

  bool null() override { return value(json()); }
  bool boolean(bool v) override { return value(json(v)); }
  bool number_integer(number_integer_t v) override { return integer(v, json(v)); }
  bool number_unsigned(number_unsigned_t v) override {
    return integer(v > static_cast<number_unsigned_t>(kMaxTokenId) ? -1 : static_cast<int64_t>(v),
                   json(v));
  }
  bool number_float(number_float_t v, const string_t&) override { return value(json(v)); }
  bool string(string_t& v) override {
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
  bool binary(binary_t& v) override { return value(json(std::move(v))); }
  bool start_object(std::size_t) override {
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
  bool key(string_t& k) override {
    if (mode_ == Mode::kVocab) {
      vocab_key_ = std::move(k);
    } else {
      stack_.back().key = std::move(k);
    }
    return true;
  }
  bool end_object() override {
    if (mode_ == Mode::kVocab) {
      mode_ = Mode::kDom;
    } else {
      stack_.pop_back();
    }
    return true;
  }
  bool start_array(std::size_t) override {
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
  bool end_array() override {
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
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    throw FormatError(file_ + ": invalid JSON: " + e.what());
  }

 private:
  enum class Mode { kDom, kVocab, kMerges, kMergePair };
  struct Frame {
    json* value;
    bool is_object;
    std::string key;
  };

  // True when the container being opened is root.model.<field>.
  bool is_model_field(const char* field) const {
    return stack_.size() == 2 && stack_[0].is_object && stack_[0].key == "model" &&
           stack_[1].is_object && stack_[1].key == field;
  }
  std::string merge_where() const {
    return file_ + ": model.merges[" + std::to_string(merge_spans.size()) + "]";
  }
  bool unexpected(const std::string& what) {
    if (mode_ == Mode::kVocab) {
      throw ConfigError(file_ + ": model.vocab['" + vocab_key_ +
                        "']: expected an integer id in [0, " + std::to_string(kMaxTokenId) +
                        "], got " + what);
    }
    throw ConfigError(merge_where() +
                      ": expected \"left right\" or [\"left\", \"right\"], got " + what);
  }
  void add_merge(std::string_view left, std::string_view right) {
    if (merge_text.size() + left.size() + right.size() > UINT32_MAX) {
      throw ConfigError(file_ + ": model.merges: too large");
    }
    merge_spans.push_back({static_cast<uint32_t>(merge_text.size()),
                           static_cast<uint32_t>(left.size()), static_cast<uint32_t>(right.size())});
    merge_text.append(left);
    merge_text.append(right);
  }
  bool integer(int64_t id, json v) {
    if (mode_ != Mode::kVocab) return value(std::move(v));
    if (id < 0 || id > kMaxTokenId) return unexpected(v.dump());
    vocab.emplace_back(std::move(vocab_key_), static_cast<int32_t>(id));
    return true;
  }
  bool value(json v) {
    if (mode_ != Mode::kDom) return unexpected(dump_short(v));
    place(std::move(v));
    return true;
  }
  // Stores a value at the current position of the DOM; returns where it lives. Pointers to
  // open containers stay valid: a parent only grows after its open child is closed.
  json* place(json v) {
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

  std::string file_;
  Mode mode_ = Mode::kDom;
  std::vector<Frame> stack_;
  std::string vocab_key_;
  std::vector<std::string> pair_;
};

// ---------------------------------------------------------------- merges table

// (left id, right id) -> (rank, merged id), open addressing on a 64-bit key.
class MergeTable {
 public:
  void reserve(size_t n) {
    size_t capacity = 16;
    while (capacity < 2 * n) capacity <<= 1;
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
  }
  // Later entries overwrite earlier ones, as HF's HashMap collect does.
  void insert(int32_t left, int32_t right, int32_t rank, int32_t merged) {
    const uint64_t key = make_key(left, right);
    size_t i = hash(key) & mask_;
    while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
    slots_[i] = Slot{key, rank, merged};
  }
  // Returns false if the pair has no merge.
  bool find(int32_t left, int32_t right, int32_t* rank, int32_t* merged) const {
    if (slots_.empty()) return false;
    const uint64_t key = make_key(left, right);
    size_t i = hash(key) & mask_;
    while (true) {
      const Slot& slot = slots_[i];
      if (slot.key == key) {
        *rank = slot.rank;
        *merged = slot.merged;
        return true;
      }
      if (slot.key == kEmpty) return false;
      i = (i + 1) & mask_;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  struct Slot {
    uint64_t key = kEmpty;
    int32_t rank = 0;
    int32_t merged = 0;
  };
  static uint64_t make_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  static size_t hash(uint64_t key) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return static_cast<size_t>(key);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Model vocabulary: token text -> id, open addressing over ids whose text lives in `text_`
// (indexed by id). Lookups take a string_view and allocate nothing.
class VocabTable {
 public:
  // `texts[id]` is the token of id; `present[id]` says whether id is in the vocabulary.
  void build(std::vector<std::string> texts, const std::vector<uint8_t>& present) {
    text_ = std::move(texts);
    size_t n = 0;
    for (uint8_t p : present) n += p;
    size_t capacity = 16;
    while (capacity < 2 * n) capacity <<= 1;
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    size_ = n;
    for (size_t id = 0; id < present.size(); ++id) {
      if (!present[id]) continue;
      const uint64_t h = hash(text_[id]);
      size_t i = h & mask_;
      while (slots_[i].id >= 0) i = (i + 1) & mask_;
      slots_[i] = Slot{static_cast<uint32_t>(h >> 32), static_cast<int32_t>(id)};
    }
  }
  // Id of `token`, or -1.
  int32_t find(std::string_view token) const {
    if (slots_.empty()) return -1;
    const uint64_t h = hash(token);
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.id < 0) return -1;
      if (slot.tag == tag && text_[static_cast<size_t>(slot.id)] == token) return slot.id;
    }
  }
  size_t size() const { return size_; }
  const std::string& text(int32_t id) const { return text_[static_cast<size_t>(id)]; }

  static uint64_t hash(std::string_view s) {  // FNV-1a, then a final mix
    uint64_t h = 0xcbf29ce484222325ULL;
    for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ULL;
    h ^= h >> 32;
    return h;
  }

 private:
  struct Slot {
    uint32_t tag = 0;
    int32_t id = -1;
  };
  std::vector<std::string> text_;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// BPE word cache: byte-level word -> ids, open addressing with keys and ids in two arenas
// (offsets, so arena growth is harmless). Stops accepting words at kCacheCapacity.
class WordCache {
 public:
  // Appends the cached ids of `word` to `ids`; false if the word is not cached.
  bool lookup(std::string_view word, uint64_t hash, std::vector<int32_t>& ids) const {
    if (slots_.empty()) return false;
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.key_len == kEmpty) return false;
      if (slot.hash == hash && key(slot) == word) {
        ids.insert(ids.end(), ids_.begin() + slot.ids_offset,
                   ids_.begin() + slot.ids_offset + slot.ids_len);
        return true;
      }
    }
  }
  void insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t n) {
    if (size_ >= kCacheCapacity || word.size() >= kEmpty) return;
    if (2 * (size_ + 1) > slots_.size()) grow();
    size_t i = hash & mask_;
    for (; slots_[i].key_len != kEmpty; i = (i + 1) & mask_) {
      if (slots_[i].hash == hash && key(slots_[i]) == word) return;  // already cached
    }
    slots_[i] = Slot{hash, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(word.size()),
                     static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(n)};
    keys_.append(word);
    ids_.insert(ids_.end(), ids, ids + n);
    ++size_;
  }

 private:
  static constexpr uint32_t kEmpty = ~uint32_t{0};
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_offset = 0;
    uint32_t key_len = kEmpty;
    uint32_t ids_offset = 0;
    uint32_t ids_len = 0;
  };
  std::string_view key(const Slot& slot) const {
    return std::string_view(keys_).substr(slot.key_offset, slot.key_len);
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.empty() ? 1024 : 2 * old.size(), Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& slot : old) {
      if (slot.key_len == kEmpty) continue;
      size_t i = slot.hash & mask_;
      while (slots_[i].key_len != kEmpty) i = (i + 1) & mask_;
      slots_[i] = slot;
    }
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
  std::string keys_;
  std::vector<int32_t> ids_;
};

// ---------------------------------------------------------------- added tokens

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
};

// Byte trie over added-token contents; longest match at a position, scanned left to right
// (aho-corasick's leftmost-longest non-overlapping semantics).
class AddedTrie {
 public:
  bool empty() const { return nodes_.size() <= 1; }
  void insert(const std::string& pattern, int32_t token_index) {
    if (pattern.empty()) return;
    if (nodes_.empty()) nodes_.emplace_back();
    first_byte_[static_cast<unsigned char>(pattern[0])] = true;
    int32_t node = 0;
    for (char ch : pattern) {
      const auto c = static_cast<unsigned char>(ch);
      int32_t child = -1;
      for (const auto& edge : nodes_[node].edges) {
        if (edge.first == c) child = edge.second;
      }
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].edges.emplace_back(c, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    // The first token with a given content wins, like HF's pattern order.
    if (nodes_[node].token < 0) nodes_[node].token = token_index;
  }
  // Finds the next match at or after `from`: returns false if none, else sets begin/end/token.
  bool next_match(std::string_view text, size_t from, size_t* begin, size_t* end,
                  int32_t* token) const {
    if (empty()) return false;
    for (size_t pos = from; pos < text.size(); ++pos) {
      if (!first_byte_[static_cast<unsigned char>(text[pos])]) continue;
      int32_t node = 0, best = -1;
      size_t best_end = 0;
      for (size_t i = pos; i < text.size(); ++i) {
        const auto c = static_cast<unsigned char>(text[i]);
        int32_t child = -1;
        for (const auto& edge : nodes_[node].edges) {
          if (edge.first == c) {
            child = edge.second;
            break;
          }
        }
        if (child < 0) break;
        node = child;
        if (nodes_[node].token >= 0) best = nodes_[node].token, best_end = i + 1;
      }
      if (best >= 0) {
        *begin = pos;
        *end = best_end;
        *token = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> edges;
    int32_t token = -1;
  };
  std::vector<Node> nodes_;
  std::array<bool, 256> first_byte_{};
};

// A piece of text: either plain text [begin, end) or an added token.
struct Segment {
  size_t begin;
  size_t end;
  int32_t token_id;  // -1 for plain text
};

// ---------------------------------------------------------------- pre-tokenizers

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

// Matches of a Split step over `s` as a cover of [0, size): (begin, end, is_match).
struct Span {
  size_t begin;
  size_t end;
  bool is_match;
};

std::vector<Span> cover_with_matches(const std::vector<std::pair<size_t, size_t>>& matches,
                                     size_t size) {
  std::vector<Span> spans;
  spans.reserve(2 * matches.size() + 1);
  size_t prev = 0;
  for (const auto& m : matches) {
    if (prev != m.first) spans.push_back({prev, m.first, false});
    spans.push_back({m.first, m.second, true});
    prev = m.second;
  }
  if (prev != size) spans.push_back({prev, size, false});
  return spans;
}

// HF NormalizedString::split: which spans become pieces under each behavior. Returns
// (begin, end, removed) triples.
std::vector<Span> apply_behavior(std::vector<Span> spans, SplitBehavior behavior) {
  std::vector<Span> out;  // is_match reused as "remove"
  out.reserve(spans.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& s : spans) out.push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::kRemoved:
      out = std::move(spans);
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const auto& s : spans) {
        if (s.is_match == previous_match && !out.empty()) {
          out.back().end = s.end;
        } else {
          out.push_back({s.begin, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& s : spans) {
        if (s.is_match && !previous_match && !out.empty()) {
          out.back().end = s.end;
        } else {
          out.push_back({s.begin, s.end, false});
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().begin = it->begin;
        } else {
          out.push_back({it->begin, it->end, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  return out;
}

SplitBehavior parse_behavior(const json& value, const std::string& where) {
  const std::string s = value.is_string() ? value.get<std::string>() : std::string();
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  throw ConfigError(where + ".behavior: expected Removed, Isolated, MergedWithPrevious, "
                    "MergedWithNext or Contiguous, got " + dump_short(value));
}

}  // namespace

// ---------------------------------------------------------------- the tokenizer state

struct BpeTokenizer::Impl {
  std::string origin;  // "<dir>/tokenizer.json" for messages

  // Vocabulary: token text by id (model vocab and added tokens), and model-vocab lookup.
  std::vector<std::string> token_text;
  std::vector<uint8_t> has_token;
  VocabTable vocab;  // model vocabulary only
  std::unordered_map<std::string, int32_t> added_ids;   // added token content -> id

  // BPE model options.
  MergeTable merges;
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
  std::optional<int32_t> unk_id;
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
  std::array<int32_t, 256> byte_fallback_ids{};

  std::vector<std::string> normalizers;  // forms applied in order
  std::vector<PreTokenizerStep> pre_tokenizers;
  std::vector<AddedToken> added;
  AddedTrie raw_trie;         // tokens with normalized == false, matched in the raw text
  AddedTrie normalized_trie;  // tokens with normalized == true, matched after normalization
  bool byte_level_decoder = false;

  std::optional<int32_t> bos;
  bool adds_bos = false;

  mutable std::mutex cache_mutex;
  mutable WordCache cache;

  // ---- encoding pipeline

  std::vector<Segment> split_added(std::string_view s, const AddedTrie& trie) const;
  std::string normalize(std::string_view s) const;
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;
  void merge_word(std::string_view word, std::vector<int32_t>& ids) const;

  // Pre-tokenizer steps [step, end) on one piece; each final non-empty word goes to on_word
  // as soon as it is made (no list of the whole text's words is built).
  template <typename OnWord>
  void pre_tokenize_piece(size_t step, std::string_view piece, OnWord& on_word) const;

  // Runs the whole pipeline; on_token(id) for added tokens, on_word(word) for model input.
  template <typename OnToken, typename OnWord>
  void run(const std::string& text, OnToken on_token, OnWord on_word) const {
    if (auto bad = bpe_detail::find_invalid_utf8(text)) {
      const size_t at = *bad;
      char hex[8];
      std::snprintf(hex, sizeof(hex), "0x%02X", static_cast<unsigned char>(text[at]));
      throw FormatError("text to tokenize is not valid UTF-8: invalid byte " + std::string(hex) +
                        " at byte offset " + std::to_string(at) + " of " +
                        std::to_string(text.size()));
    }
    for (const Segment& raw : split_added(text, raw_trie)) {
      if (raw.token_id >= 0) {
        on_token(raw.token_id);
        continue;
      }
      const std::string normalized =
          normalize(std::string_view(text).substr(raw.begin, raw.end - raw.begin));
      for (const Segment& seg : split_added(normalized, normalized_trie)) {
        if (seg.token_id >= 0) {
          on_token(seg.token_id);
          continue;
        }
        pre_tokenize_piece(0, std::string_view(normalized).substr(seg.begin, seg.end - seg.begin),
                           on_word);
      }
    }
  }
};

// HF AddedVocabulary::find_matches: splits `s` around added tokens, applying single_word,
// lstrip and rstrip. The segments cover `s`; an empty `s` gives one empty text segment.
std::vector<Segment> BpeTokenizer::Impl::split_added(std::string_view s,
                                                     const AddedTrie& trie) const {
  std::vector<Segment> out;
  if (s.empty() || trie.empty()) {
    out.push_back({0, s.size(), -1});
    return out;
  }
  size_t start_offset = 0, search = 0, begin = 0, end = 0;
  int32_t index = -1;
  while (trie.next_match(s, search, &begin, &end, &index)) {
    search = end;
    const AddedToken& token = added[static_cast<size_t>(index)];
    size_t start = begin, stop = end;
    if (token.single_word) {
      const bool start_space = start == 0 || !is_word_char(decode_last(s.substr(0, start)));
      const bool stop_space = stop == s.size() || !is_word_char(decode_at(s, stop));
      if (!start_space || !stop_space) continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        size_t prev = new_start - 1;
        while (prev > 0 && (static_cast<unsigned char>(s[prev]) & 0xC0) == 0x80) --prev;
        if (!is_white_space(decode_at(s, prev))) break;
        new_start = prev;
      }
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < s.size() && is_white_space(decode_at(s, stop))) {
        stop += utf8_char_length(static_cast<unsigned char>(s[stop]));
      }
    }
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, token.id});
    start_offset = stop;
  }
  if (start_offset != s.size()) out.push_back({start_offset, s.size(), -1});
  return out;
}

std::string BpeTokenizer::Impl::normalize(std::string_view s) const {
  std::string out(s);
  for (const std::string& form : normalizers) out = bpe_detail::unicode_normalize(out, form);
  return out;
}

// HF drops empty splits after every step; ByteLevel maps bytes to characters last.
template <typename OnWord>
void BpeTokenizer::Impl::pre_tokenize_piece(size_t step_index, std::string_view piece,
                                            OnWord& on_word) const {
  if (piece.empty()) return;
  if (step_index == pre_tokenizers.size()) {
    on_word(piece);
    return;
  }
  const PreTokenizerStep& step = pre_tokenizers[step_index];
  if (step.kind == PreTokenizerStep::Kind::kByteLevel) {
    std::string prefixed;
    if (step.add_prefix_space && piece[0] != ' ') {
      prefixed.reserve(piece.size() + 1);
      prefixed += ' ';
      prefixed.append(piece);
      piece = prefixed;
    }
    const ByteLevelTable& table = byte_level_table();
    std::string mapped;
    const auto emit = [&](size_t begin, size_t end) {
      if (begin == end) return;
      mapped.clear();
      for (size_t i = begin; i < end; ++i) {
        mapped += table.byte_to_utf8[static_cast<unsigned char>(piece[i])];
      }
      pre_tokenize_piece(step_index + 1, mapped, on_word);
    };
    if (step.regex) {
      for (const Span& span : cover_with_matches(step.regex->find_all(piece), piece.size())) {
        emit(span.begin, span.end);
      }
    } else {
      emit(0, piece.size());
    }
    return;
  }
  // Split.
  std::vector<std::pair<size_t, size_t>> matches;
  if (step.regex) {
    matches = step.regex->find_all(piece);
  } else if (!step.literal.empty()) {
    for (size_t pos = piece.find(step.literal); pos != std::string_view::npos;
         pos = piece.find(step.literal, pos + step.literal.size())) {
      matches.emplace_back(pos, pos + step.literal.size());
    }
  }
  std::vector<Span> spans = cover_with_matches(matches, piece.size());
  if (step.invert) {
    for (Span& span : spans) span.is_match = !span.is_match;
  }
  for (const Span& span : apply_behavior(std::move(spans), step.behavior)) {
    if (span.is_match) continue;  // removed
    pre_tokenize_piece(step_index + 1, piece.substr(span.begin, span.end - span.begin), on_word);
  }
}

void BpeTokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  if (ignore_merges) {
    const int32_t id = vocab.find(word);
    if (id >= 0) {
      ids.push_back(id);
      return;
    }
  }
  const uint64_t hash = VocabTable::hash(word);
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.lookup(word, hash, ids)) return;
  }
  const size_t first = ids.size();
  merge_word(word, ids);
  std::lock_guard<std::mutex> lock(cache_mutex);
  cache.insert(word, hash, ids.data() + first, ids.size() - first);
}

// HF BPE::merge_word + Word::merge_all: characters -> initial symbols (with unk / byte
// fallback), then merges applied lowest rank first (ties: leftmost), with a priority queue whose
// stale entries are skipped when popped.
void BpeTokenizer::Impl::merge_word(std::string_view word, std::vector<int32_t>& ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&symbols](int32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, n + 1, true});
  };
  int32_t pending_unk = -1;  // unk waiting to be added (HF adds it lazily)
  std::string scratch;
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = utf8_char_length(static_cast<unsigned char>(word[pos]));
    const bool is_first = pos == 0, is_last = pos + len >= word.size();
    std::string_view piece(word.data() + pos, len);
    if ((!is_first && !continuing_subword_prefix.empty()) ||
        (is_last && !end_of_word_suffix.empty())) {
      scratch.clear();
      if (!is_first) scratch += continuing_subword_prefix;
      scratch.append(piece);
      if (is_last) scratch += end_of_word_suffix;
      piece = scratch;
    }
    pos += len;
    const int32_t id = vocab.find(piece);
    if (id >= 0) {
      if (pending_unk >= 0) add(pending_unk), pending_unk = -1;
      add(id);
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (char b : piece) all &= byte_fallback_ids[static_cast<unsigned char>(b)] >= 0;
      if (all) {
        for (char b : piece) add(byte_fallback_ids[static_cast<unsigned char>(b)]);
        continue;
      }
    }
    if (unk_id) {
      if (pending_unk >= 0 && !fuse_unk) add(pending_unk);
      pending_unk = *unk_id;  // fused: one unk stands for the whole run
    }
    // Without an unk token the character is dropped, as HF does.
  }
  if (pending_unk >= 0) add(pending_unk);
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t merged;
    bool operator<(const Candidate& o) const {  // max-heap on "comes later"
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Candidate> storage;
  storage.reserve(symbols.size());
  std::priority_queue<Candidate> queue(std::less<Candidate>(), std::move(storage));
  int32_t rank = 0, merged = 0;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (merges.find(symbols[i].id, symbols[i + 1].id, &rank, &merged)) {
      queue.push({rank, static_cast<int32_t>(i), merged});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<size_t>(top.pos)];
    if (!left.alive || left.next < 0) continue;
    const int32_t right_pos = left.next;
    const Symbol right = symbols[static_cast<size_t>(right_pos)];
    // Stale entry: the pair changed since it was queued.
    if (!merges.find(left.id, right.id, &rank, &merged) || merged != top.merged) continue;
    left.id = top.merged;
    left.next = right.next;
    symbols[static_cast<size_t>(right_pos)].alive = false;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = top.pos;
    if (left.prev >= 0 &&
        merges.find(symbols[static_cast<size_t>(left.prev)].id, left.id, &rank, &merged)) {
      queue.push({rank, left.prev, merged});
    }
    if (left.next >= 0 &&
        merges.find(left.id, symbols[static_cast<size_t>(left.next)].id, &rank, &merged)) {
      queue.push({rank, top.pos, merged});
    }
  }
  for (const Symbol& s : symbols) {
    if (s.alive) ids.push_back(s.id);
  }
}

// ---------------------------------------------------------------- loading

namespace {

void parse_normalizer(const json& node, const std::string& where,
                      std::vector<std::string>& forms) {
  if (node.is_null()) return;
  const std::string type = get_type(node, where);
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    forms.push_back(type);
  } else if (type == "Sequence") {
    auto it = node.find("normalizers");
    if (it == node.end() || !it->is_array()) {
      throw ConfigError(where + ".normalizers: missing or not an array");
    }
    for (size_t i = 0; i < it->size(); ++i) {
      parse_normalizer((*it)[i], where + ".normalizers[" + std::to_string(i) + "]", forms);
    }
  } else {
    throw UnsupportedError(where + ".type '" + type +
                           "' is not supported (supported: NFC, NFD, NFKC, NFKD, Sequence)");
  }
}

void parse_pre_tokenizer(const json& node, const std::string& where,
                         std::vector<PreTokenizerStep>& steps) {
  if (node.is_null()) return;
  const std::string type = get_type(node, where);
  if (type == "Sequence") {
    auto it = node.find("pretokenizers");
    if (it == node.end() || !it->is_array()) {
      throw ConfigError(where + ".pretokenizers: missing or not an array");
    }
    for (size_t i = 0; i < it->size(); ++i) {
      parse_pre_tokenizer((*it)[i], where + ".pretokenizers[" + std::to_string(i) + "]", steps);
    }
    return;
  }
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    step.add_prefix_space = get_bool(node, "add_prefix_space", true, where);
    if (get_bool(node, "use_regex", true, where)) {
      step.regex = std::make_unique<Regex>(bpe_detail::onig_to_pcre2(kGpt2Pattern),
                                           where + " (GPT-2 regex)");
    }
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    auto pattern = node.find("pattern");
    if (pattern == node.end() || !pattern->is_object()) {
      throw ConfigError(where + ".pattern: missing; expected {\"Regex\": ...} or {\"String\": ...}");
    }
    if (auto re = pattern->find("Regex"); re != pattern->end() && re->is_string()) {
      step.regex = std::make_unique<Regex>(bpe_detail::onig_to_pcre2(re->get<std::string>()),
                                           where + ".pattern.Regex");
    } else if (auto lit = pattern->find("String"); lit != pattern->end() && lit->is_string()) {
      step.literal = lit->get<std::string>();
    } else {
      throw ConfigError(where + ".pattern: expected {\"Regex\": string} or {\"String\": string}, got " +
                        dump_short(*pattern));
    }
    auto behavior = node.find("behavior");
    if (behavior == node.end()) throw ConfigError(where + ".behavior: missing");
    step.behavior = parse_behavior(*behavior, where);
    step.invert = get_bool(node, "invert", false, where);
  } else {
    throw UnsupportedError(where + ".type '" + type +
                           "' is not supported (supported: ByteLevel, Split, Sequence)");
  }
  steps.push_back(std::move(step));
}

// Collects the ids a post-processor puts in front of a single sequence. Anything that adds
// tokens after the sequence, or that resq cannot describe as one BOS, is refused.
void parse_post_processor(const json& node, const std::string& where,
                          std::vector<int32_t>& prefix_ids) {
  if (node.is_null()) return;
  const std::string type = get_type(node, where);
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    auto it = node.find("processors");
    if (it == node.end() || !it->is_array()) {
      throw ConfigError(where + ".processors: missing or not an array");
    }
    for (size_t i = 0; i < it->size(); ++i) {
      parse_post_processor((*it)[i], where + ".processors[" + std::to_string(i) + "]",
                           prefix_ids);
    }
    return;
  }
  if (type != "TemplateProcessing") {
    throw UnsupportedError(where + ".type '" + type +
                           "' is not supported (supported: ByteLevel, TemplateProcessing, "
                           "Sequence)");
  }
  auto single = node.find("single");
  if (single == node.end()) throw ConfigError(where + ".single: missing");
  // Pieces: {"SpecialToken": {"id": name}} / {"Sequence": {"id": "A"}}, or the string form
  // "<bos> $A" (also "$A:0", "<bos>:0").
  std::vector<std::pair<bool, std::string>> pieces;  // (is_sequence, special name)
  if (single->is_string()) {
    std::istringstream words(single->get<std::string>());
    std::string word;
    while (words >> word) {
      // Drop a ":<type_id>" suffix.
      const size_t colon = word.rfind(':');
      const bool has_type = colon != std::string::npos && colon > 0 && colon + 1 < word.size() &&
                            std::all_of(word.begin() + static_cast<std::ptrdiff_t>(colon) + 1,
                                        word.end(), [](char c) { return c >= '0' && c <= '9'; });
      const std::string name = has_type ? word.substr(0, colon) : word;
      pieces.emplace_back(name[0] == '$', name);
    }
  } else if (single->is_array()) {
    for (const json& piece : *single) {
      if (piece.contains("SpecialToken") && piece["SpecialToken"].contains("id")) {
        pieces.emplace_back(false, piece["SpecialToken"]["id"].get<std::string>());
      } else if (piece.contains("Sequence")) {
        pieces.emplace_back(true, std::string());
      } else {
        throw ConfigError(where + ".single: unrecognized piece " + dump_short(piece));
      }
    }
  } else {
    throw ConfigError(where + ".single: expected an array or a string");
  }
  bool seen_sequence = false;
  for (const auto& piece : pieces) {
    if (piece.first) {
      if (seen_sequence) throw UnsupportedError(where + ".single: more than one sequence");
      seen_sequence = true;
      continue;
    }
    if (seen_sequence) {
      throw UnsupportedError(where + ".single: special token '" + piece.second +
                             "' after the sequence (e.g. EOS) is not supported: resq only "
                             "prepends a BOS");
    }
    auto specials = node.find("special_tokens");
    if (specials == node.end() || !specials->contains(piece.second)) {
      throw ConfigError(where + ".special_tokens: no entry for '" + piece.second + "'");
    }
    const json& entry = (*specials)[piece.second];
    if (!entry.contains("ids") || !entry["ids"].is_array()) {
      throw ConfigError(where + ".special_tokens['" + piece.second + "'].ids: missing");
    }
    for (const json& id : entry["ids"]) {
      if (!id.is_number_integer()) {
        throw ConfigError(where + ".special_tokens['" + piece.second + "'].ids: not integers");
      }
      prefix_ids.push_back(id.get<int32_t>());
    }
  }
  if (!seen_sequence) throw ConfigError(where + ".single: no $A sequence");
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw IoError(path + ": cannot open for reading");
  const std::streamoff size = in.tellg();
  if (size < 0) throw IoError(path + ": cannot determine the file size");
  std::string text(static_cast<size_t>(size), '\0');
  in.seekg(0);
  if (!in.read(text.data(), size)) throw IoError(path + ": read failed");
  return text;
}

}  // namespace

namespace {

std::unique_ptr<BpeTokenizer::Impl> build_impl(const std::string& tokenizer_json,
                                               const std::string& config_json,
                                               const std::string& origin) {
  using Impl = BpeTokenizer::Impl;
  auto impl = std::make_unique<Impl>();
  const std::string file = origin + "/tokenizer.json";
  impl->origin = file;
  TokenizerJsonReader reader(file, tokenizer_json.size());
  json::sax_parse(tokenizer_json, &reader);
  const json& root = reader.root;
  if (!root.is_object()) throw FormatError(file + ": expected a JSON object at the top level");
  if (auto v = root.find("version"); v != root.end() && !(v->is_string() && *v == "1.0")) {
    throw UnsupportedError(file + ": version " + dump_short(*v) + " (expected \"1.0\")");
  }

  // ---- model
  auto model_it = root.find("model");
  if (model_it == root.end() || !model_it->is_object()) {
    throw ConfigError(file + ": 'model' missing or not an object");
  }
  const json& model = *model_it;
  const std::string mw = file + ": model";
  if (auto t = model.find("type"); t != model.end()) {
    if (!t->is_string() || *t != "BPE") {
      throw UnsupportedError(mw + ".type " + dump_short(*t) +
                             " is not supported by the BPE tokenizer (expected \"BPE\")");
    }
  }
  auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) {
    throw ConfigError(mw + ".vocab: missing or not an object of token -> id");
  }
  auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) {
    throw ConfigError(mw + ".merges: missing or not an array");
  }
  if (auto d = model.find("dropout"); d != model.end() && !d->is_null()) {
    throw UnsupportedError(mw + ".dropout " + dump_short(*d) +
                           ": BPE dropout is random; only null is supported");
  }

  // ---- model vocabulary (ids validated by the reader)
  if (!reader.has_vocab) throw ConfigError(mw + ".vocab: missing or not an object of token -> id");
  int64_t max_id = -1;
  for (const auto& entry : reader.vocab) max_id = std::max<int64_t>(max_id, entry.second);
  if (max_id < 0) throw ConfigError(mw + ".vocab is empty");
  {
    std::vector<std::string> texts(static_cast<size_t>(max_id + 1));
    std::vector<uint8_t> present(static_cast<size_t>(max_id + 1), 0);
    for (auto& [text, id_value] : reader.vocab) {
      const auto id = static_cast<size_t>(id_value);
      if (present[id]) {
        throw ConfigError(mw + ".vocab: id " + std::to_string(id) + " is given to both '" +
                          texts[id] + "' and '" + text + "'");
      }
      texts[id] = std::move(text);
      present[id] = 1;
    }
    impl->token_text = texts;
    impl->has_token = present;
    impl->vocab.build(std::move(texts), present);
  }

  // ---- added tokens. Ids are assigned the way HF's AddedVocabulary does, not taken from the
  // file: a content already known keeps its id, a new one gets the next id past the model
  // vocabulary (HF only warns when that differs from the "id" written in the file).
  std::vector<AddedToken> entries;
  if (auto a = root.find("added_tokens"); a != root.end() && !a->is_null()) {
    if (!a->is_array()) throw ConfigError(file + ": added_tokens: expected an array");
    for (size_t i = 0; i < a->size(); ++i) {
      const json& entry = (*a)[i];
      const std::string aw = file + ": added_tokens[" + std::to_string(i) + "]";
      if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_integer() ||
          !entry.contains("content") || !entry["content"].is_string()) {
        throw ConfigError(aw + ": expected an object with integer 'id' and string 'content'");
      }
      AddedToken token;
      token.content = entry["content"].get<std::string>();
      if (bpe_detail::find_invalid_utf8(token.content)) {
        throw ConfigError(aw + ".content is not valid UTF-8");
      }
      token.special = get_bool(entry, "special", false, aw);
      token.single_word = get_bool(entry, "single_word", false, aw);
      token.lstrip = get_bool(entry, "lstrip", false, aw);
      token.rstrip = get_bool(entry, "rstrip", false, aw);
      token.normalized = get_bool(entry, "normalized", !token.special, aw);
      entries.push_back(std::move(token));
    }
  }
  const auto vocab_count = static_cast<int64_t>(impl->vocab.size());
  int64_t max_added = -1;
  std::unordered_map<int32_t, AddedToken> by_id;  // HF added_tokens_map_r
  std::vector<AddedToken> special_list, plain_list;
  std::unordered_map<std::string, bool> special_seen;
  const auto same_token = [](const AddedToken& a, const AddedToken& b) {
    return a.content == b.content && a.special == b.special && a.single_word == b.single_word &&
           a.lstrip == b.lstrip && a.rstrip == b.rstrip && a.normalized == b.normalized;
  };
  for (const AddedToken& token : entries) {
    if (token.content.empty()) continue;
    if (token.special && !special_seen.count(token.content)) {
      special_seen[token.content] = true;
      special_list.push_back(token);
    }
    if (std::any_of(by_id.begin(), by_id.end(),
                    [&](const auto& kv) { return same_token(kv.second, token); })) {
      continue;
    }
    int64_t id;
    if (auto known = impl->added_ids.find(token.content); known != impl->added_ids.end()) {
      id = known->second;
    } else if (const int32_t v = impl->vocab.find(token.content); v >= 0) {
      id = v;
    } else if (max_added < 0) {
      id = vocab_count;
    } else {
      id = (max_added >= vocab_count || vocab_count == 0) ? max_added + 1 : vocab_count;
    }
    if (id > kMaxTokenId) throw ConfigError(file + ": added_tokens: too many tokens");
    max_added = std::max(max_added, id);
    impl->added_ids[token.content] = static_cast<int32_t>(id);
    by_id[static_cast<int32_t>(id)] = token;
    if (!special_seen.count(token.content)) plain_list.push_back(token);
  }
  if (max_added >= static_cast<int64_t>(impl->token_text.size())) {
    impl->token_text.resize(static_cast<size_t>(max_added + 1));
    impl->has_token.resize(static_cast<size_t>(max_added + 1), 0);
  }
  for (const auto& [id, token] : by_id) {
    impl->token_text[static_cast<size_t>(id)] = token.content;  // HF decodes added text first
    impl->has_token[static_cast<size_t>(id)] = 1;
  }
  // Matching order: special tokens, then the others; flags from the id's current entry.
  for (const std::vector<AddedToken>* list : {&special_list, &plain_list}) {
    for (const AddedToken& listed : *list) {
      const int32_t id = impl->added_ids.at(listed.content);
      AddedToken token = by_id.at(id);
      token.id = id;
      token.normalized = listed.normalized;  // HF partitions the tries by the listed entry
      impl->added.push_back(std::move(token));
    }
  }

  // ---- BPE options
  impl->ignore_merges = get_bool(model, "ignore_merges", false, mw);
  impl->byte_fallback = get_bool(model, "byte_fallback", false, mw);
  impl->fuse_unk = get_bool(model, "fuse_unk", false, mw);
  impl->continuing_subword_prefix =
      get_optional_string(model, "continuing_subword_prefix", mw).value_or("");
  impl->end_of_word_suffix = get_optional_string(model, "end_of_word_suffix", mw).value_or("");
  if (auto unk = get_optional_string(model, "unk_token", mw)) {
    const int32_t id = impl->vocab.find(*unk);
    if (id < 0) throw ConfigError(mw + ".unk_token '" + *unk + "' is not in model.vocab");
    impl->unk_id = id;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    impl->byte_fallback_ids[static_cast<size_t>(b)] = impl->vocab.find(name);
  }

  // ---- merges: "a b" strings or ["a", "b"] pairs (split by the reader); rank = position
  if (!reader.has_merges) throw ConfigError(mw + ".merges: missing or not an array");
  impl->merges.reserve(reader.merge_count());
  const size_t prefix_len = impl->continuing_subword_prefix.size();
  std::string joined;
  for (size_t i = 0; i < reader.merge_count(); ++i) {
    const std::string_view left = reader.merge_left(i), right = reader.merge_right(i);
    const auto where = [&] { return mw + ".merges[" + std::to_string(i) + "]"; };
    const int32_t l = impl->vocab.find(left);
    if (l < 0) {
      throw ConfigError(where() + ": token '" + std::string(left) + "' is not in model.vocab");
    }
    const int32_t r = impl->vocab.find(right);
    if (r < 0) {
      throw ConfigError(where() + ": token '" + std::string(right) + "' is not in model.vocab");
    }
    joined.assign(left);
    joined.append(right.substr(std::min(prefix_len, right.size())));
    const int32_t j = impl->vocab.find(joined);
    if (j < 0) throw ConfigError(where() + ": merged token '" + joined + "' is not in model.vocab");
    impl->merges.insert(l, r, static_cast<int32_t>(i), j);
  }

  // ---- normalizer, pre-tokenizer, post-processor, decoder
  if (auto n = root.find("normalizer"); n != root.end()) {
    parse_normalizer(*n, file + ": normalizer", impl->normalizers);
  }
  if (auto p = root.find("pre_tokenizer"); p != root.end()) {
    parse_pre_tokenizer(*p, file + ": pre_tokenizer", impl->pre_tokenizers);
  }
  std::vector<int32_t> prefix_ids;
  if (auto p = root.find("post_processor"); p != root.end()) {
    parse_post_processor(*p, file + ": post_processor", prefix_ids);
  }
  if (prefix_ids.size() > 1) {
    throw UnsupportedError(file + ": post_processor adds " + std::to_string(prefix_ids.size()) +
                           " tokens in front of the text; resq supports one BOS");
  }
  if (auto d = root.find("decoder"); d != root.end() && !d->is_null()) {
    const std::string type = get_type(*d, file + ": decoder");
    if (type != "ByteLevel") {
      throw UnsupportedError(file + ": decoder.type '" + type +
                             "' is not supported (supported: ByteLevel, null)");
    }
    impl->byte_level_decoder = true;
  }

  // Added-token tries: non-normalized tokens match the raw text, normalized ones match the
  // normalized text (their content normalized too). Special tokens come first, as in HF.
  for (size_t i = 0; i < impl->added.size(); ++i) {
    const AddedToken& t = impl->added[i];
    if (t.normalized) {
      impl->normalized_trie.insert(impl->normalize(t.content), static_cast<int32_t>(i));
    } else {
      impl->raw_trie.insert(t.content, static_cast<int32_t>(i));
    }
  }

  // ---- BOS: post-processor template, overridden by tokenizer_config.json add_bos_token
  std::optional<bool> config_add_bos;
  std::optional<std::string> config_bos_token;
  if (!config_json.empty()) {
    const std::string cfile = origin + "/tokenizer_config.json";
    json config;
    try {
      config = json::parse(config_json);
    } catch (const json::parse_error& e) {
      throw FormatError(cfile + ": invalid JSON: " + e.what());
    }
    if (!config.is_object()) throw FormatError(cfile + ": expected a JSON object");
    if (auto b = config.find("add_bos_token"); b != config.end() && !b->is_null()) {
      if (!b->is_boolean()) throw ConfigError(cfile + ": add_bos_token: expected true or false");
      config_add_bos = b->get<bool>();
    }
    if (get_bool(config, "add_eos_token", false, cfile)) {
      throw UnsupportedError(cfile + ": add_eos_token = true is not supported (resq never "
                             "appends EOS to an encoded text)");
    }
    if (auto b = config.find("bos_token"); b != config.end() && !b->is_null()) {
      if (b->is_string()) {
        config_bos_token = b->get<std::string>();
      } else if (b->is_object() && b->contains("content") && (*b)["content"].is_string()) {
        config_bos_token = (*b)["content"].get<std::string>();
      } else {
        throw ConfigError(cfile + ": bos_token: expected a string, {\"content\": ...} or null");
      }
    }
  }
  if (!prefix_ids.empty()) {
    impl->bos = prefix_ids[0];
  } else if (config_bos_token) {
    auto a = impl->added_ids.find(*config_bos_token);
    const int32_t v = impl->vocab.find(*config_bos_token);
    if (a != impl->added_ids.end()) {
      impl->bos = a->second;
    } else if (v >= 0) {
      impl->bos = v;
    } else {
      throw ConfigError(origin + "/tokenizer_config.json: bos_token '" + *config_bos_token +
                        "' is not a token of " + file);
    }
  }
  impl->adds_bos = config_add_bos.value_or(!prefix_ids.empty());
  if (impl->adds_bos && !impl->bos) {
    throw ConfigError(origin + "/tokenizer_config.json: add_bos_token is true but no BOS token "
                      "is defined (bos_token or a post_processor template)");
  }
  if (impl->bos && (*impl->bos < 0 || static_cast<size_t>(*impl->bos) >= impl->has_token.size() ||
                    !impl->has_token[static_cast<size_t>(*impl->bos)])) {
    throw ConfigError(file + ": BOS id " + std::to_string(*impl->bos) + " has no token");
  }
  return impl;
}

}  // namespace

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_json(const std::string& tokenizer_json,
                                                      const std::string& config_json,
                                                      const std::string& origin) {
  try {
    return std::unique_ptr<BpeTokenizer>(
        new BpeTokenizer(build_impl(tokenizer_json, config_json, origin)));
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong JSON type somewhere not checked explicitly.
    throw ConfigError(origin + "/tokenizer.json: unexpected content: " + e.what());
  }
}

BpeTokenizer::BpeTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BpeTokenizer::~BpeTokenizer() = default;

std::vector<int32_t> BpeTokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  impl_->run(
      text, [&](int32_t id) { ids.push_back(id); },
      [&](std::string_view word) { impl_->encode_word(word, ids); });
  return ids;
}

std::vector<std::string> BpeTokenizer::pre_tokenize(const std::string& text) const {
  std::vector<std::string> words;
  impl_->run(
      text, [&](int32_t id) { words.push_back(impl_->token_text[static_cast<size_t>(id)]); },
      [&](std::string_view word) { words.emplace_back(word); });
  return words;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  const ByteLevelTable& table = byte_level_table();
  std::string bytes;
  bytes.reserve(ids.size() * 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || static_cast<size_t>(id) >= impl_->has_token.size() ||
        !impl_->has_token[static_cast<size_t>(id)]) {
      throw UsageError("decode: id " + std::to_string(id) + " at position " + std::to_string(i) +
                       " is not a token of " + impl_->origin + " (vocab size " +
                       std::to_string(vocab_size()) + ")");
    }
    const std::string& token = impl_->token_text[static_cast<size_t>(id)];
    if (!impl_->byte_level_decoder) {
      if (i > 0) bytes += ' ';  // HF joins tokens with spaces when there is no decoder
      bytes += token;
      continue;
    }
    // ByteLevel: a token made only of byte characters becomes those bytes, any other token
    // (e.g. an added token with raw text) is taken as it is.
    const size_t mark = bytes.size();
    bool all_bytes = true;
    for (size_t pos = 0; pos < token.size() && all_bytes;) {
      const uint32_t cp = decode_at(token, pos);
      pos += utf8_char_length(static_cast<unsigned char>(token[pos]));
      const int b = cp < table.char_to_byte.size() ? table.char_to_byte[cp] : -1;
      if (b < 0) all_bytes = false;
      else bytes += static_cast<char>(b);
    }
    if (!all_bytes) {
      bytes.resize(mark);
      bytes += token;
    }
  }
  return bpe_detail::utf8_lossy(bytes);
}

int32_t BpeTokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->has_token.size());
}

std::optional<int32_t> BpeTokenizer::bos_id() const { return impl_->bos; }

bool BpeTokenizer::adds_bos() const { return impl_->adds_bos; }

std::string BpeTokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->has_token.size() ||
      !impl_->has_token[static_cast<size_t>(id)]) {
    throw UsageError("id " + std::to_string(id) + " is not a token of " + impl_->origin);
  }
  return impl_->token_text[static_cast<size_t>(id)];
}

std::optional<int32_t> BpeTokenizer::token_to_id(const std::string& token) const {
  if (auto a = impl_->added_ids.find(token); a != impl_->added_ids.end()) return a->second;
  if (const int32_t v = impl_->vocab.find(token); v >= 0) return v;
  return std::nullopt;
}

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& dir) {
  const std::string json_path = dir + "/tokenizer.json";
  const std::string config_path = dir + "/tokenizer_config.json";
  const std::string tokenizer_json = read_text_file(json_path);
  std::string config_json;
  if (std::ifstream(config_path).good()) config_json = read_text_file(config_path);
  return BpeTokenizer::from_json(tokenizer_json, config_json, dir);
}

}  // namespace resq
