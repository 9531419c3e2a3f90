// `resq make-model`: writes a random-init HF model directory of a named real shape with planted
// activation outliers (for tests, scale and speed benchmarks; no download needed).

#include <memory>

#include "common.h"
#include "resq/common/error.h"
#include "resq/common/interrupt.h"
#include "resq/common/log.h"
#include "resq/model/synthetic.h"

namespace resq::tools {
namespace {

struct MakeModelOptions {
  CommonOptions common;
  std::string shape = "tiny";
  std::string out;
  int64_t layers = 0;  // 0 = the shape's own count
  SyntheticModelOptions synthetic;
};

void run_make_model(MakeModelOptions& o) {
  apply_runtime_options(o.common);
  install_interrupt_handlers();  // Ctrl-C: the staging directory is removed at the next tensor
  o.synthetic.seed = o.common.seed;
  ModelConfig config = synthetic_shape_config(o.shape);
  if (o.layers < 0 || o.layers > config.num_layers) {
    throw UsageError("--layers: expected 1.." + std::to_string(config.num_layers) + " for shape " + o.shape +
                     " (0 = all), got " + std::to_string(o.layers));
  }
  // Fewer layers of a real shape: per-layer costs (quantize time, memory) measured at full width.
  if (o.layers > 0) config.num_layers = o.layers;
  log::info(strprintf("make-model: shape %s (%.1f M parameters) -> %s", o.shape.c_str(), config.parameter_count() / 1e6,
                      o.out.c_str()));
  const auto channels = write_synthetic_model(config, o.out, o.synthetic);
  std::printf("wrote %s: shape %s, %lld parameters, seed %llu, outlier channels [", o.out.c_str(), o.shape.c_str(),
              static_cast<long long>(config.parameter_count()), static_cast<unsigned long long>(o.common.seed));
  for (size_t i = 0; i < channels.size(); ++i) std::printf(i ? ", %lld" : "%lld", static_cast<long long>(channels[i]));
  std::printf("]\n");
}

}  // namespace

void register_make_model(CLI::App& app) {
  auto o = std::make_shared<MakeModelOptions>();
  auto* cmd = app.add_subcommand("make-model", "write a random-init HF model directory of a named shape");
  std::string names;
  for (const auto& n : synthetic_shape_names()) names += (names.empty() ? "" : ", ") + n;
  cmd->add_option("--shape", o->shape, "one of: " + names)->capture_default_str();
  cmd->add_option("--out", o->out, "output directory (must not exist)")->required();
  cmd->add_option("--layers", o->layers,
                  "keep the shape's widths but only this many layers (0 = the shape's own; for per-layer scaling runs)")
      ->capture_default_str();
  cmd->add_option("--weight-dtype", o->synthetic.weight_dtype, "auto, float32 or bfloat16")->capture_default_str();
  cmd->add_option("--outliers", o->synthetic.num_outlier_channels, "planted outlier channels")->capture_default_str();
  cmd->add_option("--tokenizer", o->synthetic.tokenizer_dir,
                  "copy tokenizer files from this directory instead of training a SentencePiece model");
  cmd->add_option("--tokenizer-vocab", o->synthetic.tokenizer_vocab, "vocab of the trained tokenizer (0 = auto)");
  add_seed_option(cmd, o->common, 0);
  cmd->add_option("--threads", o->common.threads, "threads (0 = all cores)");
  cmd->add_option("--log-level", o->common.log_level, "log level")->capture_default_str();
  cmd->footer("Example:\n  resq make-model --shape tiny --out tiny-model --seed 3");
  cmd->callback([o] { run_make_model(*o); });
}

}  // namespace resq::tools
