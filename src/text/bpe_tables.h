// Private to src/text: the byte-level BPE tokenizer's lookup structures — merges by token pair,
// vocabulary by text, the word cache and the added-token trie. Lookups are inline: they are the
// encoder's inner loop.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace resq::bpe_detail {

// (left id, right id) -> (rank, merged id), open addressing on a 64-bit key.
class MergeTable {
 public:
  void reserve(size_t n);
  // Later entries overwrite earlier ones, as HF's HashMap collect does.
  void insert(int32_t left, int32_t right, int32_t rank, int32_t merged);
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
  void build(std::vector<std::string> texts, const std::vector<uint8_t>& present);
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
// (offsets, so arena growth is harmless). Stops accepting words at kCapacity.
class WordCache {
 public:
  // Words kept (HF keeps 10,000; results do not depend on it).
  static constexpr size_t kCapacity = 1 << 17;

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
  void insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t n);

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
  void grow();
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
  std::string keys_;
  std::vector<int32_t> ids_;
};

// Byte trie over added-token contents; longest match at a position, scanned left to right
// (aho-corasick's leftmost-longest non-overlapping semantics).
class AddedTrie {
 public:
  bool empty() const { return nodes_.size() <= 1; }
  void insert(const std::string& pattern, int32_t token_index);
  // Finds the next match at or after `from`: returns false if none, else sets begin/end/token.
  bool next_match(std::string_view text, size_t from, size_t* begin, size_t* end,
                  int32_t* token) const {
    if (empty()) return false;
    for (size_t pos = from; pos < text.size(); ++pos) {
      if (!first_byte_[static_cast<unsigned char>(text[pos])]) continue;
      int32_t node = 0, best = -1;
      size_t best_end = 0;
      for (size_t i = pos; i < text.size(); ++i) {
        const int32_t child = child_of(node, static_cast<unsigned char>(text[i]));
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
  // The node reached from `node` by byte `c`, or -1.
  int32_t child_of(int32_t node, unsigned char c) const {
    for (const auto& edge : nodes_[node].edges) {
      if (edge.first == c) return edge.second;
    }
    return -1;
  }
  std::vector<Node> nodes_;
  std::array<bool, 256> first_byte_{};
};

}  // namespace resq::bpe_detail
