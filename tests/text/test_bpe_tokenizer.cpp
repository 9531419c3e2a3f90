// Unit tests of the byte-level BPE tokenizer on small hand-built tokenizer.json files: merge
// order, model options, added-token options, pre-tokenizer behaviors, errors, UTF-8 helpers.
#include <gtest/gtest.h>
#include <utf8proc.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/text/bpe_tokenizer.h"

namespace resq {
namespace {

using nlohmann::json;
using bpe_detail::find_invalid_utf8;
using bpe_detail::onig_to_pcre2;
using bpe_detail::unicode_normalize;
using bpe_detail::Regex;
using bpe_detail::utf8_lossy;

// A tokenizer.json with a BPE model over `tokens` (id = position) and `merges`; no normalizer,
// pre-tokenizer, post-processor or decoder unless the test adds them.
json make_tokenizer(const std::vector<std::string>& tokens, const json& merges) {
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  return json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer", nullptr},
              {"post_processor", nullptr},
              {"decoder", nullptr},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"vocab", vocab},
                {"merges", merges}}}};
}

std::unique_ptr<BpeTokenizer> build(const json& tokenizer, const json& config = json()) {
  return BpeTokenizer::from_json(tokenizer.dump(), config.is_null() ? "" : config.dump(), "mem");
}

json added_token(int id, const std::string& content, bool special, json extra = json::object()) {
  json t = {{"id", id},          {"content", content}, {"single_word", false}, {"lstrip", false},
            {"rstrip", false},   {"normalized", false}, {"special", special}};
  for (auto it = extra.begin(); it != extra.end(); ++it) t[it.key()] = it.value();
  return t;
}

