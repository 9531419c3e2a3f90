// Built-in recipes (configs/*.json compiled in by cmake/EmbedRecipes.cmake) and find_recipe(): every
// file is embedded verbatim, names resolve, a path wins, unknown names list the known ones.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/quant/recipe.h"

namespace resq {
namespace {

namespace fs = std::filesystem;

TEST(BuiltinRecipes, EveryConfigFileIsEmbeddedVerbatim) {
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(std::string(RESQ_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() == ".json") files.insert(e.path().stem().string());
  }
  std::set<std::string> embedded;
  for (const BuiltinRecipeText& b : builtin_recipe_texts()) {
    embedded.insert(b.name);
    EXPECT_EQ(std::string(b.json), test::read_file(std::string(RESQ_SOURCE_DIR) + "/configs/" + b.name + ".json")) << b.name;
  }
  EXPECT_EQ(embedded, files);
  EXPECT_TRUE(files.count("resq") && files.count("fp") && files.count("resq-w4a16"));
  EXPECT_EQ(builtin_recipes().size(), files.size());
}

TEST(BuiltinRecipes, NamesResolveToTheFilesRecipes) {
  for (const std::string name : {"resq", "quarot", "fp", "resq-w4a16"}) {
    std::string source;
    const Recipe by_name = find_recipe(name, &source);
    EXPECT_EQ(source, "<built-in>/" + name + ".json");
    const Recipe from_file = load_recipe(std::string(RESQ_SOURCE_DIR) + "/configs/" + name + ".json");
    EXPECT_EQ(recipe_to_json(by_name), recipe_to_json(from_file)) << name;
    EXPECT_EQ(recipe_to_json(find_recipe(name + ".json")), recipe_to_json(from_file)) << name;
  }
}

TEST(BuiltinRecipes, BitsPerRecipe) {
  // 4/8 bits at 1/8 high: 4 * 7/8 + 8 * 1/8 = 4.5; 16 = not quantized.
  const RecipeBits resq = recipe_bits(find_recipe("resq"));
  EXPECT_DOUBLE_EQ(resq.weights, 4.5);
  EXPECT_DOUBLE_EQ(resq.activations, 4.5);
  EXPECT_DOUBLE_EQ(resq.kv, 4.5);
  const RecipeBits w4a16 = recipe_bits(find_recipe("resq-w4a16"));
  EXPECT_DOUBLE_EQ(w4a16.weights, 4.5);
  EXPECT_DOUBLE_EQ(w4a16.activations, 16.0);
  EXPECT_DOUBLE_EQ(w4a16.kv, 16.0);
  const RecipeBits fp = recipe_bits(find_recipe("fp"));
  EXPECT_DOUBLE_EQ(fp.weights, 16.0);
}

TEST(BuiltinRecipes, AnExistingPathWinsOverTheBuiltInName) {
  test::TempDir dir;
  test::write_file(dir.file("resq"), R"({"name": "my-resq", "weights": {"method": "rtn"}})");
  const std::string old_cwd = fs::current_path().string();
  fs::current_path(dir.path());
  std::string source;
  Recipe r;
  EXPECT_NO_THROW(r = find_recipe("resq", &source));
  fs::current_path(old_cwd);
  EXPECT_EQ(r.name, "my-resq");
  EXPECT_EQ(r.weights.method, "rtn");
  EXPECT_EQ(source, "resq");
  EXPECT_EQ(find_recipe(dir.file("resq")).name, "my-resq");
}

TEST(BuiltinRecipes, AnUnknownNameListsTheKnownOnes) {
  const std::string msg = test::message_of<ConfigError>([] { find_recipe("resq-w3"); });
  EXPECT_NE(msg.find("'resq-w3'"), std::string::npos) << msg;
  for (const char* known : {"fp", "quarot", "resq", "resq-rtn", "resq-w4a16", "rtn-w4a4kv4"}) {
    EXPECT_NE(msg.find(known), std::string::npos) << known << " missing from: " << msg;
  }
  EXPECT_NE(msg.find("--list-recipes"), std::string::npos) << msg;
}

}  // namespace
}  // namespace resq
