// Byte-level BPE encoding and decoding, mirroring HF `tokenizers` 0.23: added-token extraction,
// normalization, pre-tokenization (bpe_pretokenize.cpp), BPE merges by rank and the ByteLevel
// decoder. Reading tokenizer.json is bpe_load.cpp.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <mutex>
#include <queue>
#include <string>
#include <vector>

#include "bpe_impl.h"
#include "bpe_unicode.h"
#include "resq/common/error.h"
#include "resq/text/bpe_tokenizer.h"

namespace resq {

using bpe_detail::byte_level_table;
using bpe_detail::ByteLevelTable;
using bpe_detail::decode_at;
using bpe_detail::decode_last;
using bpe_detail::is_white_space;
using bpe_detail::is_word_char;
using bpe_detail::utf8_char_length;
using bpe_detail::VocabTable;
using bpe_detail::WordSink;

template <typename OnToken, typename OnWord>
void BpeTokenizer::Impl::run(const std::string& text, OnToken on_token, OnWord on_word) const {
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
                         WordSink(on_word));
    }
  }
}

// HF AddedVocabulary::find_matches: splits `s` around added tokens, applying single_word,
// lstrip and rstrip. The segments cover `s`; an empty `s` gives one empty text segment.
std::vector<BpeTokenizer::Impl::Segment> BpeTokenizer::Impl::split_added(
    std::string_view s, const AddedTrie& trie) const {
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

// ---------------------------------------------------------------- the public interface

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

}  // namespace resq