// Expects `fn` to throw `E` with a message containing every fragment.
template <typename E, typename Fn>
void expect_error(Fn fn, const std::vector<std::string>& fragments) {
  try {
    fn();
    ADD_FAILURE() << "no exception thrown";
  } catch (const E& e) {
    const std::string what = e.what();
    for (const std::string& f : fragments) {
      EXPECT_NE(what.find(f), std::string::npos) << "message '" << what << "' lacks '" << f << "'";
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

// ---------------------------------------------------------------- merges

TEST(BpeMerges, AppliedByRankNotByPosition) {
  // ids: a0 b1 c2 ab3 bc4 abc5
  const std::vector<std::string> tokens = {"a", "b", "c", "ab", "bc", "abc"};
  // "b c" ranks first, so "abc" becomes a + bc, then a bc -> abc.
  auto t1 = build(make_tokenizer(tokens, {"b c", "a b", "a bc"}));
  EXPECT_EQ(t1->encode("abc"), (std::vector<int32_t>{5}));
  // "a b" first: ab + c, and no merge joins them.
  auto t2 = build(make_tokenizer(tokens, {"a b", "b c", "a bc"}));
  EXPECT_EQ(t2->encode("abc"), (std::vector<int32_t>{3, 2}));
}

TEST(BpeMerges, EqualRanksMergeLeftmostFirst) {
  auto t = build(make_tokenizer({"a", "aa"}, {"a a"}));
  EXPECT_EQ(t->encode("aaa"), (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(t->encode("aaaa"), (std::vector<int32_t>{1, 1}));
  EXPECT_EQ(t->encode("a"), (std::vector<int32_t>{0}));
  EXPECT_TRUE(t->encode("").empty());
}

TEST(BpeMerges, PairFormEqualsStringForm) {
  const std::vector<std::string> tokens = {"a", "b", "c", "ab", "bc", "abc"};
  auto strings = build(make_tokenizer(tokens, {"b c", "a bc"}));
  auto pairs = build(make_tokenizer(tokens, json::array({{"b", "c"}, {"a", "bc"}})));
  for (const std::string text : {"abc", "cab", "bcabca", "aabbcc"}) {
    EXPECT_EQ(strings->encode(text), pairs->encode(text)) << text;
  }
  EXPECT_EQ(pairs->encode("abc"), (std::vector<int32_t>{5}));
}

// Independent O(n^2) reference: repeatedly merge the lowest-rank adjacent pair (leftmost on
// ties) until no pair has a merge.
std::vector<std::string> naive_bpe(const std::string& word,
                                   const std::map<std::pair<std::string, std::string>, int>& rank) {
  std::vector<std::string> parts;
  for (char c : word) parts.emplace_back(1, c);
  while (parts.size() > 1) {
    int best = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      auto it = rank.find({parts[i], parts[i + 1]});
      if (it != rank.end() && (best < 0 || it->second < best)) best = it->second, at = i;
    }
    if (best < 0) break;
    parts[at] += parts[at + 1];
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  return parts;
}

TEST(BpeMerges, PriorityQueueMatchesNaiveReferenceOnRandomWords) {
  std::mt19937 rng(1234);
  std::vector<std::string> tokens = {"a", "b", "c", "d"};
  std::map<std::pair<std::string, std::string>, int> rank;
  json merges = json::array();
  while (merges.size() < 300) {  // random merges of existing tokens, new tokens only
    const std::string& l = tokens[rng() % tokens.size()];
    const std::string& r = tokens[rng() % tokens.size()];
    const std::string joined = l + r;
    if (joined.size() > 12 || std::find(tokens.begin(), tokens.end(), joined) != tokens.end()) {
      continue;
    }
    rank[{l, r}] = static_cast<int>(merges.size());
    merges.push_back(l + " " + r);
    tokens.push_back(joined);
  }
  auto t = build(make_tokenizer(tokens, merges));
  for (int trial = 0; trial < 500; ++trial) {
    std::string word;
    const size_t len = 1 + rng() % 60;
    for (size_t i = 0; i < len; ++i) word += static_cast<char>('a' + rng() % 4);
    std::vector<int32_t> expected;
    for (const std::string& part : naive_bpe(word, rank)) {
      expected.push_back(static_cast<int32_t>(
          std::find(tokens.begin(), tokens.end(), part) - tokens.begin()));
    }
    ASSERT_EQ(t->encode(word), expected) << "word " << word;
  }
}

// ---------------------------------------------------------------- model options

TEST(BpeModel, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  json j = make_tokenizer({"a", "b", "c", "abc"}, json::array());
  EXPECT_EQ(build(j)->encode("abc"), (std::vector<int32_t>{0, 1, 2}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(build(j)->encode("abc"), (std::vector<int32_t>{3}));
  EXPECT_EQ(build(j)->encode("ab"), (std::vector<int32_t>{0, 1}));
}

TEST(BpeModel, UnknownCharactersUnkFuseAndDrop) {
  json j = make_tokenizer({"a", "<unk>"}, json::array());
  EXPECT_EQ(build(j)->encode("aXYa"), (std::vector<int32_t>{0, 0}));  // no unk: dropped
  j["model"]["unk_token"] = "<unk>";
  EXPECT_EQ(build(j)->encode("aXYa"), (std::vector<int32_t>{0, 1, 1, 0}));
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(build(j)->encode("aXYa"), (std::vector<int32_t>{0, 1, 0}));
  EXPECT_EQ(build(j)->encode("XY"), (std::vector<int32_t>{1}));
}

TEST(BpeModel, ByteFallbackUsesByteTokens) {
  // "é" is C3 A9; "€" (E2 82 AC) has no complete byte set, so it falls to unk.
  json j = make_tokenizer({"a", "<unk>", "<0xC3>", "<0xA9>", "<0xE2>"}, json::array());
  j["model"]["byte_fallback"] = true;
  j["model"]["unk_token"] = "<unk>";
  EXPECT_EQ(build(j)->encode("a\xC3\xA9" "a"), (std::vector<int32_t>{0, 2, 3, 0}));
  EXPECT_EQ(build(j)->encode("\xE2\x82\xAC"), (std::vector<int32_t>{1}));
}

TEST(BpeModel, SubwordPrefixAndWordSuffix) {
  json p = make_tokenizer({"a", "##b", "ab", "##c", "abc"}, {"a ##b", "ab ##c"});
  p["model"]["continuing_subword_prefix"] = "##";
  EXPECT_EQ(build(p)->encode("abc"), (std::vector<int32_t>{4}));
  json s = make_tokenizer({"a", "b</w>", "ab</w>", "b"}, {"a b</w>"});
  s["model"]["end_of_word_suffix"] = "</w>";
  EXPECT_EQ(build(s)->encode("ab"), (std::vector<int32_t>{2}));
  EXPECT_EQ(build(s)->encode("ba"), (std::vector<int32_t>{3}));  // "a</w>" unknown: dropped
}

// ---------------------------------------------------------------- added tokens

TEST(BpeAddedTokens, MatchedBeforeTheModelLongestFirst) {
  json j = make_tokenizer({"<", ">", "x", "y", "|"}, json::array());
  j["added_tokens"] = {added_token(5, "<x>", true), added_token(6, "<x>y", false)};
  auto t = build(j);
  EXPECT_EQ(t->encode("<x>"), (std::vector<int32_t>{5}));
  EXPECT_EQ(t->encode("<x>y"), (std::vector<int32_t>{6}));            // longest wins
  EXPECT_EQ(t->encode("x<x>|<x"), (std::vector<int32_t>{2, 5, 4, 0, 2}));
  EXPECT_EQ(t->vocab_size(), 7);
  EXPECT_EQ(t->decode({2, 5, 6}), "x <x> <x>y");  // no decoder: HF joins tokens with spaces
}

TEST(BpeAddedTokens, IdsAssignedAsHuggingFaceDoes) {
  // HF ignores the written ids: known contents keep their vocabulary id, new ones are numbered
  // after the vocabulary (checked against tokenizers 0.23.2).
  json j = make_tokenizer({"a", "b", "ab", "c"}, {"a b"});
  j["added_tokens"] = {added_token(7, "ab", false), added_token(100, "<x>", true),
                       added_token(50, "<y>", true), added_token(2, "<z>", true)};
  auto t = build(j);
  EXPECT_EQ(t->token_to_id("ab"), 2);
  EXPECT_EQ(t->token_to_id("<x>"), 4);
  EXPECT_EQ(t->token_to_id("<y>"), 5);
  EXPECT_EQ(t->token_to_id("<z>"), 6);
  EXPECT_EQ(t->encode("ab<x><y><z>c"), (std::vector<int32_t>{2, 4, 5, 6, 3}));
  EXPECT_EQ(t->vocab_size(), 7);
}

TEST(BpeAddedTokens, LstripRstripAndSingleWord) {
  json j = make_tokenizer({"a", "b", " ", "<", ">", "m", "w"}, json::array());
  j["added_tokens"] = {added_token(7, "<m>", true, {{"lstrip", true}, {"rstrip", true}}),
                       added_token(8, "<w>", false, {{"single_word", true}})};
  auto t = build(j);
  // lstrip/rstrip swallow the spaces around the token.
  EXPECT_EQ(t->encode("a  <m>  b"), (std::vector<int32_t>{0, 7, 1}));
  // single_word: only where no word character touches the token.
  EXPECT_EQ(t->encode("<w> a<w> <w>b <w>"),
            (std::vector<int32_t>{8, 2, 0, 3, 6, 4, 2, 3, 6, 4, 1, 2, 8}));
}

TEST(BpeAddedTokens, NormalizedTokensMatchAfterNormalization) {
  // NFKC turns U+FB01 (fi ligature) into "fi"; a normalized added token "fi" then matches, a
  // special (non-normalized) token is matched in the raw text.
  json j = make_tokenizer({"f", "i", "x", "\xEF\xAC\x81"}, json::array());
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFKC"}}}}};
  j["added_tokens"] = {added_token(4, "fi", false, {{"normalized", true}}),
                       added_token(5, "\xEF\xAC\x81x", true)};
  auto t = build(j);
  EXPECT_EQ(t->encode("\xEF\xAC\x81"), (std::vector<int32_t>{4}));
  EXPECT_EQ(t->encode("\xEF\xAC\x81x"), (std::vector<int32_t>{5}));
  EXPECT_EQ(t->encode("xfi"), (std::vector<int32_t>{2, 4}));
}

// ---------------------------------------------------------------- pre-tokenizers

std::vector<std::string> split_words(const std::string& behavior, bool invert,
                                     const std::string& text) {
  json j = make_tokenizer({"a"}, json::array());
  j["pre_tokenizer"] = {{"type", "Split"},
                        {"pattern", {{"String", "-"}}},
                        {"behavior", behavior},
                        {"invert", invert}};
  return build(j)->pre_tokenize(text);
}

TEST(BpePreTokenizer, SplitBehaviors) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split_words("Removed", false, "a-b--c"), (V{"a", "b", "c"}));
  EXPECT_EQ(split_words("Isolated", false, "a-b--c"), (V{"a", "-", "b", "-", "-", "c"}));
  EXPECT_EQ(split_words("MergedWithPrevious", false, "a-b--c"), (V{"a-", "b-", "-", "c"}));
  EXPECT_EQ(split_words("MergedWithNext", false, "a-b--c"), (V{"a", "-b", "-", "-c"}));
  EXPECT_EQ(split_words("Contiguous", false, "a-b--c"), (V{"a", "-", "b", "--", "c"}));
  EXPECT_EQ(split_words("Removed", true, "a-b--c"), (V{"-", "-", "-"}));
  EXPECT_EQ(split_words("Isolated", false, ""), V{});
}

TEST(BpePreTokenizer, ByteLevelRegexPrefixSpaceAndByteMapping) {
  json j = make_tokenizer({"a"}, json::array());
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true},
                        {"trim_offsets", true}, {"use_regex", true}};
  using V = std::vector<std::string>;
  // U+0120 (Ġ) stands for the space byte, U+010A (Ċ) for \n; "é" (C3 A9) becomes "Ã©".
  EXPECT_EQ(build(j)->pre_tokenize("Hello world's\n caf\xC3\xA9"),
            (V{"\xC4\xA0Hello", "\xC4\xA0world", "'s", "\xC4\x8A", "\xC4\xA0" "caf\xC3\x83\xC2\xA9"}));
  j["pre_tokenizer"]["use_regex"] = false;
  j["pre_tokenizer"]["add_prefix_space"] = false;
  EXPECT_EQ(build(j)->pre_tokenize("a b"), (V{"a\xC4\xA0" "b"}));
}

TEST(BpeDecoder, ByteLevelDecodeReplacesBrokenUtf8) {
  // "ð" (U+00F0) stands for byte 0xF0, the lead of a 4-byte sequence: alone it is invalid.
  json j = make_tokenizer({"\xC4\xA0", "a", "\xC3\xB0", "\xC5\x81"}, json::array());
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                  {"use_regex", true}};
  auto t = build(j);
  EXPECT_EQ(t->decode({0, 1}), " a");
  EXPECT_EQ(t->decode({2, 1}), "\xEF\xBF\xBD" "a");
  EXPECT_EQ(t->id_to_token(3), "\xC5\x81");
  expect_error<UsageError>([&] { t->decode({0, 4}); }, {"id 4", "position 1"});
  expect_error<UsageError>([&] { t->decode({-1}); }, {"id -1"});
}

// ---------------------------------------------------------------- BOS handling

TEST(BpeBos, TemplateAndTokenizerConfig) {
  json j = make_tokenizer({"a", "<s>"}, json::array());
  j["added_tokens"] = {added_token(1, "<s>", true)};
  EXPECT_FALSE(build(j)->adds_bos());
  EXPECT_EQ(build(j)->bos_id(), std::nullopt);
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", "<s> $A"},
                         {"pair", "<s> $A <s>:1 $B:1"},
                         {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  EXPECT_TRUE(build(j)->adds_bos());
  EXPECT_EQ(build(j)->bos_id(), 1);
  EXPECT_EQ(build(j)->encode("a<s>"), (std::vector<int32_t>{0, 1}));  // encode never adds BOS
  EXPECT_FALSE(build(j, {{"add_bos_token", false}})->adds_bos());
  j["post_processor"] = nullptr;
  auto from_config = build(j, {{"add_bos_token", true}, {"bos_token", {{"content", "<s>"}}}});
  EXPECT_TRUE(from_config->adds_bos());
  EXPECT_EQ(from_config->bos_id(), 1);
  expect_error<ConfigError>([&] { build(j, {{"add_bos_token", true}}); }, {"add_bos_token"});
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", "<s> $A <s>"},
                         {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  expect_error<UnsupportedError>([&] { build(j); }, {"post_processor.single", "after the sequence"});
}

// ---------------------------------------------------------------- errors

TEST(BpeErrors, MalformedTokenizerJson) {
  const json good = make_tokenizer({"a", "b", "ab"}, {"a b"});
  expect_error<FormatError>([] { BpeTokenizer::from_json("{\"model\": ", "", "dir"); },
                            {"dir/tokenizer.json", "invalid JSON"});
  json no_vocab = good;
  no_vocab["model"].erase("vocab");
  expect_error<ConfigError>([&] { build(no_vocab); }, {"model.vocab", "missing"});
  json unknown = make_tokenizer({"a", "b", "ab"}, {"a b", "a c"});
  expect_error<ConfigError>([&] { build(unknown); }, {"model.merges[1]", "'c'", "not in model.vocab"});
  json no_result = make_tokenizer({"a", "b"}, {"a b"});
  expect_error<ConfigError>([&] { build(no_result); }, {"model.merges[0]", "merged token 'ab'"});
  json bad_merge = make_tokenizer({"a", "b", "ab"}, {"ab"});
  expect_error<ConfigError>([&] { build(bad_merge); }, {"model.merges[0]", "left right"});
  json bad_id = good;
  bad_id["model"]["vocab"]["a"] = "zero";
  expect_error<ConfigError>([&] { build(bad_id); }, {"model.vocab['a']"});
  json dup = good;
  dup["model"]["vocab"]["b"] = 0;
  expect_error<ConfigError>([&] { build(dup); }, {"id 0 is given to both"});
  expect_error<FormatError>([&] { BpeTokenizer::from_json("[1, 2]", "", "dir"); }, {"top level"});
  json no_model = good;
  no_model.erase("model");
  expect_error<ConfigError>([&] { build(no_model); }, {"'model' missing"});
}

TEST(BpeErrors, UnsupportedComponentsNameTheField) {
  const json good = make_tokenizer({"a", "b", "ab"}, {"a b"});
  json j = good;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "_"}};
  expect_error<UnsupportedError>([&] { build(j); }, {"pre_tokenizer.type 'Metaspace'"});
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "ByteLevel"}}, {{"type", "Whitespace"}}}}};
  expect_error<UnsupportedError>([&] { build(j); },
                                 {"pre_tokenizer.pretokenizers[1].type 'Whitespace'"});
  j = good;
  j["normalizer"] = {{"type", "Lowercase"}};
  expect_error<UnsupportedError>([&] { build(j); }, {"normalizer.type 'Lowercase'"});
  j = good;
  j["model"]["type"] = "WordPiece";
  expect_error<UnsupportedError>([&] { build(j); }, {"model.type", "WordPiece"});
  j = good;
  j["model"]["dropout"] = 0.1;
  expect_error<UnsupportedError>([&] { build(j); }, {"model.dropout"});
  j = good;
  j["decoder"] = {{"type", "Metaspace"}};
  expect_error<UnsupportedError>([&] { build(j); }, {"decoder.type 'Metaspace'"});
  j = good;
  j["post_processor"] = {{"type", "BertProcessing"}};
  expect_error<UnsupportedError>([&] { build(j); }, {"post_processor.type 'BertProcessing'"});
  j = good;
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(a"}}}, {"behavior", "Isolated"}};
  expect_error<ConfigError>([&] { build(j); }, {"pre_tokenizer.pattern.Regex", "does not compile"});
  j["pre_tokenizer"]["pattern"]["Regex"] = "\\bword";
  expect_error<UnsupportedError>([&] { build(j); }, {"word boundary"});
  j["pre_tokenizer"]["pattern"]["Regex"] = "a";
  j["pre_tokenizer"]["behavior"] = "Sideways";
  expect_error<ConfigError>([&] { build(j); }, {"pre_tokenizer.behavior", "Sideways"});
  j = good;
  j["version"] = "2.0";
  expect_error<UnsupportedError>([&] { build(j); }, {"version"});
}

