// SentencePiece tokenizer and dataset helpers against the shared fixtures (ids from the official
// SentencePiece library) and the shared WikiText-2 files.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/text/dataset.h"
#include "resq/text/sentencepiece_shim.h"
#include "resq/text/tokenizer.h"

namespace resq {
namespace {

using test::read_file;
using test::shared_path;

nlohmann::json load_fixture(const std::string& name) {
  return nlohmann::json::parse(read_file(shared_path("fixtures/" + name)));
}

TEST(WikitextJoin, EqualsHfDatasetTextByteForByte) {
  const std::string raw = read_file(shared_path("data/wikitext-2-raw/wiki.test.raw"));
  const std::string expected = read_file(shared_path("data/wikitext-2-raw/test.hf_join.txt"));
  const std::string joined = wikitext_join(raw);
  ASSERT_EQ(joined.size(), expected.size());
  EXPECT_TRUE(joined == expected);
}

TEST(WikitextJoin, SmallCases) {
  EXPECT_EQ(wikitext_join(""), "");
  EXPECT_EQ(wikitext_join(" \n = A = \n \n"), std::string("\n\n = A = \n\n\n"));
  EXPECT_EQ(wikitext_join("x"), "x");
  EXPECT_EQ(wikitext_join("a\n\t \nb\n"), std::string("a\n\n\n\n\nb\n"));
}

TEST(SentencePiece, Stories260KWikitextIdsMatchFixture) {
  const auto fixture = load_fixture("stories260K.wikitext2-test.json");
  auto tok = load_tokenizer(shared_path("models/stories260K"));
  EXPECT_EQ(tok->kind(), "sentencepiece");
  EXPECT_EQ(tok->vocab_size(), 512);
  ASSERT_TRUE(tok->bos_id().has_value());
  EXPECT_EQ(*tok->bos_id(), 1);
  EXPECT_TRUE(tok->adds_bos());
  const std::string text = read_file(shared_path("data/wikitext-2-raw/test.hf_join.txt"));
  const auto ids = tokenize_for_eval(*tok, text, true);
  EXPECT_EQ(static_cast<int64_t>(ids.size()), fixture["num_tokens"].get<int64_t>());
  const auto first = fixture["first_64_ids"].get<std::vector<int32_t>>();
  ASSERT_GE(ids.size(), first.size());
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + first.size()), first);
}

TEST(SentencePiece, Stories260KTinyStoriesIdsMatchFixture) {
  const auto fixture = load_fixture("stories260K.tinystories-valid.json");
  auto tok = load_tokenizer(shared_path("models/stories260K"));
  const std::string text = read_file(shared_path("data/tinystories/valid_head.txt"));
  const auto ids = tokenize_for_eval(*tok, text, true);
  EXPECT_EQ(static_cast<int64_t>(ids.size()), fixture["num_tokens"].get<int64_t>());
  const auto first = fixture["first_64_ids"].get<std::vector<int32_t>>();
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + first.size()), first);
}

TEST(SentencePiece, DecodeRoundTripAndErrors) {
  auto tok = load_tokenizer(shared_path("models/stories260K"));
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  EXPECT_EQ(tok->decode(tok->encode(text)), text);
  EXPECT_THROW(tok->decode({5, 100000}), UsageError);
  EXPECT_THROW(tok->decode({-1}), UsageError);
}

