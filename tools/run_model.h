// The model that `resq eval` and `resq generate` run: --mode read, the directory loaded for it (a
// HF model or a packed checkpoint) and the names their reports give it.
#pragma once

#include <optional>
#include <string>

#include "common.h"
#include "resq/model/decoder.h"
#include "resq/runtime/packed_model.h"

namespace resq::tools {

// --mode: nullopt when not given (a packed checkpoint then runs packed). Throws UsageError for an
// unknown mode, so a command can check it before it loads anything.
std::optional<ExecutionMode> parse_mode_option(const std::string& mode);

struct RunModel {
  Decoder decoder;
  bool quantized = false;  // a resq packed checkpoint
  std::string mode_name;   // "fp" for a HF model, else "packed" or "simulate"
};

// Loads --model with --dtype / --device in `mode` (see load_model_for_eval).
RunModel load_run_model(const CommonOptions& o, std::optional<ExecutionMode> mode);

}  // namespace resq::tools