// Errors inside nested components name the file and the whole key path; null means "not set".
TEST(BpeErrors, NestedFieldsNameTheirPath) {
  const json good = make_tokenizer({"a", "b", "ab", "<s>"}, {"a b"});
  json j = good;
  j["added_tokens"] = {added_token(3, "<s>", true, {{"lstrip", "no"}})};
  expect_error<ConfigError>([&] { build(j); },
                            {"mem/tokenizer.json: 'added_tokens[0].lstrip' must be true or false, got \"no\""});
  j["added_tokens"] = {added_token(3, "<s>", true), {{"content", "x"}}};
  expect_error<ConfigError>([&] { build(j); }, {"'added_tokens[1].id' missing (must be an integer)"});
  j["added_tokens"] = nullptr;  // null added_tokens: none
  EXPECT_EQ(build(j)->encode("ab"), (std::vector<int32_t>{2}));
  j = good;
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"kind", "NFD"}}}}};
  expect_error<ConfigError>([&] { build(j); },
                            {"'normalizer.normalizers[1].type' missing (must be a string)"});
  j = good;
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Isolated"},
                        {"invert", 1}};
  expect_error<ConfigError>([&] { build(j); }, {"'pre_tokenizer.invert' must be true or false, got 1"});
  j = good;
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", "<s> $A"},
                         {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", "3"}}}}}};
  expect_error<ConfigError>([&] { build(j); },
                            {"'post_processor.special_tokens[\"<s>\"].ids' must be an array, got \"3\""});
  j = good;
  j["model"]["unk_token"] = 7;
  expect_error<ConfigError>([&] { build(j); }, {"'model.unk_token' must be a string, got 7"});
  j = good;
  j["model"]["byte_fallback"] = nullptr;  // null model options keep their defaults
  j["model"]["continuing_subword_prefix"] = nullptr;
  EXPECT_EQ(build(j)->encode("ab"), (std::vector<int32_t>{2}));
}