// Issue 19, defects 1 and 2 for the SentencePiece directory: its tokenizer_config.json and
// config.json go through the shared JSON entry (number overflow and deep nesting name the file).
TEST(SentencePiece, MalformedConfigFilesNameTheFile) {
  test::TempDir dir;
  std::filesystem::copy_file(shared_path("models/stories260K/tokenizer.model"), dir.file("tokenizer.model"));
  EXPECT_NO_THROW(load_tokenizer(dir.path()));
  test::write_file(dir.file("tokenizer_config.json"), R"({"add_bos_token": true, "x": 1e400})");
  const std::string overflow = test::message_of<ConfigError>([&] { load_tokenizer(dir.path()); });
  EXPECT_NE(overflow.find("tokenizer_config.json: invalid JSON at 'x': number overflow parsing '1e400'"),
            std::string::npos) << overflow;
  std::filesystem::remove(dir.file("tokenizer_config.json"));
  test::write_file(dir.file("config.json"), "{\"bos_token_id\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  const std::string deep = test::message_of<ConfigError>([&] { load_tokenizer(dir.path()); });
  EXPECT_NE(deep.find("config.json: invalid JSON at 'bos_token_id[0][0]"), std::string::npos) << deep;
}

// A model without BOS takes config.json's bos_token_id: one outside the vocabulary would start
// every encoded text with an id the embedding does not have.
TEST(SentencePiece, ConfigBosIdMustBeInTheVocabulary) {
  test::TempDir dir;
  test::write_file(dir.file("train.txt"), std::string(50, 'a') + " abc cab bca\n" + "the cat sat\n");
  spm::train("--input=" + dir.file("train.txt") + " --model_prefix=" + dir.file("tokenizer") +
                 " --vocab_size=12 --model_type=char --bos_id=-1 --minloglevel=2", 1);
  test::write_file(dir.file("tokenizer_config.json"), R"({"add_bos_token": false})");
  test::write_file(dir.file("config.json"), R"({"bos_token_id": 100000})");
  const std::string message = test::message_of<ConfigError>([&] { load_tokenizer(dir.path()); });
  EXPECT_NE(message.find("config.json: bos_token_id 100000 is outside tokenizer.model's vocabulary [0, "),
            std::string::npos) << message;
  test::write_file(dir.file("config.json"), R"({"bos_token_id": 3})");
  EXPECT_EQ(load_tokenizer(dir.path())->bos_id(), 3);
}

// Found by fuzz_sentencepiece: a piece starting with a NUL byte makes libsentencepiece's Darts
// trie throw a C++ exception ("zero-length key") through the shim's C boundary, which `resq`
// printed as "internal error". The shim now turns it into the load error (IoError naming the file).
TEST(SentencePiece, PieceStartingWithNulIsALoadError) {
  // A ModelProto by hand: repeated SentencePiece pieces = 1 {piece = 1, score = 2, type = 3}.
  const auto piece = [](const std::string& text, int type) {
    std::string p = "\x0a" + std::string(1, static_cast<char>(text.size())) + text + std::string("\x15\0\0\0\0", 5);
    if (type) p += "\x18" + std::string(1, static_cast<char>(type));
    return "\x0a" + std::string(1, static_cast<char>(p.size())) + p;
  };
  test::TempDir dir;
  const std::string good = piece("<unk>", 2) + piece("<s>", 3) + piece("and", 0);
  test::write_file(dir.file("tokenizer.model"), good);
  EXPECT_EQ(load_tokenizer(dir.path())->vocab_size(), 3);  // the hand-made model itself loads
  test::write_file(dir.file("tokenizer.model"), good + piece(std::string("\0\0\xe7w", 4), 0));
  const std::string message = test::message_of<IoError>([&] { load_tokenizer(dir.path()); });
  EXPECT_NE(message.find(dir.file("tokenizer.model")), std::string::npos) << message;
  EXPECT_NE(message.find("zero-length key"), std::string::npos) << message;
}

TEST(Tokenizer, MissingFilesGiveClearErrors) {
  test::TempDir dir;
  try {
    load_tokenizer(dir.path());
    FAIL() << "expected IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path()), std::string::npos);
  }
  EXPECT_THROW(load_tokenizer(dir.file("does-not-exist")), IoError);
  test::write_file(dir.file("tokenizer.model"), "not a sentencepiece model");
  EXPECT_THROW(load_tokenizer(dir.path()), IoError);
}

TEST(Dataset, WindowsAndCalibrationSampling) {
  EXPECT_EQ(num_windows(1024, 512), 2);
  EXPECT_EQ(num_windows(1023, 512), 1);
  EXPECT_THROW(num_windows(10, 1), UsageError);
  const auto a = sample_calibration_offsets(10000, 512, 64, 7);
  const auto b = sample_calibration_offsets(10000, 512, 64, 7);
  const auto c = sample_calibration_offsets(10000, 512, 64, 8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (int64_t o : a) {
    EXPECT_GE(o, 0);
    EXPECT_LE(o, 10000 - 512);
  }
  // Exactly-one-window text: every offset must be 0.
  for (int64_t o : sample_calibration_offsets(512, 512, 5, 1)) EXPECT_EQ(o, 0);
  EXPECT_THROW(sample_calibration_offsets(100, 512, 4, 1), UsageError);
  EXPECT_THROW(sample_calibration_offsets(1000, 512, 0, 1), UsageError);
}

TEST(Dataset, Fnv1aKnownValues) {
  // Published FNV-1a 64 test vectors.
  EXPECT_EQ(fnv1a_hex(""), "cbf29ce484222325");
  EXPECT_EQ(fnv1a_hex("a"), "af63dc4c8601ec8c");
}

}  // namespace
}  // namespace resq
