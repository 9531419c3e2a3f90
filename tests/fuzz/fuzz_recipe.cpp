// libFuzzer harness: a recipe file -> load_recipe -> recipe_to_json -> parse_recipe must give the
// same recipe.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "resq/quant/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace resq;
  static fuzz::ScratchDir dir;
  const std::string path = dir.write("recipe.json", std::string(reinterpret_cast<const char*>(data), size));
  fuzz::expect_only_resq_errors([&] {
    const Recipe r = load_recipe(path);
    const nlohmann::json back = recipe_to_json(r);
    if (recipe_to_json(parse_recipe(back, "round-trip")) != back) {
      fuzz::invariant_failed("recipe round trip: " + back.dump());
    }
  });
  return 0;
}
