// The ResQ quantization pipeline (simulated arithmetic): prepare (untie, fold norms), calibrate
// layer by layer, PCA + rotations, fuse rotations into weights, quantize weights (GPTQ/RTN), set up
// activation/KV fake quantization, write an output directory that `resq eval` evaluates.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "resq/quant/recipe.h"

namespace resq {

class Decoder;
struct LoadOptions;

struct QuantizeOptions {
  std::string model_dir;
  std::string out_dir;
  Recipe recipe;
  std::string recipe_path;  // for the report
  std::string calib_path;   // text file read verbatim, or a wiki.*.raw when calib_wikitext2
  bool calib_wikitext2 = false;
  int64_t nsamples = 128;
  int64_t seqlen = 2048;
  uint64_t seed = 0;
};

// Runs the whole pipeline and writes `out_dir` atomically. Returns the report (stages, seconds,
// peak RSS, spectra summary, per-layer weight errors, provenance).
nlohmann::json quantize_model(const QuantizeOptions& options);

// True if `dir` holds a resq quantized (simulated) model (resq_quant.json).
bool is_quantized_model_dir(const std::string& dir);

// Loads any model directory for evaluation: a plain HF directory as is, a resq quantized directory
// with its online transforms and activation/KV fake quantization installed.
Decoder load_model_for_eval(const std::string& dir, const LoadOptions& options);

}  // namespace resq
