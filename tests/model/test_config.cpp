// ModelConfig parsing: the three families, derived fields and every validation error.
#include <gtest/gtest.h>

#include <limits>
#include <nlohmann/json.hpp>

#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/model/config.h"

namespace resq {
namespace {

using nlohmann::json;

json llama_json() {
  return json::parse(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
    "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": null,
    "hidden_act": "silu", "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2})");
}

template <typename E>
std::string error_of(const json& j) {
  return test::message_of<E>([&] { parse_model_config(j, "cfg.json"); });
}

TEST(ModelConfig, Stories260K) {
  const ModelConfig c = load_model_config(test::shared_path("models/stories260K/config.json"));
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.bos_token_id.value(), 1);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  // 260,032 parameters per the shared README (tied embeddings).
  EXPECT_EQ(c.parameter_count(), 260032);
}

TEST(ModelConfig, DerivedHeadDimAndDefaults) {
  json j = llama_json();
  ModelConfig c = parse_model_config(j, "x");
  EXPECT_EQ(c.head_dim, 8);
  j.erase("num_key_value_heads");
  c = parse_model_config(j, "x");
  EXPECT_EQ(c.num_kv_heads, 8);  // MHA when absent
  j["head_dim"] = 16;            // explicit head_dim wins (e.g. Qwen3/Gemma-style configs)
  c = parse_model_config(j, "x");
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.q_size(), 128);
}

TEST(ModelConfig, Qwen2HasQkvBiasAndListEos) {
  json j = llama_json();
  j["model_type"] = "qwen2";
  j["eos_token_id"] = json::array({151643, 151645});
  j["bos_token_id"] = nullptr;
  j["use_sliding_window"] = false;
  j["sliding_window"] = 4096;
  const ModelConfig c = parse_model_config(j, "x");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(c.eos_token_id.value(), 151643);
  EXPECT_FALSE(c.bos_token_id.has_value());
}

TEST(ModelConfig, LlamaAttentionBiasAndMistralWindow) {
  json j = llama_json();
  j["attention_bias"] = true;
  ModelConfig c = parse_model_config(j, "x");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_TRUE(c.o_bias);
  j = llama_json();
  j["model_type"] = "mistral";
  j["sliding_window"] = 256;
  c = parse_model_config(j, "x");
  EXPECT_EQ(c.sliding_window.value(), 256);
}

TEST(ModelConfig, Llama3RopeScaling) {
  json j = llama_json();
  j["rope_scaling"] = json::parse(R"({"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
      "original_max_position_embeddings": 8192, "rope_type": "llama3"})");
  const ModelConfig c = parse_model_config(j, "x");
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  // Round trip through model_config_to_json keeps everything.
  const ModelConfig back = parse_model_config(model_config_to_json(c), "y");
  EXPECT_EQ(back.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(back.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(back.hidden_size, c.hidden_size);
  EXPECT_EQ(back.tie_word_embeddings, c.tie_word_embeddings);
}

TEST(ModelConfig, Errors) {
  json j = llama_json();
  j["model_type"] = "gpt2";
  EXPECT_NE(error_of<UnsupportedError>(j).find("model_type 'gpt2'"), std::string::npos);

  j = llama_json();
  j["num_attention_heads"] = 7;  // 64 % 7 != 0
  EXPECT_NE(error_of<ConfigError>(j).find("does not divide hidden_size"), std::string::npos);

  j = llama_json();
  j["num_key_value_heads"] = 3;
  EXPECT_NE(error_of<ConfigError>(j).find("num_key_value_heads"), std::string::npos);

  j = llama_json();
  j.erase("hidden_size");
  EXPECT_NE(error_of<ConfigError>(j).find("'hidden_size'"), std::string::npos);

  j = llama_json();
  j["vocab_size"] = "512";
  EXPECT_NE(error_of<ConfigError>(j).find("must be an integer"), std::string::npos);

  j = llama_json();
  j["num_hidden_layers"] = 0;
  EXPECT_NE(error_of<ConfigError>(j).find("num_hidden_layers"), std::string::npos);

  j = llama_json();
  j["rope_scaling"] = json::parse(R"({"type": "yarn", "factor": 4.0})");
  EXPECT_NE(error_of<UnsupportedError>(j).find("yarn"), std::string::npos);

  j = llama_json();
  j["hidden_act"] = "gelu";
  EXPECT_NE(error_of<UnsupportedError>(j).find("gelu"), std::string::npos);

  j = llama_json();
  j["bos_token_id"] = 9999;
  EXPECT_NE(error_of<ConfigError>(j).find("bos_token_id"), std::string::npos);

  j = llama_json();
  j["head_dim"] = 7;
  EXPECT_NE(error_of<ConfigError>(j).find("even"), std::string::npos);

  EXPECT_NE(error_of<ConfigError>(json::array()).find("cfg.json"), std::string::npos);

  test::TempDir dir;
  test::write_file(dir.file("config.json"), "{ not json");
  EXPECT_THROW(load_model_config(dir.file("config.json")), ConfigError);
  EXPECT_THROW(load_model_config(dir.file("missing.json")), IoError);
}

TEST(ModelConfig, NullMeansNotSetAndMessagesNameTheKeyPath) {
  json j = llama_json();
  j["num_key_value_heads"] = nullptr;  // HF writes null for "not set"
  j["rms_norm_eps"] = nullptr;
  ModelConfig c = parse_model_config(j, "x");
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);

  j = llama_json();
  j["num_attention_heads"] = "x";
  EXPECT_EQ(error_of<ConfigError>(j), "cfg.json: 'num_attention_heads' must be an integer in [1, 16384], got \"x\"");
  j = llama_json();
  j["rope_scaling"] = json::parse(R"({"rope_type": "llama3", "low_freq_factor": 1.0})");
  EXPECT_EQ(error_of<ConfigError>(j), "cfg.json: 'rope_scaling.factor' missing (must be a number > 0)");
  j["rope_scaling"]["factor"] = 8.0;
  j["rope_scaling"]["high_freq_factor"] = 0.5;
  EXPECT_NE(error_of<ConfigError>(j).find("'rope_scaling.high_freq_factor' must be > low_freq_factor"),
            std::string::npos);
  j = llama_json();
  j["eos_token_id"] = json::array({"x"});
  EXPECT_NE(error_of<ConfigError>(j).find("'eos_token_id' must be an integer or a list of integers"),
            std::string::npos);
  j = llama_json();
  j["model_type"] = nullptr;
  EXPECT_EQ(error_of<ConfigError>(j), "cfg.json: 'model_type' missing (must be a string)");

  test::TempDir dir;
  const std::string missing = dir.file("missing.json");
  EXPECT_NE(test::message_of<IoError>([&] { load_model_config(missing); })
                .find(missing + ": cannot open model config"),
            std::string::npos);
}

