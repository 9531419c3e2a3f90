// Quantization recipe JSON <-> Recipe: strict parsing (unknown keys, wrong types and out-of-range
// values are ConfigErrors naming the source file and the dotted key path) and serialization.
#include "resq/quant/recipe.h"

#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/json_fields.h"

namespace resq {
namespace {

using nlohmann::json;

// Overwrites *out with the field when it is present; a missing field keeps the default.
template <typename T>
void set_if_present(const std::optional<T>& value, T* out) {
  if (value) *out = *value;
}

void read_bits(const JsonFields& in, const char* key, int* out) {
  if (auto bits = in.optional_integer(key)) {
    if (!((*bits >= 2 && *bits <= 8) || *bits == 16)) {
      in.fail(key, "must be one of 2..8 or 16 (16 = not quantized), got " + std::to_string(*bits));
    }
    *out = static_cast<int>(*bits);
  }
}

// A clip ratio keeps a fraction of the range: 0 would clip everything, above 1 is no clip.
void read_clip(const JsonFields& in, const char* key, double* out) {
  set_if_present(in.optional_number(key, NumberRange::open_closed(0, 1)), out);
}

void parse_learn(const JsonFields& in, LearnRecipe* l) {
  l->enabled = true;
  set_if_present(in.optional_integer("steps", IntRange::positive()), &l->steps);
  set_if_present(in.optional_number("lr", NumberRange::greater_than(0)), &l->lr);
  set_if_present(in.optional_number("momentum", NumberRange::closed_open(0, 1)), &l->momentum);
  set_if_present(in.optional_integer("batch", IntRange::positive()), &l->batch);
  set_if_present(in.optional_integer("seed", IntRange::at_least(0)), &l->seed);
  set_if_present(in.optional_one_of("objective", {"ce", "kl", "noise"}), &l->objective);
  set_if_present(in.optional_number("holdout", NumberRange::closed_open(0, 1)), &l->holdout);
  set_if_present(in.optional_integer("eval_every", IntRange::positive()), &l->eval_every);
  set_if_present(in.optional_one_of("weights_in_loop", {"rtn", "none"}), &l->weights_in_loop);
  set_if_present(in.optional_integer("tokens", IntRange::positive()), &l->tokens);
  in.reject_unknown_keys();
}

void parse_rotation(const JsonFields& in, RotationRecipe* r) {
  set_if_present(in.optional_one_of("method", {"resq", "quarot", "none"}), &r->method);
  set_if_present(in.optional_number("high_fraction", NumberRange::closed_open(0, 1)), &r->high_fraction);
  set_if_present(in.optional_boolean("center_embeddings"), &r->center_embeddings);
  set_if_present(in.optional_boolean("online_down_hadamard"), &r->online_down_hadamard);
  set_if_present(in.optional_boolean("qk_rotation"), &r->qk_rotation);
  set_if_present(in.optional_number("pca_damping", NumberRange::closed_open(0, 1)), &r->pca_damping);
  if (auto s = in.optional_object("learn")) {
    // Learning rotates inside the PCA subspaces: quarot/none have none.
    if (r->method != "resq") in.fail("learn", "needs \"method\": \"resq\" (got \"" + r->method + "\")");
    parse_learn(*s, &r->learn);
  }
  in.reject_unknown_keys();
}

void parse_weights(const JsonFields& in, WeightRecipe* w) {
  set_if_present(in.optional_one_of("method", {"gptq", "rtn", "none"}), &w->method);
  read_bits(in, "bits_low", &w->bits_low);
  read_bits(in, "bits_high", &w->bits_high);
  set_if_present(in.optional_boolean("down_high"), &w->down_high);
  set_if_present(in.optional_number("percdamp", NumberRange::at_least(0)), &w->percdamp);
  set_if_present(in.optional_integer("blocksize", IntRange::at_least(1)), &w->blocksize);
  set_if_present(in.optional_boolean("mse_clip"), &w->mse_clip);
  read_clip(in, "clip_ratio", &w->clip_ratio);
  in.reject_unknown_keys();
}

void parse_activations(const JsonFields& in, ActivationRecipe* a) {
  set_if_present(in.optional_boolean("enabled"), &a->enabled);
  read_bits(in, "bits_low", &a->bits_low);
  read_bits(in, "bits_high", &a->bits_high);
  read_clip(in, "clip_ratio", &a->clip_ratio);
  set_if_present(in.optional_boolean("down_high"), &a->down_high);
  in.reject_unknown_keys();
}

void parse_kv(const JsonFields& in, KvRecipe* kv) {
  set_if_present(in.optional_boolean("enabled"), &kv->enabled);
  read_bits(in, "bits_low", &kv->bits_low);
  read_bits(in, "bits_high", &kv->bits_high);
  read_clip(in, "k_clip_ratio", &kv->k_clip_ratio);
  read_clip(in, "v_clip_ratio", &kv->v_clip_ratio);
  in.reject_unknown_keys();
}

}  // namespace

Recipe parse_recipe(const nlohmann::json& json, const std::string& source) {
  Recipe recipe;
  const JsonFields in(json, source);
  set_if_present(in.optional_string("name"), &recipe.name);
  set_if_present(in.optional_string("description"), &recipe.description);
  // A missing section keeps its defaults.
  if (auto s = in.optional_object("rotation")) parse_rotation(*s, &recipe.rotation);
  if (auto s = in.optional_object("weights")) parse_weights(*s, &recipe.weights);
  if (auto s = in.optional_object("activations")) parse_activations(*s, &recipe.activations);
  if (auto s = in.optional_object("kv")) parse_kv(*s, &recipe.kv);
  in.reject_unknown_keys();
  return recipe;
}

Recipe load_recipe(const std::string& path) {
  // A key written twice would silently override the first: refused like a misspelled one.
  const nlohmann::json j = parse_json(read_file(path, "recipe file"), path,
                                      JsonParseOptions{JsonErrorKind::kConfig, /*unique_keys=*/true});
  Recipe recipe = parse_recipe(j, path);
  // A recipe without a "name" is named after its file (configs/resq.json -> "resq").
  if (recipe.name.empty()) recipe.name = std::filesystem::path(path).stem().string();
  return recipe;
}

RecipeBits recipe_bits(const Recipe& r) {
  RecipeBits b;
  if (r.weights.method != "none") b.weights = r.mixed_bits(r.weights.bits_low, r.weights.bits_high);
  if (r.activations.enabled) b.activations = r.mixed_bits(r.activations.bits_low, r.activations.bits_high);
  if (r.kv.enabled) b.kv = r.mixed_bits(r.kv.bits_low, r.kv.bits_high);
  return b;
}

namespace {

std::string builtin_source(const BuiltinRecipeText& b) { return std::string("<built-in>/") + b.name + ".json"; }

Recipe parse_builtin(const BuiltinRecipeText& b) {
  Recipe r = parse_recipe(parse_json(b.json, builtin_source(b)), builtin_source(b));
  if (r.name.empty()) r.name = b.name;  // as load_recipe names a file's recipe after the file
  return r;
}

}  // namespace

std::vector<Recipe> builtin_recipes() {
  std::vector<Recipe> out;
  for (const BuiltinRecipeText& b : builtin_recipe_texts()) out.push_back(parse_builtin(b));
  return out;
}

Recipe find_recipe(const std::string& name_or_path, std::string* source) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(name_or_path, ec)) {
    if (source) *source = name_or_path;
    return load_recipe(name_or_path);
  }
  std::string name = name_or_path;
  if (name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0) name.resize(name.size() - 5);
  std::string known;
  for (const BuiltinRecipeText& b : builtin_recipe_texts()) {
    if (name == b.name) {
      if (source) *source = builtin_source(b);
      return parse_builtin(b);
    }
    known += (known.empty() ? "" : ", ") + std::string(b.name);
  }
  throw ConfigError("--config '" + name_or_path + "': no such recipe file and no built-in recipe of that name (built-in: " +
                    known + "; `resq quantize --list-recipes` describes them)");
}

