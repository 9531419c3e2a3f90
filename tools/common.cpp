// Shared option declarations and helpers for the resq subcommands.
#include "common.h"

#include <ATen/Parallel.h>

#include <thread>

#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/log.h"

namespace resq::tools {

void add_model_option(CLI::App* cmd, CommonOptions& o, bool required) {
  auto* opt = cmd->add_option("--model,-m", o.model, "HuggingFace model directory (config.json, *.safetensors, tokenizer)");
  if (required) opt->required();
}

void add_device_option(CLI::App* cmd, CommonOptions& o, const std::string& default_device) {
  o.device = default_device;
  cmd->add_option("--device", o.device, "cpu, cuda, cuda:N or auto (cuda:0 when this libtorch sees a GPU, else cpu)")
      ->capture_default_str();
}

void add_runtime_options(CLI::App* cmd, CommonOptions& o) {
  add_device_option(cmd, o, "cpu");
  cmd->add_option("--dtype", o.dtype, "compute dtype: float32, bfloat16 or float64")->capture_default_str();
  cmd->add_option("--threads", o.threads, "intra-op threads (0 = all cores)")->capture_default_str();
  cmd->add_option("--log-level", o.log_level, "trace, debug, info, warn, error, off")->capture_default_str();
}

void add_seed_option(CLI::App* cmd, CommonOptions& o, uint64_t default_seed) {
  o.seed = default_seed;
  cmd->add_option("--seed", o.seed, "random seed")->capture_default_str();
}

void add_json_option(CLI::App* cmd, CommonOptions& o) {
  cmd->add_option("--json", o.json_out, "also write the results as JSON to this file");
}

void apply_runtime_options(const CommonOptions& o) {
  log::set_level(o.log_level);  // UsageError on an unknown level name
  if (o.threads < 0) throw UsageError("--threads must be >= 0, got " + std::to_string(o.threads));
  const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  // An unwritable --json is found now, not after the work whose results it was to hold.
  if (!o.json_out.empty()) check_output_file_writable(o.json_out, "--json");
}

void write_json_file(const std::string& path, const nlohmann::json& value) {
  write_file_atomically(path, value.dump(2) + "\n", "JSON output (--json)");
}

}  // namespace resq::tools
