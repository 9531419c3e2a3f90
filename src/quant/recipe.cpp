// Quantization recipe JSON <-> Recipe: strict parsing (unknown keys, wrong types and out-of-range
// values are ConfigErrors naming the source file and the dotted key path) and serialization.
#include "resq/quant/recipe.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "resq/common/error.h"

namespace resq {
namespace {

using nlohmann::json;

// Reads the fields of one JSON object, remembering which keys were consumed so that leftovers can be
// reported as unknown. `path` is the dotted prefix of the keys ("" at the top level).
class ObjectReader {
 public:
  ObjectReader(const json& object, std::string source, std::string path)
      : object_(object), source_(std::move(source)), path_(std::move(path)) {
    if (!object_.is_object()) {
      fail(path_.empty() ? std::string("the recipe") : "'" + path_ + "'",
           "must be a JSON object, got " + std::string(object_.type_name()));
    }
  }

  std::string key_path(const std::string& key) const {
    return path_.empty() ? key : path_ + "." + key;
  }

  [[noreturn]] void fail(const std::string& subject, const std::string& what) const {
    throw ConfigError(source_ + ": " + subject + " " + what);
  }
  [[noreturn]] void fail_key(const std::string& key, const std::string& what) const {
    fail("key '" + key_path(key) + "'", what);
  }

  const json* find(const std::string& key) {
    seen_.insert(key);
    auto it = object_.find(key);
    return it == object_.end() ? nullptr : &*it;
  }

  void read_string(const std::string& key, std::string* out) {
    if (const json* v = find(key)) {
      if (!v->is_string()) fail_key(key, "must be a string, got " + std::string(v->type_name()));
      *out = v->get<std::string>();
    }
  }
  void read_bool(const std::string& key, bool* out) {
    if (const json* v = find(key)) {
      if (!v->is_boolean()) fail_key(key, "must be true or false, got " + v->dump());
      *out = v->get<bool>();
    }
  }
  void read_double(const std::string& key, double* out) {
    if (const json* v = find(key)) {
      if (!v->is_number()) fail_key(key, "must be a number, got " + v->dump());
      *out = v->get<double>();
    }
  }
  void read_int(const std::string& key, int64_t* out) {
    if (const json* v = find(key)) {
      if (!v->is_number_integer()) fail_key(key, "must be an integer, got " + v->dump());
      *out = v->get<int64_t>();
    }
  }
  void read_bits(const std::string& key, int* out) {
    int64_t bits = *out;
    read_int(key, &bits);
    if (!((bits >= 2 && bits <= 8) || bits == 16)) {
      fail_key(key, "= " + std::to_string(bits) + " must be one of 2..8 or 16 (16 = not quantized)");
    }
    *out = static_cast<int>(bits);
  }
  void read_method(const std::string& key, std::string* out, const std::set<std::string>& allowed) {
    read_string(key, out);
    if (allowed.count(*out) == 0) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + ("\"" + a + "\"");
      fail_key(key, "= \"" + *out + "\" must be one of " + list);
    }
  }
  // lo < v < hi (open) or lo <= v < hi (closed_low).
  void read_fraction(const std::string& key, double* out, bool closed_low) {
    read_double(key, out);
    const double v = *out;
    const bool ok = (closed_low ? v >= 0.0 : v > 0.0) && v < 1.0;
    if (!ok) {
      fail_key(key, "= " + json(v).dump() + " must be in " + (closed_low ? "[0, 1)" : "(0, 1)"));
    }
  }
  void read_clip(const std::string& key, double* out) {
    read_double(key, out);
    if (!(*out > 0.0 && *out <= 1.0)) {
      fail_key(key, "= " + json(*out).dump() + " must be in (0, 1]");
    }
  }

  // Every key not consumed is an error (the first one, in the object's order).
  void finish() const {
    for (auto it = object_.begin(); it != object_.end(); ++it) {
      if (seen_.count(it.key()) == 0) {
        throw ConfigError(source_ + ": unknown key '" + key_path(it.key()) + "'");
      }
    }
  }

