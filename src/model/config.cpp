// Parsing and validation of HuggingFace config.json into resq::ModelConfig.
#include "resq/model/config.h"

#include <nlohmann/json.hpp>

#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/json_fields.h"

namespace resq {
namespace {

using nlohmann::json;

// eos_token_id may be a list in Llama-3.x configs: the first one is the canonical EOS.
std::optional<int64_t> read_token_id(const JsonFields& in, const std::string& key) {
  const json* v = in.find(key);
  if (!v) return std::nullopt;
  if (v->is_array()) {
    if (v->empty()) return std::nullopt;
    if (!(*v)[0].is_number_integer()) {
      in.fail(key, "must be an integer or a list of integers, got " + json_excerpt(*v));
    }
    return (*v)[0].get<int64_t>();
  }
  return in.integer(key);
}

RopeScaling parse_rope_scaling(const JsonFields& config) {
  RopeScaling scaling;
  const std::optional<JsonFields> in = config.optional_object("rope_scaling");
  if (!in) return scaling;
  // Newer configs say "rope_type", older ones "type".
  std::string type;
  if (const json* t = in->find("rope_type"); t && t->is_string()) {
    type = t->get<std::string>();
  } else if (const json* t2 = in->find("type"); t2 && t2->is_string()) {
    type = t2->get<std::string>();
  } else {
    in->fail("has no string 'rope_type' (or 'type')");
  }
  if (type == "default") return scaling;
  if (type != "llama3") {
    throw UnsupportedError(in->source() + ": rope_scaling type '" + type +
                           "' is not supported (supported: none/default, llama3)");
  }
  scaling.type = RopeScaling::Type::kLlama3;
  scaling.factor = in->number("factor", NumberRange::greater_than(0));
  scaling.low_freq_factor = in->optional_number("low_freq_factor").value_or(1.0);
  scaling.high_freq_factor = in->optional_number("high_freq_factor").value_or(4.0);
  scaling.original_max_position_embeddings =
      in->optional_integer("original_max_position_embeddings", IntRange::positive()).value_or(8192);
  if (!(scaling.high_freq_factor > scaling.low_freq_factor)) {
    in->fail("high_freq_factor", "must be > low_freq_factor");
  }
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
  // HF configs carry many keys resq does not use, and null for "not set": no unknown-key check. A
  // packed checkpoint's config.json also has "quantization_config" (quant_method "resq", for HF
  // loaders to refuse): it is read from resq_config.json instead, and ignored here.
  const JsonFields in(j, source, {JsonErrorKind::kConfig, /*null_is_absent=*/true});
  ModelConfig c;
  c.model_type = in.string("model_type");
  if (c.model_type != "llama" && c.model_type != "qwen2" && c.model_type != "mistral") {
    throw UnsupportedError(source + ": model_type '" + c.model_type +
                           "' is not supported (supported: llama, qwen2, mistral)");
  }
  const IntRange positive = IntRange::positive();
  c.hidden_size = in.integer("hidden_size", positive);
  c.intermediate_size = in.integer("intermediate_size", positive);
  c.num_layers = in.integer("num_hidden_layers", positive);
  c.num_heads = in.integer("num_attention_heads", positive);
  c.num_kv_heads = in.optional_integer("num_key_value_heads", positive).value_or(c.num_heads);
  c.vocab_size = in.integer("vocab_size", positive);
  c.max_position_embeddings = in.optional_integer("max_position_embeddings", positive).value_or(4096);
  if (auto head_dim = in.optional_integer("head_dim", positive)) {
    c.head_dim = *head_dim;
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      in.fail("num_attention_heads", "(" + std::to_string(c.num_heads) + ") does not divide hidden_size (" +
                                         std::to_string(c.hidden_size) + ") and no explicit head_dim is given");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) {  // explicit or derived
    throw ConfigError(source + ": head_dim must be even for RoPE, got " + std::to_string(c.head_dim));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    in.fail("num_key_value_heads", "(" + std::to_string(c.num_kv_heads) + ") must divide num_attention_heads (" +
                                       std::to_string(c.num_heads) + ")");
  }
  const NumberRange above_zero = NumberRange::greater_than(0);
  c.rms_norm_eps = in.optional_number("rms_norm_eps", above_zero).value_or(1e-6);
  c.rope_theta = in.optional_number("rope_theta", above_zero).value_or(10000.0);
  c.rope_scaling = parse_rope_scaling(in);
  c.tie_word_embeddings = in.optional_boolean("tie_word_embeddings").value_or(false);
  // Only a string hidden_act is checked: other values were never refused.
  if (const json* act = in.find("hidden_act"); act && act->is_string() && *act != "silu") {
    throw UnsupportedError(source + ": hidden_act '" + act->get<std::string>() +
                           "' is not supported (expected silu)");
  }
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias.
    if (in.optional_boolean("use_sliding_window").value_or(false)) {
      c.sliding_window = in.integer("sliding_window", positive);
    }
  } else if (c.model_type == "llama") {
    const bool attention_bias = in.optional_boolean("attention_bias").value_or(false);
    c.qkv_bias = attention_bias;
    c.o_bias = attention_bias;
    c.mlp_bias = in.optional_boolean("mlp_bias").value_or(false);
  } else {  // mistral
    if (auto window = in.optional_integer("sliding_window", positive)) c.sliding_window = *window;
  }
  c.bos_token_id = read_token_id(in, "bos_token_id");
  c.eos_token_id = read_token_id(in, "eos_token_id");
  if (c.bos_token_id && (*c.bos_token_id < 0 || *c.bos_token_id >= c.vocab_size)) {
    in.fail("bos_token_id", std::to_string(*c.bos_token_id) + " is outside the vocabulary [0, " +
                                std::to_string(c.vocab_size) + ")");
  }
  // Informational only: a non-string torch_dtype keeps the default.
  if (const json* dtype = in.find("torch_dtype"); dtype && dtype->is_string()) {
    c.torch_dtype = dtype->get<std::string>();
  }
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  const std::string text = read_file(path, "model config (expected a HuggingFace config.json)");
  return parse_model_config(parse_json(text, path), path);
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