// Issue 19, defects 1 and 2: deep nesting anywhere in tokenizer.json (its own SAX reader) and
// numbers beyond double are refused at the shared JSON entry, naming the file and the key.
TEST(BpeErrors, DeepNestingAndNumberOverflowNameTheKey) {
  const json good = make_tokenizer({"a", "b", "ab"}, {"a b"});
  std::string text = good.dump();
  const size_t n = 100000;
  std::string deep = text;
  deep.replace(deep.find("\"normalizer\":null"), std::string("\"normalizer\":null").size(),
               "\"normalizer\":" + std::string(n, '[') + std::string(n, ']'));
  expect_error<FormatError>([&] { BpeTokenizer::from_json(deep, "", "dir"); },
                            {"dir/tokenizer.json: invalid JSON at 'normalizer[0][0]", "nested deeper than 128"});
  std::string big = text;
  big.replace(big.find("\"ab\":2"), std::string("\"ab\":2").size(), "\"ab\":2e999");
  expect_error<FormatError>([&] { BpeTokenizer::from_json(big, "", "dir"); },
                            {"dir/tokenizer.json: invalid JSON at 'model.vocab.ab': number overflow parsing '2e999'"});
  expect_error<FormatError>([&] { BpeTokenizer::from_json(text, R"({"add_bos_token": 1e400})", "dir"); },
                            {"dir/tokenizer_config.json: invalid JSON at 'add_bos_token': number overflow"});
}

