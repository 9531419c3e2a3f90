// Byte-level BPE pre-tokenizers: reading the pre_tokenizer config (ByteLevel, Split, Sequence)
// and running the steps on a piece of text, with HF's split behaviors.
#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bpe_impl.h"
#include "bpe_unicode.h"
#include "resq/common/error.h"

namespace resq {
namespace bpe_detail {
namespace {

// GPT-2's pre-tokenizer regex, used by ByteLevel when use_regex is true.
const char* const kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

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

SplitBehavior parse_behavior(const JsonFields& in) {
  const std::string s = in.one_of(
      "behavior", {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"});
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  return SplitBehavior::kContiguous;
}

}  // namespace

void parse_pre_tokenizer(const JsonFields& in, std::vector<PreTokenizerStep>& steps) {
  const std::string type = in.string("type");
  if (type == "Sequence") {
    for (const JsonFields& step : in.objects("pretokenizers")) parse_pre_tokenizer(step, steps);
    return;
  }
  PreTokenizerStep step;
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    step.add_prefix_space = in.optional_boolean("add_prefix_space").value_or(true);
    if (in.optional_boolean("use_regex").value_or(true)) {
      step.regex = std::make_unique<Regex>(onig_to_pcre2(kGpt2Pattern), in.where() + " (GPT-2 regex)");
    }
  } else if (type == "Split") {
    step.kind = PreTokenizerStep::Kind::kSplit;
    const JsonFields pattern = in.object("pattern");
    if (const auto* re = pattern.find("Regex"); re && re->is_string()) {
      step.regex = std::make_unique<Regex>(onig_to_pcre2(re->get<std::string>()), pattern.where("Regex"));
    } else if (const auto* lit = pattern.find("String"); lit && lit->is_string()) {
      step.literal = lit->get<std::string>();
    } else {
      pattern.fail("must be {\"Regex\": string} or {\"String\": string}, got " +
                   json_excerpt(pattern.raw()));
    }
    step.behavior = parse_behavior(in);
    step.invert = in.optional_boolean("invert").value_or(false);
  } else {
    unsupported_type(in, type, "ByteLevel, Split, Sequence");
  }
  steps.push_back(std::move(step));
}

}  // namespace bpe_detail

using bpe_detail::apply_behavior;
using bpe_detail::byte_level_table;
using bpe_detail::ByteLevelTable;
using bpe_detail::cover_with_matches;
using bpe_detail::PreTokenizerStep;
using bpe_detail::Span;
using bpe_detail::WordSink;

// HF drops empty splits after every step; ByteLevel maps bytes to characters last.
void BpeTokenizer::Impl::pre_tokenize_piece(size_t step_index, std::string_view piece,
                                            WordSink on_word) const {
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

}  // namespace resq
