// `resq demo`: the main job end to end with no download — makes the tiny model in a temporary
// directory, tokenizes generated text with its tokenizer and evaluates perplexity.
#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>

#include "common.h"
#include "resq/eval/perplexity.h"
#include "resq/model/decoder.h"
#include "resq/model/synthetic.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"

namespace resq::tools {
namespace {

struct DemoOptions {
  CommonOptions common;
  bool keep = false;
};

void run_demo(const DemoOptions& o) {
  apply_runtime_options(o.common);
  namespace fs = std::filesystem;
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path work = fs::temp_directory_path() / ("resq-demo-" + std::to_string(::getpid()));
  fs::remove_all(work);
  fs::create_directories(work);
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
  spdlog::info("demo: wrote random-init tiny model ({:.2f} M parameters, {} planted outlier channels) to {}",
               config.parameter_count() / 1e6, channels.size(), model_dir);

  auto tokenizer = load_tokenizer(model_dir);
  const std::string text = synthetic_text(o.common.seed + 1, 60000);
  const auto ids = tokenize_for_eval(*tokenizer, text, tokenizer->adds_bos());

  Decoder decoder = Decoder::load(model_dir);
  PerplexityOptions po;
  po.seqlen = 256;
  const PerplexityResult r = evaluate_perplexity(decoder, ids, po);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::printf("resq demo: random-init 'tiny' Llama (%lld layers, hidden %lld, %lld heads / %lld kv heads, vocab %lld)\n",
              static_cast<long long>(config.num_layers), static_cast<long long>(config.hidden_size),
              static_cast<long long>(config.num_heads), static_cast<long long>(config.num_kv_heads),
              static_cast<long long>(config.vocab_size));
  std::printf("%-10s | %-5s | %-22s | %s\n", "recipe", "bits", "ppl (seqlen 256)", "seconds");
  std::printf("%-10s | %-5s | %10.3f ± %-9.3f | %.2f\n", "fp", "32", r.ppl, r.ppl_stderr, r.seconds);
  std::printf("(%lld windows, %lld tokens; a random-init model predicts near-uniformly: ppl ~ tokenizer vocab %d)\n",
              static_cast<long long>(r.num_windows), static_cast<long long>(r.num_windows * r.seqlen),
              tokenizer->vocab_size());
  std::printf("demo finished in %.1f s%s\n", seconds, o.keep ? (", model kept in " + model_dir).c_str() : "");
  if (!o.common.json_out.empty()) {
    nlohmann::json j = {{"model", "tiny"}, {"seconds", seconds}, {"rows", {{{"recipe", "fp"}, {"ppl", r.ppl},
                                                                              {"ppl_stderr", r.ppl_stderr}}}}};
    write_json_file(o.common.json_out, j);
  }
}

}  // namespace

void register_demo(CLI::App& app) {
  auto o = std::make_shared<DemoOptions>();
  auto* cmd = app.add_subcommand("demo", "make a tiny random model and evaluate it end to end (no download)");
  add_seed_option(cmd, o->common, 0);
  cmd->add_option("--threads", o->common.threads, "threads (0 = all cores)");
  cmd->add_option("--log-level", o->common.log_level, "log level")->capture_default_str();
  cmd->add_flag("--keep", o->keep, "keep the temporary model directory");
  add_json_option(cmd, o->common);
  cmd->callback([o] { run_demo(*o); });
}

}  // namespace resq::tools