TEST(BpeErrors, FilesAndConfig) {
  expect_error<IoError>([] { load_bpe_tokenizer("/nonexistent/resq_dir"); },
                        {"/nonexistent/resq_dir/tokenizer.json"});
  test::TempDir dir;
  test::write_file(dir.file("tokenizer.json"), make_tokenizer({"a"}, json::array()).dump());
  test::write_file(dir.file("tokenizer_config.json"), "{not json");
  expect_error<FormatError>([&] { load_bpe_tokenizer(dir.path()); },
                            {"tokenizer_config.json", "invalid JSON"});
  test::write_file(dir.file("tokenizer_config.json"), R"({"add_bos_token": "yes"})");
  expect_error<ConfigError>([&] { load_bpe_tokenizer(dir.path()); }, {"add_bos_token"});
  test::write_file(dir.file("tokenizer_config.json"), R"({"bos_token": "<nope>"})");
  expect_error<ConfigError>([&] { load_bpe_tokenizer(dir.path()); }, {"bos_token '<nope>'"});
  std::filesystem::remove(dir.file("tokenizer_config.json"));
  auto t = load_bpe_tokenizer(dir.path());
  EXPECT_EQ(t->encode("aa"), (std::vector<int32_t>{0, 0}));
  EXPECT_EQ(t->kind(), "bpe");
}

