// `resq quantize`: ResQ (or baseline) quantization of a HF model directory into a packed mixed 4/8-bit
// checkpoint (docs/FORMAT.md), reported against its bit budget.
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <utility>

#include "common.h"
#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/interrupt.h"
#include "resq/common/log.h"
#include "resq/quant/pipeline.h"
#include "resq/quant/recipe.h"
#include "resq/report/html_report.h"

namespace resq::tools {
namespace {

struct QuantizeCliOptions {
  CommonOptions common;
  std::string out;
  std::string config;
  std::string calib;
  std::string calib_wikitext2;
  int64_t nsamples = 128;
  int64_t seqlen = 2048;
  std::string globals_dtype;
  std::string report_html;  // --report FILE.html
  bool list_recipes = false;
};

// `--list-recipes`: name, bits W/A/KV and the description of every built-in recipe.
void print_recipes() {
  std::printf("%-14s | %-18s | %s\n", "recipe", "bits W/A/KV", "description");
  for (const Recipe& r : builtin_recipes()) {
    const RecipeBits b = recipe_bits(r);
    std::printf("%-14s | %-18s | %s\n", r.name.c_str(), strprintf("%g/%g/%g", b.weights, b.activations, b.kv).c_str(),
                r.description.c_str());
  }
  std::printf("(use one with --config NAME; a path to a recipe JSON file works too and wins when it exists)\n");
}

void run_quantize(const QuantizeCliOptions& o) {
  apply_runtime_options(o.common);
  if (o.list_recipes) {
    print_recipes();
    return;
  }
  for (const auto& [flag, value] : {std::pair<const char*, const std::string*>{"--model", &o.common.model},
                                    {"--out", &o.out}, {"--config", &o.config}}) {
    if (value->empty()) throw UsageError(std::string("resq quantize: ") + flag + " is required (or give --list-recipes)");
  }
  // Ctrl-C / SIGTERM unwind at the next layer or tensor, removing the temporary checkpoint (exit 130).
  install_interrupt_handlers();
  if (o.calib.empty() == o.calib_wikitext2.empty()) {
    throw UsageError("resq quantize: give exactly one of --calib FILE or --calib-wikitext2 RAW_FILE");
  }
  if (o.nsamples < 1) throw UsageError("--nsamples must be >= 1, got " + std::to_string(o.nsamples));
  if (o.seqlen < 2) throw UsageError("--seqlen must be >= 2, got " + std::to_string(o.seqlen));
  // The output is checked before the work (minutes to hours), not when it is written.
  check_output_dir_creatable(o.out, "--out");
  if (!o.report_html.empty()) check_output_file_writable(o.report_html, "--report");
  QuantizeOptions q;
  q.model_dir = o.common.model;
  q.out_dir = o.out;
  q.recipe = find_recipe(o.config, &q.recipe_path);
  q.calib_path = o.calib.empty() ? o.calib_wikitext2 : o.calib;
  q.calib_wikitext2 = !o.calib_wikitext2.empty();
  q.nsamples = o.nsamples;
  q.seqlen = o.seqlen;
  q.seed = o.common.seed;
  q.globals_dtype = o.globals_dtype;
  q.device = o.common.device;
  log::info(strprintf("quantize: %s with recipe '%s' (%s), %" PRId64 " x %" PRId64 " calibration tokens, seed %" PRIu64,
                      q.model_dir.c_str(), q.recipe.name.c_str(), o.config.c_str(), q.nsamples, q.seqlen, q.seed));
  const nlohmann::json report = quantize_model(q);
  const auto& st = report["stages"];
  std::printf("wrote %s (recipe %s: W%.2f A%.2f KV%.2f bits)\n", o.out.c_str(), q.recipe.name.c_str(),
              report["bits"]["weights"].get<double>(), report["bits"]["activations"].get<double>(),
              report["bits"]["kv"].get<double>());
  std::printf("stages: load+prepare %.2f s, calibration %.2f s, rotations %.2f s, weights %.2f s, write %.2f s; "
              "total %.2f s, peak RSS %.2f GiB\n",
              st["load_prepare_seconds"].get<double>(), st["calibration_seconds"].get<double>(),
              st["rotation_seconds"].get<double>(), st["weight_quantization_seconds"].get<double>(),
              st["write_seconds"].get<double>(), st["total_seconds"].get<double>(),
              report["peak_rss_gib"].get<double>());
  const auto& compute = report["compute"];
  std::printf("compute: %s, forward products %s%s\n", compute["device"].get<std::string>().c_str(),
              compute["products"].get<std::string>().c_str(),
              compute["peak_device_gib"].is_number()
                  ? strprintf(", peak device memory %.2f of %.1f GiB", compute["peak_device_gib"].get<double>(),
                              compute["device_total_gib"].get<double>()).c_str()
                  : "");
  const auto& ck = report["checkpoint"];
  if (ck["quantized_weights"].get<int64_t>() > 0) {
    std::printf("checkpoint: %.2f MiB on disk, %.2fx smaller than bf16; %lld packed weights: %.4f bits/weight on disk "
                "(integers + scales), budget %.4f bits/weight (recipe %.2f + per-channel scales)\n",
                ck["file_bytes"].get<double>() / (1 << 20), ck["compression_vs_bf16"].get<double>(),
                static_cast<long long>(ck["quantized_weights"].get<int64_t>()),
                ck["bits_per_quantized_weight"].get<double>(), ck["budget_bits_per_quantized_weight"].get<double>(),
                report["bits"]["weights"].get<double>());
  } else {
    std::printf("checkpoint: %.2f MiB on disk, no packed weights (weights kept in floating point)\n",
                ck["file_bytes"].get<double>() / (1 << 20));
  }
  if (report.contains("spectra") && report["spectra"].contains("U_A_captured_variance_top_r")) {
    std::printf("PCA: top-r variance captured: U_A %.4f, U_B %.4f (mean), U_C %.4f (mean)\n",
                report["spectra"]["U_A_captured_variance_top_r"].get<double>(),
                report["spectra"]["U_B_captured_variance_top_r_mean"].get<double>(),
                report["spectra"]["U_C_captured_variance_top_r_mean"].get<double>());
  }
  if (!o.common.json_out.empty()) write_json_file(o.common.json_out, report);
  if (!o.report_html.empty()) {
    ReportInputs in;
    in.quantize = report;
    in.source = "resq quantize --out " + o.out;
    write_report_html(o.report_html, in);
    std::printf("report: %s\n", o.report_html.c_str());
  }
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto o = std::make_shared<QuantizeCliOptions>();
  auto* cmd = app.add_subcommand("quantize", "quantize a model with a recipe into a packed 4/8-bit checkpoint");
  add_model_option(cmd, o->common, /*required=*/false);
  cmd->add_option("--out", o->out, "output directory (must not exist); required");
  cmd->add_option("--config", o->config,
                  "recipe: a built-in name (resq, quarot, ...; see --list-recipes) or a recipe JSON file; required");
  cmd->add_flag("--list-recipes", o->list_recipes, "print the built-in recipes (name, bits W/A/KV, description) and exit");
  cmd->add_option("--report", o->report_html, "also write a self-contained HTML report (spectra, GPTQ errors, bits)");
  cmd->add_option("--calib", o->calib, "calibration text file, read verbatim");
  cmd->add_option("--calib-wikitext2", o->calib_wikitext2, "calibration wiki.*.raw, rows re-joined as the HF dataset");
  cmd->add_option("--nsamples", o->nsamples, "calibration windows")->capture_default_str();
  cmd->add_option("--seqlen", o->seqlen, "calibration window length")->capture_default_str();
  cmd->add_option("--globals-dtype", o->globals_dtype,
                  "dtype of embeddings/lm_head: bfloat16, float16 or float32 (default: the source's 16-bit dtype, else float32)");
  add_seed_option(cmd, o->common, 0);
  // GPU where there is one: the same pipeline with one layer at a time on the device.
  add_device_option(cmd, o->common, "auto");
  cmd->add_option("--threads", o->common.threads, "threads (0 = all cores)");
  cmd->add_option("--log-level", o->common.log_level, "log level")->capture_default_str();
  add_json_option(cmd, o->common);
  cmd->footer("Example:\n  resq quantize --model models/Llama-3.2-1B --config resq --calib-wikitext2 wiki.train.raw "
              "--out llama-resq --json llama-resq.json --report llama-resq.html");
  cmd->callback([o] { run_quantize(*o); });
}

}  // namespace resq::tools
