// Recipe tests: every configs/*.json parses and says what it should, JSON round trip, defaults for
// missing sections, and ConfigErrors naming the file and key for unknown keys and bad values.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/quant/recipe.h"

namespace resq {
namespace {

using nlohmann::json;

std::string configs_dir() { return std::string(RESQ_SOURCE_DIR) + "/configs"; }

bool same(const Recipe& a, const Recipe& b) { return recipe_to_json(a) == recipe_to_json(b); }

TEST(Recipe, EveryConfigFileParsesAndRoundTrips) {
  std::map<std::string, Recipe> recipes;
  for (const auto& entry : std::filesystem::directory_iterator(configs_dir())) {
    if (entry.path().extension() != ".json") continue;
    SCOPED_TRACE(entry.path().string());
    Recipe r = load_recipe(entry.path().string());
    EXPECT_EQ(r.name, entry.path().stem().string());
    EXPECT_FALSE(r.description.empty());
    EXPECT_TRUE(same(parse_recipe(recipe_to_json(r), "roundtrip"), r));
    recipes[r.name] = r;
  }
  for (const char* name : {"resq", "resq-rtn", "quarot", "rtn-w4a4kv4", "fp", "resq-w4a16"}) {
    EXPECT_EQ(recipes.count(name), 1u) << "configs/" << name << ".json missing";
  }
  if (recipes.size() < 6) return;

  const Recipe& resq = recipes["resq"];
  EXPECT_EQ(resq.rotation.method, "resq");
  EXPECT_DOUBLE_EQ(resq.rotation.high_fraction, 0.125);
  EXPECT_EQ(resq.weights.method, "gptq");
  EXPECT_EQ(resq.weights.bits_low, 4);
  EXPECT_EQ(resq.weights.bits_high, 8);
  EXPECT_FALSE(resq.weights.down_high);
  EXPECT_TRUE(resq.activations.enabled);
  EXPECT_EQ(resq.activations.bits_low, 4);
  EXPECT_EQ(resq.activations.bits_high, 8);
  EXPECT_FALSE(resq.activations.down_high);
  EXPECT_TRUE(resq.kv.enabled);
  EXPECT_EQ(resq.kv.bits_low, 4);
  EXPECT_EQ(resq.kv.bits_high, 8);
  EXPECT_DOUBLE_EQ(resq.mixed_bits(4, 8), 4.5);

  Recipe rtn = recipes["resq-rtn"];
  EXPECT_EQ(rtn.weights.method, "rtn");
  rtn.weights.method = "gptq";  // otherwise identical to resq
  rtn.name = resq.name;
  rtn.description = resq.description;
  EXPECT_TRUE(same(rtn, resq));

  const Recipe& quarot = recipes["quarot"];
  EXPECT_EQ(quarot.rotation.method, "quarot");
  EXPECT_DOUBLE_EQ(quarot.rotation.high_fraction, 0.0);
  EXPECT_TRUE(quarot.rotation.online_down_hadamard);
  EXPECT_TRUE(quarot.rotation.qk_rotation);
  EXPECT_EQ(quarot.weights.method, "gptq");
  EXPECT_DOUBLE_EQ(quarot.mixed_bits(quarot.weights.bits_low, quarot.weights.bits_high), 4.0);
  EXPECT_EQ(quarot.activations.bits_low, 4);
  EXPECT_EQ(quarot.kv.bits_low, 4);

  const Recipe& w4a4 = recipes["rtn-w4a4kv4"];
  EXPECT_EQ(w4a4.rotation.method, "none");
  EXPECT_EQ(w4a4.weights.method, "rtn");
  EXPECT_EQ(w4a4.weights.bits_low, 4);
  EXPECT_TRUE(w4a4.activations.enabled);
  EXPECT_EQ(w4a4.activations.bits_low, 4);
  EXPECT_TRUE(w4a4.kv.enabled);
  EXPECT_EQ(w4a4.kv.bits_low, 4);
  EXPECT_DOUBLE_EQ(w4a4.rotation.high_fraction, 0.0);

  const Recipe& fp = recipes["fp"];
  EXPECT_EQ(fp.rotation.method, "none");
  EXPECT_EQ(fp.weights.method, "none");
  EXPECT_FALSE(fp.activations.enabled);
  EXPECT_FALSE(fp.kv.enabled);

  const Recipe& w4a16 = recipes["resq-w4a16"];
  EXPECT_EQ(w4a16.rotation.method, "resq");
  EXPECT_EQ(w4a16.weights.method, "gptq");
  EXPECT_EQ(w4a16.weights.bits_low, 4);
  EXPECT_EQ(w4a16.weights.bits_high, 8);
  EXPECT_FALSE(w4a16.activations.enabled);
  EXPECT_FALSE(w4a16.kv.enabled);
}

TEST(Recipe, MissingSectionsAndFieldsTakeDefaults) {
  Recipe r = parse_recipe(json::parse(R"({"name": "x", "weights": {"bits_low": 3}})"), "x.json");
  Recipe d;
  d.name = "x";
  d.weights.bits_low = 3;
  EXPECT_TRUE(same(r, d));
  EXPECT_EQ(r.weights.bits_high, 8);
  EXPECT_EQ(r.weights.method, "gptq");
  EXPECT_EQ(r.weights.blocksize, 128);
  // An empty object is the default recipe; load_recipe names an unnamed recipe after its file.
  EXPECT_TRUE(same(parse_recipe(json::object(), "e.json"), Recipe{}));
  test::TempDir dir;
  test::write_file(dir.file("my-recipe.json"), R"({"kv": {"enabled": false}})");
  Recipe loaded = load_recipe(dir.file("my-recipe.json"));
  EXPECT_EQ(loaded.name, "my-recipe");
  EXPECT_FALSE(loaded.kv.enabled);
  EXPECT_TRUE(loaded.activations.enabled);
}

// Expects a ConfigError whose message contains every fragment.
void expect_config_error(const std::string& text, std::initializer_list<const char*> fragments) {
  try {
    parse_recipe(json::parse(text), "configs/x.json");
    ADD_FAILURE() << "accepted: " << text;
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    for (const char* f : fragments) {
      EXPECT_NE(msg.find(f), std::string::npos) << "message '" << msg << "' lacks '" << f << "'";
    }
  }
}

TEST(Recipe, UnknownKeysNameFileAndPath) {
  expect_config_error(R"({"weights": {"bitz": 4}})",
                      {"configs/x.json", "unknown key 'weights.bitz'"});
  expect_config_error(R"({"name": "a", "rotaton": {}})", {"configs/x.json", "unknown key 'rotaton'"});
  expect_config_error(R"({"kv": {"enabled": true, "k_clip": 0.9}})", {"unknown key 'kv.k_clip'"});
  expect_config_error(R"({"activations": {"clip": 0.9}})", {"unknown key 'activations.clip'"});
  expect_config_error(R"({"rotation": {"hadamard": true}})", {"unknown key 'rotation.hadamard'"});
}

TEST(Recipe, BadValuesNameKeyAndRange) {
  expect_config_error(R"({"weights": {"bits_low": 9}})", {"configs/x.json", "'weights.bits_low'", "2..8"});
  expect_config_error(R"({"weights": {"bits_high": 1}})", {"'weights.bits_high'", "16"});
  expect_config_error(R"({"activations": {"bits_low": 12}})", {"'activations.bits_low'"});
  expect_config_error(R"({"kv": {"bits_high": 0}})", {"'kv.bits_high'"});
  expect_config_error(R"({"weights": {"bits_low": 4.5}})", {"'weights.bits_low'", "integer"});
  expect_config_error(R"({"weights": {"bits_low": "4"}})", {"'weights.bits_low'", "integer"});
  expect_config_error(R"({"weights": {"method": "awq"}})", {"'weights.method'", "\"gptq\"", "\"rtn\""});
  expect_config_error(R"({"rotation": {"method": "spin"}})", {"'rotation.method'", "\"quarot\""});
  expect_config_error(R"({"rotation": {"high_fraction": 1.0}})", {"'rotation.high_fraction'", "[0, 1)"});
  expect_config_error(R"({"rotation": {"high_fraction": -0.1}})", {"'rotation.high_fraction'"});
  expect_config_error(R"({"rotation": {"pca_damping": 2}})", {"'rotation.pca_damping'"});
  expect_config_error(R"({"rotation": {"qk_rotation": 1}})", {"'rotation.qk_rotation'", "true or false"});
  expect_config_error(R"({"weights": {"clip_ratio": 0}})", {"'weights.clip_ratio'", "(0, 1]"});
  expect_config_error(R"({"activations": {"clip_ratio": 1.01}})", {"'activations.clip_ratio'", "(0, 1]"});
  expect_config_error(R"({"kv": {"v_clip_ratio": -1}})", {"'kv.v_clip_ratio'"});
  expect_config_error(R"({"weights": {"blocksize": 0}})", {"'weights.blocksize'", ">= 1"});
  expect_config_error(R"({"weights": {"percdamp": -0.01}})", {"'weights.percdamp'", ">= 0"});
  expect_config_error(R"({"weights": [1, 2]})", {"'weights'", "object"});
  expect_config_error(R"([1])", {"configs/x.json", "object"});
  expect_config_error(R"({"name": 3})", {"'name'", "string"});
  // Edges that are valid.
  Recipe r = parse_recipe(json::parse(R"({"weights": {"bits_low": 2, "bits_high": 16, "clip_ratio": 1,
      "percdamp": 0, "blocksize": 1}, "rotation": {"high_fraction": 0}})"), "ok.json");
  EXPECT_EQ(r.weights.bits_high, 16);
  EXPECT_EQ(r.weights.blocksize, 1);
}

TEST(Recipe, MessagesNameTheRangeAndTheValue) {
  expect_config_error(R"({"weights": {"clip_ratio": 1.5}})",
                      {"configs/x.json: 'weights.clip_ratio' must be a number in (0, 1], got 1.5"});
  expect_config_error(R"({"kv": {"bits_low": 9}})",
                      {"configs/x.json: 'kv.bits_low' must be one of 2..8 or 16 (16 = not quantized), got 9"});
  expect_config_error(R"({"weights": {"method": "awq"}})",
                      {"'weights.method' must be one of \"gptq\", \"rtn\", \"none\", got \"awq\""});
  // A section that is null is not a missing section.
  expect_config_error(R"({"kv": null})", {"configs/x.json: 'kv' must be an object, got null"});
}

TEST(Recipe, LoadErrors) {
  test::TempDir dir;
  EXPECT_THROW(load_recipe(dir.file("missing.json")), IoError);
  test::write_file(dir.file("bad.json"), "{\"name\": ");
  try {
    load_recipe(dir.file("bad.json"));
    FAIL() << "invalid JSON accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << e.what();
  }
  test::write_file(dir.file("unknown.json"), R"({"weights": {"bitz": 4}})");
  try {
    load_recipe(dir.file("unknown.json"));
    FAIL() << "unknown key accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.file("unknown.json") + ": unknown key 'weights.bitz'"),
              std::string::npos)
        << e.what();
  }
}

// Issue 19, defects 1 and 2 for recipes: a number beyond double, deep nesting and a key written
// twice are ConfigErrors naming the file and the key (1e400 used to escape as "internal error").
TEST(Recipe, OverflowNestingAndRepeatedKeysNameTheKey) {
  test::TempDir dir;
  const auto message = [&](const std::string& text) {
    test::write_file(dir.file("r.json"), text);
    return test::message_of<ConfigError>([&] { load_recipe(dir.file("r.json")); });
  };
  const std::string file = dir.file("r.json");
  EXPECT_EQ(message(R"({"weights": {"percdamp": 1e400}})"),
            file + ": invalid JSON at 'weights.percdamp': number overflow parsing '1e400'");
  EXPECT_EQ(message(R"({"kv": {"bits_low": 4, "bits_low": 8}})"),
            file + ": the key 'bits_low' appears more than once in 'kv' (JSON keys must be unique)");
  const std::string deep = message("{\"description\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  EXPECT_EQ(deep.rfind(file + ": invalid JSON at 'description[0][0]", 0), 0u) << deep;
}

}  // namespace
}  // namespace resq