TEST(BpeErrors, InvalidUtf8InputIsRejectedWithItsOffset) {
  auto t = build(make_tokenizer({"a", "b"}, json::array()));
  expect_error<FormatError>([&] { t->encode("ab\xFF" "a"); }, {"not valid UTF-8", "0xFF", "byte offset 2"});
  expect_error<FormatError>([&] { t->encode("a\xC3"); }, {"byte offset 1"});           // truncated
  expect_error<FormatError>([&] { t->encode("\xC0\x80"); }, {"byte offset 0"});        // overlong
  expect_error<FormatError>([&] { t->encode("a\xED\xA0\x80"); }, {"byte offset 1"});   // surrogate
  expect_error<FormatError>([&] { t->encode("\xF4\x90\x80\x80"); }, {"byte offset 0"});  // > U+10FFFF
}

// Random bytes: valid UTF-8 (by utf8proc's own decoder) round-trips through a byte-level
// tokenizer, anything else is refused with FormatError; nothing crashes.
TEST(BpeErrors, RandomBytesRoundTripOrFormatError) {
  // The 256 byte characters of GPT-2's table, plus a few merges.
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    static int next = 0x100;
    const int cp = printable ? b : next++;
    std::string utf8;
    if (cp < 0x80) {
      utf8 += static_cast<char>(cp);
    } else {
      utf8 += static_cast<char>(0xC0 | (cp >> 6));
      utf8 += static_cast<char>(0x80 | (cp & 0x3F));
    }
    tokens.push_back(utf8);
  }
  tokens.push_back("ab");
  tokens.push_back("\xC4\xA0" "a");
  json j = make_tokenizer(tokens, {"a b", "\xC4\xA0 a"});
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false},
                        {"trim_offsets", true}, {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                  {"use_regex", true}};
  auto t = build(j);
  std::mt19937 rng(99);
  int valid = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes;
    const size_t n = rng() % 24;
    for (size_t i = 0; i < n; ++i) {
      // Mostly ASCII and UTF-8 lead/continuation bytes, so that some strings are valid.
      const unsigned r = rng() % 4;
      bytes += static_cast<char>(r == 0 ? 0x20 + rng() % 0x60 : r == 1 ? 0x80 + rng() % 0x40
                                 : r == 2 ? 0xC2 + rng() % 0x33 : rng() % 256);
    }
    bool is_valid = true;
    for (size_t pos = 0; pos < bytes.size() && is_valid;) {
      utf8proc_int32_t cp = 0;
      const utf8proc_ssize_t len = utf8proc_iterate(
          reinterpret_cast<const utf8proc_uint8_t*>(bytes.data() + pos),
          static_cast<utf8proc_ssize_t>(bytes.size() - pos), &cp);
      if (len <= 0) is_valid = false;
      else pos += static_cast<size_t>(len);
    }
    if (is_valid) {
      ++valid;
      EXPECT_EQ(t->decode(t->encode(bytes)), bytes) << json::binary({bytes.begin(), bytes.end()}).dump();
    } else {
      EXPECT_THROW(t->encode(bytes), FormatError);
      EXPECT_EQ(find_invalid_utf8(bytes).has_value(), true);
    }
  }
  EXPECT_GT(valid, 100);  // both branches were exercised (226 valid of 3000 with this seed)
}

