// Byte-level BPE against the reference encodings of HuggingFace tokenizers 0.23.2 in
// shared/fixtures/tokenizers/<name>/ (47 tricky strings + the first 20,000 characters of WikiText-2).
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/test_util.h"
#include "resq/text/bpe_tokenizer.h"
#include "resq/text/tokenizer.h"

namespace resq {
namespace {

using nlohmann::json;

// Loading a 150k-token vocabulary takes a few hundred ms: load each tokenizer once.
const Tokenizer& shared_tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> loaded;
  auto it = loaded.find(name);
  if (it == loaded.end()) {
    it = loaded.emplace(name, load_bpe_tokenizer(test::shared_path("tokenizers/" + name))).first;
  }
  return *it->second;
}

std::string printable(const std::string& s) { return json(s).dump(); }

class BpeFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(BpeFixture, CasesGiveReferenceIdsAndRoundTrip) {
  const Tokenizer& tok = shared_tokenizer(GetParam());
  const json cases =
      json::parse(test::read_file(test::shared_path("fixtures/tokenizers/" + GetParam() + "/cases.json")));
  ASSERT_EQ(cases.size(), 47u);
  for (const json& c : cases) {
    const std::string text = c["text"].get<std::string>();
    const std::vector<int32_t> expected = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(text), expected) << "text " << printable(text);
    const std::string want = c["roundtrip"].get<bool>() ? text : c["decoded"].get<std::string>();
    EXPECT_EQ(tok.decode(expected), want) << "decode of the ids of " << printable(text);
  }
}

TEST_P(BpeFixture, WikitextHeadGivesReferenceIds) {
  const Tokenizer& tok = shared_tokenizer(GetParam());
  const json head = json::parse(
      test::read_file(test::shared_path("fixtures/tokenizers/" + GetParam() + "/wikitext_head.json")));
  ASSERT_EQ(head.size(), 1u);
  const std::string text = head[0]["text"].get<std::string>();
  ASSERT_EQ(text.size(), head[0]["text_utf8_bytes"].get<size_t>());
  const std::vector<int32_t> expected = head[0]["ids"].get<std::vector<int32_t>>();
  const std::vector<int32_t> got = tok.encode(text);
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i], expected[i]) << "first difference at token " << i;
  }
  EXPECT_EQ(tok.decode(expected), text);
}

INSTANTIATE_TEST_SUITE_P(SharedTokenizers, BpeFixture,
                         ::testing::Values("gpt2", "qwen2", "qwen2.5", "llama3"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '.') c = '_';
                           }
                           return name;
                         });

// encode() is const and shares its word cache between threads.
TEST(BpeSharedTokenizers, ConcurrentEncodingGivesReferenceIds) {
  const Tokenizer& tok = shared_tokenizer("llama3");
  const json head = json::parse(
      test::read_file(test::shared_path("fixtures/tokenizers/llama3/wikitext_head.json")));
  const std::string text = head[0]["text"].get<std::string>();
  const std::vector<int32_t> expected = head[0]["ids"].get<std::vector<int32_t>>();
  std::vector<std::vector<int32_t>> results(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < results.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < 3; ++r) results[t] = tok.encode(text);
    });
  }
  for (std::thread& th : threads) th.join();
  for (const auto& r : results) EXPECT_EQ(r, expected);
}

// Vocabulary size and BOS handling as the model configurations define them.
TEST(BpeSharedTokenizers, VocabSizeAndBos) {
  struct Expect {
    const char* name;
    int32_t vocab_size;
    std::optional<int32_t> bos;
    bool adds_bos;
  };
  // Model vocab + added tokens: GPT-2 50257 (<|endoftext|> inside), Qwen2 151643 + 3,
  // Qwen2.5 151643 + 22, Llama-3 128000 + 256 specials.
  const Expect expects[] = {{"gpt2", 50257, 50256, false},
                            {"qwen2", 151646, std::nullopt, false},
                            {"qwen2.5", 151665, std::nullopt, false},
                            {"llama3", 128256, 128000, true}};
  for (const Expect& e : expects) {
    const Tokenizer& tok = shared_tokenizer(e.name);
    EXPECT_EQ(tok.kind(), "bpe") << e.name;
    EXPECT_EQ(tok.vocab_size(), e.vocab_size) << e.name;
    EXPECT_EQ(tok.bos_id(), e.bos) << e.name;
    EXPECT_EQ(tok.adds_bos(), e.adds_bos) << e.name;
  }
}

}  // namespace
}  // namespace resq
