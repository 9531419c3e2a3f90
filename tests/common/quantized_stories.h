// Test helper: stories260K quantized by the real pipeline (calibrated on TinyStories valid_head.txt),
// once per (recipe, seed, nsamples, seqlen) and test process, into a temporary directory removed at
// exit. Needs resq_core (quantize_model); shared by the runtime and CUDA test suites.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <string>

#include "common/test_util.h"
#include "resq/quant/pipeline.h"
#include "resq/quant/recipe.h"

namespace resq::test {

// Returns the checkpoint directory; *report (if given) receives the quantize report of that
// checkpoint (kept from the call that made it).
inline std::string quantized_stories(const std::string& recipe, uint64_t seed = 1, int64_t nsamples = 8,
                                     int64_t seqlen = 128, nlohmann::json* report = nullptr) {
  static TempDir* dir = new TempDir();  // shared by the process, removed at exit
  static auto* reports = new std::map<std::string, nlohmann::json>();
  const std::string name = recipe + "-s" + std::to_string(seed) + "-n" + std::to_string(nsamples) + "-l" +
                           std::to_string(seqlen);
  const std::string out = dir->file(name);
  if (!std::filesystem::exists(out)) {
    QuantizeOptions o;
    o.model_dir = shared_path("models/stories260K");
    o.out_dir = out;
    o.recipe = load_recipe(std::string(RESQ_SOURCE_DIR) + "/configs/" + recipe + ".json");
    o.calib_path = shared_path("data/tinystories/valid_head.txt");
    o.nsamples = nsamples;
    o.seqlen = seqlen;
    o.seed = seed;
    (*reports)[name] = quantize_model(o);
  }
  if (report) *report = (*reports)[name];
  return out;
}

}  // namespace resq::test