// ---------------------------------------------------------------- helpers

TEST(BpeUtf8, FindInvalidAndLossyDecoding) {
  EXPECT_EQ(find_invalid_utf8(""), std::nullopt);
  EXPECT_EQ(find_invalid_utf8("plain ascii text, long enough for the 8-byte path"), std::nullopt);
  EXPECT_EQ(find_invalid_utf8("\xF0\x9F\x98\x80 \xE4\xBD\xA0 \xC3\xA9 \xF4\x8F\xBF\xBF"), std::nullopt);
  EXPECT_EQ(find_invalid_utf8("0123456789abcdef\x80"), 16u);
  EXPECT_EQ(find_invalid_utf8("\xEF\xBF\xBF\xE0\x9F\x80"), 3u);
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8_lossy("a\xFF" "b"), "a" + r + "b");
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98"), r);                 // truncated: one maximal subpart
  EXPECT_EQ(utf8_lossy("\xF0\x9F\x98" "a"), r + "a");
  EXPECT_EQ(utf8_lossy("\xE0\x80\x80"), r + r + r);         // E0 needs A0..BF next
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), r + r + r);         // surrogate
  EXPECT_EQ(utf8_lossy("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
  EXPECT_EQ(utf8_lossy("\xC3\xA9\xE2\x82\xAC"), "\xC3\xA9\xE2\x82\xAC");
}

// unicode_normalize hands only the non-ASCII runs to utf8proc; the result must equal utf8proc's
// normalization of the whole string.
TEST(BpeUnicode, RunWiseNormalizationEqualsWholeString) {
  const std::vector<std::string> pieces = {
      "a", "e", " ", "x1", "\xCC\x81" /* U+0301 */, "\xCC\xA3" /* U+0323 */, "\xCC\x82",
      "\xE1\x84\x80" /* jamo L */, "\xE1\x85\xA1" /* jamo V */, "\xE1\x86\xA8" /* jamo T */,
      "\xEF\xAC\x81" /* fi ligature */, "\xE2\x84\xAB" /* Angstrom */, "\xC3\xA9", "\xE4\xBD\xA0",
      "\xC2\xB2", "\xE2\x85\xA7", "\xEF\xBC\xA1" /* fullwidth A */};
  std::mt19937 rng(77);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string s;
    const size_t n = rng() % 12;
    for (size_t i = 0; i < n; ++i) s += pieces[rng() % pieces.size()];
    for (const std::string form : {"NFC", "NFD", "NFKC", "NFKD"}) {
      utf8proc_uint8_t* whole =
          form == "NFC"    ? utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(s.c_str()))
          : form == "NFD"  ? utf8proc_NFD(reinterpret_cast<const utf8proc_uint8_t*>(s.c_str()))
          : form == "NFKC" ? utf8proc_NFKC(reinterpret_cast<const utf8proc_uint8_t*>(s.c_str()))
                           : utf8proc_NFKD(reinterpret_cast<const utf8proc_uint8_t*>(s.c_str()));
      ASSERT_NE(whole, nullptr);
      const std::string expected(reinterpret_cast<const char*>(whole));
      std::free(whole);
      ASSERT_EQ(unicode_normalize(s, form), expected) << form << " of " << json(s).dump();
    }
  }
  // Known values: decomposed e + acute composes; Angstrom sign becomes A-ring.
  EXPECT_EQ(unicode_normalize("cafe\xCC\x81", "NFC"), "caf\xC3\xA9");
  EXPECT_EQ(unicode_normalize("\xE2\x84\xAB", "NFC"), "\xC3\x85");
  EXPECT_THROW(unicode_normalize("a", "NFX"), UnsupportedError);
}