nlohmann::json recipe_to_json(const Recipe& r) {
  nlohmann::json j;
  j["name"] = r.name;
  j["description"] = r.description;
  j["rotation"] = {{"method", r.rotation.method},
                   {"high_fraction", r.rotation.high_fraction},
                   {"center_embeddings", r.rotation.center_embeddings},
                   {"online_down_hadamard", r.rotation.online_down_hadamard},
                   {"qk_rotation", r.rotation.qk_rotation},
                   {"pca_damping", r.rotation.pca_damping}};
  // Only when enabled: recipes without it serialize (and write checkpoints) exactly as before.
  if (r.rotation.learn.enabled) {
    const LearnRecipe& l = r.rotation.learn;
    j["rotation"]["learn"] = {{"steps", l.steps}, {"lr", l.lr}, {"momentum", l.momentum}, {"batch", l.batch}, {"seed", l.seed},
                               {"objective", l.objective}, {"holdout", l.holdout}, {"eval_every", l.eval_every},
                               {"weights_in_loop", l.weights_in_loop}};
    // Only for the objective that reads it: older learned recipes serialize as before.
    if (l.objective == "noise") j["rotation"]["learn"]["tokens"] = l.tokens;
  }
  j["weights"] = {{"method", r.weights.method},         {"bits_low", r.weights.bits_low},
                  {"bits_high", r.weights.bits_high},   {"down_high", r.weights.down_high},
                  {"percdamp", r.weights.percdamp},     {"blocksize", r.weights.blocksize},
                  {"mse_clip", r.weights.mse_clip},     {"clip_ratio", r.weights.clip_ratio}};
  j["activations"] = {{"enabled", r.activations.enabled},
                      {"bits_low", r.activations.bits_low},
                      {"bits_high", r.activations.bits_high},
                      {"clip_ratio", r.activations.clip_ratio},
                      {"down_high", r.activations.down_high}};
  j["kv"] = {{"enabled", r.kv.enabled},
             {"bits_low", r.kv.bits_low},
             {"bits_high", r.kv.bits_high},
             {"k_clip_ratio", r.kv.k_clip_ratio},
             {"v_clip_ratio", r.kv.v_clip_ratio}};
  return j;
}

}  // namespace resq
