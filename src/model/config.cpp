// Parsing and validation of HuggingFace config.json into resq::ModelConfig.
#include "resq/model/config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "resq/common/error.h"

namespace resq {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& source, const std::string& what) {
  throw ConfigError(source + ": " + what);
}

int64_t get_int(const json& j, const std::string& key, const std::string& source,
                std::optional<int64_t> fallback = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    fail(source, "missing required integer field '" + key + "'");
  }
  if (!it->is_number_integer()) {
    fail(source, "field '" + key + "' must be an integer, got " + it->dump());
  }
  return it->get<int64_t>();
}

double get_double(const json& j, const std::string& key, const std::string& source, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) fail(source, "field '" + key + "' must be a number, got " + it->dump());
  return it->get<double>();
}

bool get_bool(const json& j, const std::string& key, const std::string& source, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail(source, "field '" + key + "' must be true/false, got " + it->dump());
  return it->get<bool>();
}

std::optional<int64_t> get_optional_token_id(const json& j, const std::string& key,
                                             const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  // eos_token_id may be a list in Llama-3.x configs: the first one is the canonical EOS.
  if (it->is_array()) {
    if (it->empty()) return std::nullopt;
    if (!(*it)[0].is_number_integer()) fail(source, "field '" + key + "' must hold integers");
    return (*it)[0].get<int64_t>();
  }
  if (!it->is_number_integer()) fail(source, "field '" + key + "' must be an integer, got " + it->dump());
  return it->get<int64_t>();
}

void require_positive(int64_t value, const std::string& key, const std::string& source) {
  if (value <= 0) fail(source, "field '" + key + "' must be > 0, got " + std::to_string(value));
}

RopeScaling parse_rope_scaling(const json& j, const std::string& source) {
  RopeScaling scaling;
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) return scaling;
  if (!it->is_object()) fail(source, "field 'rope_scaling' must be an object or null");
  std::string type;
  if (it->contains("rope_type") && (*it)["rope_type"].is_string()) {
    type = (*it)["rope_type"].get<std::string>();
  } else if (it->contains("type") && (*it)["type"].is_string()) {
    type = (*it)["type"].get<std::string>();
  } else {
    fail(source, "rope_scaling has no string 'rope_type' (or 'type')");
  }
  if (type == "default") return scaling;
  if (type != "llama3") {
    throw UnsupportedError(source + ": rope_scaling type '" + type +
                           "' is not supported (supported: none/default, llama3)");
  }
  scaling.type = RopeScaling::Type::kLlama3;
  scaling.factor = get_double(*it, "factor", source, 0.0);
  scaling.low_freq_factor = get_double(*it, "low_freq_factor", source, 1.0);
  scaling.high_freq_factor = get_double(*it, "high_freq_factor", source, 4.0);
  scaling.original_max_position_embeddings =
      get_int(*it, "original_max_position_embeddings", source, int64_t{8192});
  if (!(scaling.factor > 0.0)) fail(source, "rope_scaling.factor must be > 0");
  if (!(scaling.high_freq_factor > scaling.low_freq_factor)) {
    fail(source, "rope_scaling.high_freq_factor must be > low_freq_factor");
  }
  require_positive(scaling.original_max_position_embeddings,
                   "rope_scaling.original_max_position_embeddings", source);
  return scaling;
}

}  // namespace

int64_t ModelConfig::parameter_count() const {
  const int64_t d = hidden_size;
  int64_t attn = d * q_size() + 2 * d * kv_size() + q_size() * d;
  if (qkv_bias) attn += q_size() + 2 * kv_size();
  if (o_bias) attn += d;
  int64_t mlp = 3 * d * intermediate_size;
  if (mlp_bias) mlp += 2 * intermediate_size + d;
  const int64_t per_layer = attn + mlp + 2 * d;
  int64_t total = vocab_size * d + num_layers * per_layer + d;
  if (!tie_word_embeddings) total += vocab_size * d;
  return total;
}