// Issue 19, defect 3: unbounded dimensions made heads x head_dim and the parameter count overflow
// int64 (UBSan). Every dimension is bounded so that no derived size can overflow.
TEST(ModelConfig, DimensionsAreBoundedSoDerivedSizesFit) {
  json j = llama_json();
  j["hidden_size"] = int64_t{1} << 40;
  EXPECT_EQ(error_of<ConfigError>(j), "cfg.json: 'hidden_size' must be an integer in [1, 1048576], got 1099511627776");
  j = llama_json();
  j["num_attention_heads"] = 16384;
  j["num_key_value_heads"] = 16384;
  j["head_dim"] = 1048576;
  EXPECT_EQ(error_of<ConfigError>(j), "cfg.json: 'num_attention_heads' x head_dim = 17179869184 exceeds 1048576");
  for (const char* key : {"intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                          "max_position_embeddings", "head_dim"}) {
    j = llama_json();
    j[key] = std::numeric_limits<int64_t>::max();
    EXPECT_NE(error_of<ConfigError>(j).find(std::string("'") + key + "' must be an integer in [1, "), std::string::npos)
        << key;
  }
  // The largest config the bounds allow: its parameter count is exact (computed by hand here).
  j = llama_json();
  j["hidden_size"] = kMaxModelWidth;
  j["intermediate_size"] = kMaxModelWidth;
  j["num_hidden_layers"] = kMaxModelLayers;
  j["num_attention_heads"] = 16;
  j["num_key_value_heads"] = 16;
  j["vocab_size"] = kMaxModelVocab;
  j["tie_word_embeddings"] = false;
  const ModelConfig c = parse_model_config(j, "cfg.json");
  const int64_t d = int64_t{1} << 20, layers = int64_t{1} << 12, vocab = int64_t{1} << 24;
  EXPECT_EQ(c.parameter_count(), 2 * vocab * d + layers * (4 * d * d + 3 * d * d + 2 * d) + d);
  // A config built by hand beyond the bounds: the count says it overflows instead of wrapping.
  ModelConfig huge = c;
  huge.num_layers = int64_t{1} << 40;
  EXPECT_NE(test::message_of<ConfigError>([&] { huge.parameter_count(); }).find("overflows a 64-bit integer"),
            std::string::npos);
}

// Issue 19, defect 2: 1e400 in config.json gave "internal error: [json.exception.out_of_range.406]".
TEST(ModelConfig, NumberOverflowNamesTheFileAndKey) {
  test::TempDir dir;
  std::string text = llama_json().dump();
  text.replace(text.find("\"rope_theta\":10000.0"), std::string("\"rope_theta\":10000.0").size(), "\"rope_theta\":1e400");
  test::write_file(dir.file("config.json"), text);
  EXPECT_EQ(test::message_of<ConfigError>([&] { load_model_config(dir.file("config.json")); }),
            dir.file("config.json") + ": invalid JSON at 'rope_theta': number overflow parsing '1e400'");
}

}  // namespace
}  // namespace resq
