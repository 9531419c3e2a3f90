// `resq demo`: the main job end to end with no download — makes the tiny model (random init, planted
// outlier channels) in a temporary directory, quantizes it with each recipe of configs/ and prints
// recipe | bits | ppl | KL divergence vs fp | seconds.
#include <ATen/Parallel.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>

#include "common.h"
#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/log.h"
#include "resq/eval/perplexity.h"
#include "resq/model/decoder.h"
#include "resq/model/synthetic.h"
#include "resq/quant/pipeline.h"
#include "resq/quant/recipe.h"
#include "resq/runtime/packed_model.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"

namespace resq::tools {
namespace {

struct DemoOptions {
  CommonOptions common;
  bool keep = false;
  std::string configs;  // empty: the built-in recipes
  std::vector<std::string> recipes = {"fp", "rtn-w4a4kv4", "quarot", "resq-rtn", "resq"};
};

void run_demo(const DemoOptions& o) {
  apply_runtime_options(o.common);
  namespace fs = std::filesystem;
  const auto t0 = std::chrono::steady_clock::now();
  // resq-demo.tmp.<pid>: the demo directories of killed runs are removed here (common/file.h).
  std::error_code ec;
  const std::string base = (fs::temp_directory_path(ec) / "resq-demo").string();
  remove_stale_temporaries(base);
  const fs::path work = temporary_path(base);
  fs::remove_all(work, ec);
  if (!fs::create_directories(work, ec) || ec) throw IoError(work.string() + ": cannot create the demo directory: " + ec.message());
  struct Cleanup {
    fs::path path;
    bool keep;
    ~Cleanup() {
      std::error_code ec;
      if (!keep) fs::remove_all(path, ec);
    }
  } cleanup{work, o.keep};

  const std::string model_dir = (work / "tiny").string();
  SyntheticModelOptions synthetic;
  synthetic.seed = o.common.seed;
  const ModelConfig config = synthetic_shape_config("tiny");
  const auto channels = write_synthetic_model(config, model_dir, synthetic);
  log::info(strprintf("demo: wrote random-init tiny model (%.2f M parameters, %zu planted outlier channels) to %s",
                      config.parameter_count() / 1e6, channels.size(), model_dir.c_str()));
  const std::string calib_path = (work / "calib.txt").string();
  {
    std::ofstream(calib_path) << synthetic_text(o.common.seed + 2, 40000);
  }
  auto tokenizer = load_tokenizer(model_dir);
  const std::string text = synthetic_text(o.common.seed + 1, 30000);
  const auto ids = tokenize_for_eval(*tokenizer, text, tokenizer->adds_bos());
  const int64_t seqlen = 256;
  const int64_t nsamples = 16;  // calibration windows of every recipe

  Decoder fp = Decoder::load(model_dir);
  PerplexityOptions po;
  po.seqlen = seqlen;
  po.progress = false;

  std::printf("resq demo: random-init 'tiny' Llama (%lld layers, hidden %lld, %lld heads / %lld kv heads, "
              "FFN %lld, vocab %lld) with %zu planted outlier channels\n",
              static_cast<long long>(config.num_layers), static_cast<long long>(config.hidden_size),
              static_cast<long long>(config.num_heads), static_cast<long long>(config.num_kv_heads),
              static_cast<long long>(config.intermediate_size), static_cast<long long>(config.vocab_size),
              channels.size());
  std::printf("calibration: %lld x %lld tokens of generated text; evaluation: %lld windows of %lld tokens\n",
              static_cast<long long>(nsamples),
              static_cast<long long>(seqlen), static_cast<long long>(static_cast<int64_t>(ids.size()) / seqlen),
              static_cast<long long>(seqlen));
  std::printf("%-12s | %-14s | %-10s | %-16s | %s\n", "recipe", "bits W/A/KV", "ppl", "KL vs fp (nats)", "seconds");
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& name : o.recipes) {
    const auto t = std::chrono::steady_clock::now();
    QuantizeOptions q;
    q.model_dir = model_dir;
    q.out_dir = (work / ("q-" + name)).string();
    q.recipe = find_recipe(o.configs.empty() ? name : o.configs + "/" + name + ".json", &q.recipe_path);
    q.calib_path = calib_path;
    q.nsamples = nsamples;
    q.seqlen = seqlen;
    q.seed = o.common.seed;
    const nlohmann::json report = quantize_model(q);
    Decoder model = load_model_for_eval(q.out_dir, LoadOptions{});
    const PerplexityResult r = evaluate_perplexity(model, ids, po);
    PerplexityOptions kl_windows = po;
    kl_windows.max_windows = 4;
    const ComparisonResult kl = compare_to_reference(fp, model, ids, kl_windows);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    char bits[64];
    std::snprintf(bits, sizeof bits, "%g/%g/%g", report["bits"]["weights"].get<double>(),
                  report["bits"]["activations"].get<double>(), report["bits"]["kv"].get<double>());
    std::printf("%-12s | %-14s | %-10.3f | %-16.6f | %.2f\n", name.c_str(), bits, r.ppl, kl.kl_mean, seconds);
    rows.push_back({{"recipe", name}, {"bits", report["bits"]}, {"ppl", r.ppl}, {"ppl_stderr", r.ppl_stderr},
                    {"kl", kl.kl_mean}, {"seconds", seconds}});
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("(a random-init model predicts near-uniformly: ppl ~ tokenizer vocab %d; the KL divergence from the "
              "fp model is the quantization error)\n",
              tokenizer->vocab_size());
  std::printf("demo finished in %.1f s%s\n", seconds, o.keep ? (", files kept in " + work.string()).c_str() : "");
  if (!o.common.json_out.empty()) {
    write_json_file(o.common.json_out, {{"model", "tiny"}, {"seed", o.common.seed}, {"seconds", seconds}, {"rows", rows}});
  }
}

}  // namespace

void register_demo(CLI::App& app) {
  auto o = std::make_shared<DemoOptions>();
  auto* cmd = app.add_subcommand("demo", "make a tiny random model, quantize it with each recipe, report ppl and KL");
  add_seed_option(cmd, o->common, 0);
  cmd->add_option("--threads", o->common.threads, "threads (0 = all cores)");
  cmd->add_option("--log-level", o->common.log_level, "log level")->capture_default_str();
  cmd->add_option("--configs", o->configs, "directory of recipe JSON files (default: the built-in recipes)");
  cmd->add_option("--recipes", o->recipes, "recipes to run (file names in --configs without .json)")
      ->capture_default_str();
  cmd->add_flag("--keep", o->keep, "keep the temporary directory");
  add_json_option(cmd, o->common);
  cmd->footer("Example:\n  resq demo --recipes fp resq quarot");
  cmd->callback([o] { run_demo(*o); });
}

}  // namespace resq::tools