ModelConfig parse_model_config(const json& j, const std::string& source) {
  if (!j.is_object()) fail(source, "expected a JSON object");
  ModelConfig c;
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) fail(source, "missing string field 'model_type'");
  c.model_type = mt->get<std::string>();
  if (c.model_type != "llama" && c.model_type != "qwen2" && c.model_type != "mistral") {
    throw UnsupportedError(source + ": model_type '" + c.model_type +
                           "' is not supported (supported: llama, qwen2, mistral)");
  }
  c.hidden_size = get_int(j, "hidden_size", source);
  c.intermediate_size = get_int(j, "intermediate_size", source);
  c.num_layers = get_int(j, "num_hidden_layers", source);
  c.num_heads = get_int(j, "num_attention_heads", source);
  c.num_kv_heads = get_int(j, "num_key_value_heads", source, c.num_heads);
  c.vocab_size = get_int(j, "vocab_size", source);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", source, int64_t{4096});
  for (auto [value, key] : {std::pair{c.hidden_size, "hidden_size"},
                            {c.intermediate_size, "intermediate_size"},
                            {c.num_layers, "num_hidden_layers"},
                            {c.num_heads, "num_attention_heads"},
                            {c.num_kv_heads, "num_key_value_heads"},
                            {c.vocab_size, "vocab_size"},
                            {c.max_position_embeddings, "max_position_embeddings"}}) {
    require_positive(value, key, source);
  }
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    c.head_dim = get_int(j, "head_dim", source);
    require_positive(c.head_dim, "head_dim", source);
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      fail(source, "num_attention_heads (" + std::to_string(c.num_heads) +
                       ") does not divide hidden_size (" + std::to_string(c.hidden_size) +
                       ") and no explicit head_dim is given");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) {
    fail(source, "head_dim must be even for RoPE, got " + std::to_string(c.head_dim));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    fail(source, "num_key_value_heads (" + std::to_string(c.num_kv_heads) +
                     ") must divide num_attention_heads (" + std::to_string(c.num_heads) + ")");
  }
  c.rms_norm_eps = get_double(j, "rms_norm_eps", source, 1e-6);
  if (!(c.rms_norm_eps > 0.0)) fail(source, "rms_norm_eps must be > 0");
  c.rope_theta = get_double(j, "rope_theta", source, 10000.0);
  if (!(c.rope_theta > 0.0)) fail(source, "rope_theta must be > 0");
  c.rope_scaling = parse_rope_scaling(j, source);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", source, false);
  if (j.contains("hidden_act") && j["hidden_act"].is_string()) {
    const auto act = j["hidden_act"].get<std::string>();
    if (act != "silu") {
      throw UnsupportedError(source + ": hidden_act '" + act + "' is not supported (expected silu)");
    }
  }
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias.
    if (get_bool(j, "use_sliding_window", source, false)) {
      c.sliding_window = get_int(j, "sliding_window", source);
    }
  } else if (c.model_type == "llama") {
    const bool attention_bias = get_bool(j, "attention_bias", source, false);
    c.qkv_bias = attention_bias;
    c.o_bias = attention_bias;
    c.mlp_bias = get_bool(j, "mlp_bias", source, false);
  } else {  // mistral
    if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
      c.sliding_window = get_int(j, "sliding_window", source);
    }
  }
  if (c.sliding_window) require_positive(*c.sliding_window, "sliding_window", source);
  c.bos_token_id = get_optional_token_id(j, "bos_token_id", source);
  c.eos_token_id = get_optional_token_id(j, "eos_token_id", source);
  if (c.bos_token_id && (*c.bos_token_id < 0 || *c.bos_token_id >= c.vocab_size)) {
    fail(source, "bos_token_id " + std::to_string(*c.bos_token_id) + " is outside the vocabulary [0, " +
                     std::to_string(c.vocab_size) + ")");
  }
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) {
    c.torch_dtype = j["torch_dtype"].get<std::string>();
  }
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open model config (expected a HuggingFace config.json)");
  std::stringstream buffer;
  buffer << in.rdbuf();
  json j;
  try {
    j = json::parse(buffer.str());
  } catch (const json::parse_error& e) {
    throw ConfigError(path + ": invalid JSON: " + e.what());
  }
  return parse_model_config(j, path);
}

json model_config_to_json(const ModelConfig& c) {
  json j;
  j["architectures"] = json::array({c.model_type == "qwen2"     ? "Qwen2ForCausalLM"
                                    : c.model_type == "mistral" ? "MistralForCausalLM"
                                                                : "LlamaForCausalLM"});
  j["model_type"] = c.model_type;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type == RopeScaling::Type::kLlama3) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings",
                          c.rope_scaling.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.model_type == "llama") {
    j["attention_bias"] = c.qkv_bias;
    j["mlp_bias"] = c.mlp_bias;
  }
  if (c.sliding_window) {
    j["sliding_window"] = *c.sliding_window;
    if (c.model_type == "qwen2") j["use_sliding_window"] = true;
  } else if (c.model_type == "qwen2") {
    j["use_sliding_window"] = false;
  }
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_id) j["eos_token_id"] = *c.eos_token_id;
  j["torch_dtype"] = c.torch_dtype;
  return j;
}

}  // namespace resq