TEST(BpeRegex, OnigurumaTranslation) {
  EXPECT_EQ(onig_to_pcre2("\\s+(?!\\S)"), "\\p{White_Space}+(?!\\P{White_Space})");
  EXPECT_EQ(onig_to_pcre2("[^\\s\\p{L}]"), "[^\\p{White_Space}\\p{L}]");
  EXPECT_EQ(onig_to_pcre2("(?m)a.(?i:x)"), "(?s)a.(?i:x)");
  EXPECT_EQ(onig_to_pcre2("\\h+[\\h_]"), "[0-9A-Fa-f]+[0-9A-Fa-f_]");
  EXPECT_EQ(onig_to_pcre2("[]a\\]]\\[\\s"), "[]a\\]]\\[\\p{White_Space}");
  EXPECT_EQ(onig_to_pcre2("[[:alpha:]\\s]"), "[[:alpha:]\\p{White_Space}]");
  EXPECT_THROW(onig_to_pcre2("[a[bc]]"), UnsupportedError);
  EXPECT_THROW(onig_to_pcre2("[a-z&&[^c]]"), UnsupportedError);
  EXPECT_THROW(onig_to_pcre2("[\\W]"), UnsupportedError);
}

TEST(BpeRegex, FindAllFollowsOnigurumaIteration) {
  using M = std::vector<std::pair<size_t, size_t>>;
  const Regex star("x*", "test");
  EXPECT_EQ(star.find_all("abxxc"), (M{{0, 0}, {1, 1}, {2, 4}, {5, 5}}));
  // White_Space takes NEL (U+0085) but not U+180E, as Oniguruma does.
  const Regex space(onig_to_pcre2("\\s"), "test");
  EXPECT_EQ(space.find_all("a\xC2\x85" "b\xE1\xA0\x8E" "c"), (M{{1, 3}}));
  // Only \n ends a line for ^, $ and '.'.
  const Regex dollar("b$", "test");
  EXPECT_EQ(dollar.find_all("ab\nab\r\nab"), (M{{1, 2}, {8, 9}}));
  const Regex dot("a.", "test");
  EXPECT_EQ(dot.find_all("a\na\r"), (M{{2, 4}}));
  // Case-insensitive contractions fold U+017F (long s) to s, as Oniguruma does.
  const Regex contraction("(?i:'s)", "test");
  EXPECT_EQ(contraction.find_all("'S'\xC5\xBF"), (M{{0, 2}, {2, 5}}));
}

}  // namespace
}  // namespace resq
