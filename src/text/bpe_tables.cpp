// The byte-level BPE tokenizer's lookup structures: building the merge and vocabulary tables,
// growing the word cache, inserting into the added-token trie (the lookups are in bpe_tables.h).
#include "bpe_tables.h"

namespace resq::bpe_detail {
namespace {

// Smallest power of two >= 16 that keeps an open-addressing table of n entries at most half full.
size_t table_capacity(size_t n) {
  size_t capacity = 16;
  while (capacity < 2 * n) capacity <<= 1;
  return capacity;
}

}  // namespace

void MergeTable::reserve(size_t n) {
  slots_.assign(table_capacity(n), Slot{});
  mask_ = slots_.size() - 1;
}

void MergeTable::insert(int32_t left, int32_t right, int32_t rank, int32_t merged) {
  const uint64_t key = make_key(left, right);
  size_t i = hash(key) & mask_;
  while (slots_[i].key != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
  slots_[i] = Slot{key, rank, merged};
}

void VocabTable::build(std::vector<std::string> texts, const std::vector<uint8_t>& present) {
  text_ = std::move(texts);
  size_t n = 0;
  for (uint8_t p : present) n += p;
  slots_.assign(table_capacity(n), Slot{});
  mask_ = slots_.size() - 1;
  size_ = n;
  for (size_t id = 0; id < present.size(); ++id) {
    if (!present[id]) continue;
    const uint64_t h = hash(text_[id]);
    size_t i = h & mask_;
    while (slots_[i].id >= 0) i = (i + 1) & mask_;
    slots_[i] = Slot{static_cast<uint32_t>(h >> 32), static_cast<int32_t>(id)};
  }
}

void WordCache::insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t n) {
  if (size_ >= kCapacity || word.size() >= kEmpty) return;
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

void WordCache::grow() {
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

void AddedTrie::insert(const std::string& pattern, int32_t token_index) {
  if (pattern.empty()) return;
  if (nodes_.empty()) nodes_.emplace_back();
  first_byte_[static_cast<unsigned char>(pattern[0])] = true;
  int32_t node = 0;
  for (char ch : pattern) {
    const auto c = static_cast<unsigned char>(ch);
    int32_t child = child_of(node, c);
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

}  // namespace resq::bpe_detail