 private:
  const json& object_;
  std::string source_;
  std::string path_;
  std::set<std::string> seen_;
};

const json& empty_object() {
  static const json kEmpty = json::object();
  return kEmpty;
}

void parse_rotation(const json& j, const std::string& source, RotationRecipe* r) {
  ObjectReader in(j, source, "rotation");
  in.read_method("method", &r->method, {"resq", "quarot", "none"});
  in.read_fraction("high_fraction", &r->high_fraction, /*closed_low=*/true);
  in.read_bool("center_embeddings", &r->center_embeddings);
  in.read_bool("online_down_hadamard", &r->online_down_hadamard);
  in.read_bool("qk_rotation", &r->qk_rotation);
  in.read_fraction("pca_damping", &r->pca_damping, /*closed_low=*/true);
  in.finish();
}

void parse_weights(const json& j, const std::string& source, WeightRecipe* w) {
  ObjectReader in(j, source, "weights");
  in.read_method("method", &w->method, {"gptq", "rtn", "none"});
  in.read_bits("bits_low", &w->bits_low);
  in.read_bits("bits_high", &w->bits_high);
  in.read_bool("down_high", &w->down_high);
  in.read_double("percdamp", &w->percdamp);
  if (!(w->percdamp >= 0.0)) {
    in.fail_key("percdamp", "= " + json(w->percdamp).dump() + " must be >= 0");
  }
  in.read_int("blocksize", &w->blocksize);
  if (w->blocksize < 1) {
    in.fail_key("blocksize", "= " + std::to_string(w->blocksize) + " must be >= 1");
  }
  in.read_bool("mse_clip", &w->mse_clip);
  in.read_clip("clip_ratio", &w->clip_ratio);
  in.finish();
}

void parse_activations(const json& j, const std::string& source, ActivationRecipe* a) {
  ObjectReader in(j, source, "activations");
  in.read_bool("enabled", &a->enabled);
  in.read_bits("bits_low", &a->bits_low);
  in.read_bits("bits_high", &a->bits_high);
  in.read_clip("clip_ratio", &a->clip_ratio);
  in.read_bool("down_high", &a->down_high);
  in.finish();
}

void parse_kv(const json& j, const std::string& source, KvRecipe* kv) {
  ObjectReader in(j, source, "kv");
  in.read_bool("enabled", &kv->enabled);
  in.read_bits("bits_low", &kv->bits_low);
  in.read_bits("bits_high", &kv->bits_high);
  in.read_clip("k_clip_ratio", &kv->k_clip_ratio);
  in.read_clip("v_clip_ratio", &kv->v_clip_ratio);
  in.finish();
}

}  // namespace

Recipe parse_recipe(const nlohmann::json& json, const std::string& source) {
  Recipe recipe;
  ObjectReader in(json, source, "");
  in.read_string("name", &recipe.name);
  in.read_string("description", &recipe.description);
  const nlohmann::json* s = nullptr;
  s = in.find("rotation");
  parse_rotation(s ? *s : empty_object(), source, &recipe.rotation);
  s = in.find("weights");
  parse_weights(s ? *s : empty_object(), source, &recipe.weights);
  s = in.find("activations");
  parse_activations(s ? *s : empty_object(), source, &recipe.activations);
  s = in.find("kv");
  parse_kv(s ? *s : empty_object(), source, &recipe.kv);
  in.finish();
  return recipe;
}

Recipe load_recipe(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw IoError(path + ": cannot open recipe file");
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) throw IoError(path + ": error while reading recipe file");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw ConfigError(path + ": invalid JSON: " + e.what());
  }
  Recipe recipe = parse_recipe(json, path);
  // A recipe without a "name" is named after its file (configs/resq.json -> "resq").
  if (recipe.name.empty()) recipe.name = std::filesystem::path(path).stem().string();
  return recipe;
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
