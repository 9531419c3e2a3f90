// Loading the model of `resq eval` and `resq generate` (tools/run_model.h).
#include "run_model.h"

namespace resq::tools {

std::optional<ExecutionMode> parse_mode_option(const std::string& mode) {
  if (mode.empty()) return std::nullopt;
  return parse_execution_mode(mode);
}

RunModel load_run_model(const CommonOptions& o, std::optional<ExecutionMode> mode) {
  LoadOptions load;
  load.dtype = o.dtype;
  load.device = o.device;
  const bool quantized = is_quantized_model_dir(o.model);
  Decoder decoder = load_model_for_eval(o.model, load, mode);
  const std::string name = quantized ? execution_mode_name(mode.value_or(ExecutionMode::kPacked)) : "fp";
  return {std::move(decoder), quantized, name};
}

}  // namespace resq::tools
