// The ResQ quantization pipeline: prepare (untie, fold norms), calibrate layer by layer, PCA +
// rotations, fuse rotations into weights, quantize weights (GPTQ/RTN), write a packed checkpoint
// (docs/FORMAT.md) that `resq eval` runs with the integer kernels or in simulation.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "resq/format/layout.h"
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
  // dtype of embeddings / lm_head in the checkpoint: "" = the source model's 16-bit dtype, or
  // float32 for a float32/float64 source; else bfloat16 | float16 | float32.
  std::string globals_dtype;
  // Where the pipeline computes (resolve_device, resq/model/device.h): cpu, cuda, cuda:N or auto.
  // On CUDA one layer's weights, the calibration hidden states and the layer's statistics live on the
  // device (weights stream from the mmapped safetensors, the checkpoint streams to disk).
  std::string device = "cpu";
};

// The recipe's values the checkpoint layout depends on (format::model_layout turns them and a model
// config into the per-site 4/8-bit splits): high_fraction, weight and activation bits, clip ratio,
// down_high, and whether weights / activations are quantized at all.
format::LayoutParams recipe_layout_params(const Recipe& recipe);

// Runs the whole pipeline and writes the packed checkpoint `out_dir` atomically (temporary
// directory, renamed when complete), then reads it back with full validation. Returns the report
// (stages, seconds, peak RSS, spectra summary, per-layer weight errors, checkpoint sizes against
// the bit budget, per-linear weight checksums, provenance). Evaluate the result with
// resq/runtime/packed_model.h (load_model_for_eval).
nlohmann::json quantize_model(const QuantizeOptions& options);

}  // namespace resq
