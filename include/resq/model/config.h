// Typed, validated model configuration parsed from a HuggingFace config.json (llama, qwen2, mistral).
// Torch-free so that tools and tests can read configs without libtorch.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace resq {

// RoPE frequency scaling. kNone = plain RoPE; kLlama3 = Llama-3.1's piecewise wavelength scaling.
struct RopeScaling {
  enum class Type { kNone, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// Upper bounds parse_model_config puts on config.json's sizes: far above any real model
// (Llama-3.1-405B: hidden 16384, 126 layers, 128 heads; vocabularies up to ~256k) and low enough
// that every size derived from them (q_size, a layer's weight count, parameter_count) fits in
// int64 with room to spare, so no product of untrusted numbers can overflow.
constexpr int64_t kMaxModelWidth = int64_t{1} << 20;   // hidden, intermediate, head_dim, q/kv sizes
constexpr int64_t kMaxModelLayers = int64_t{1} << 12;
constexpr int64_t kMaxModelHeads = int64_t{1} << 14;   // attention and KV heads
constexpr int64_t kMaxModelVocab = int64_t{1} << 24;   // the BPE reader's dense id table too
constexpr int64_t kMaxModelPositions = int64_t{1} << 24;  // max_position_embeddings, windows

struct ModelConfig {
  std::string model_type;  // "llama" | "qwen2" | "mistral"
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // explicit in config.json or hidden_size / num_heads
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2 always; Llama when attention_bias
  bool o_bias = false;    // Llama attention_bias also biases o_proj
  bool mlp_bias = false;  // Llama mlp_bias
  std::optional<int64_t> sliding_window;  // Mistral / Qwen2 with use_sliding_window
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;
  std::string torch_dtype = "float32";  // informational: dtype the checkpoint was saved in

  int64_t q_size() const { return num_heads * head_dim; }
  int64_t kv_size() const { return num_kv_heads * head_dim; }
  int64_t num_kv_groups() const { return num_heads / num_kv_heads; }
  // Parameter count implied by the config (embeddings, layers, norms, lm_head if untied). Throws
  // ConfigError if it overflows int64 (only a config built by hand, beyond the bounds above, can).
  int64_t parameter_count() const;
};

// Parses and validates (types, the bounds above, divisibility); `source` names the file in error
// messages. Throws ConfigError.
ModelConfig parse_model_config(const nlohmann::json& json, const std::string& source);
ModelConfig load_model_config(const std::string& config_json_path);

// Serializes back to a HuggingFace-style config.json object (used by make-model and writers).
nlohmann::json model_config_to_json(const ModelConfig& config);

}  // namespace resq
