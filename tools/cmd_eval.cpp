// `resq eval`: WikiText-2 (or any text) perplexity of a model directory.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <optional>
#include <vector>

#include "common.h"
#include "run_model.h"
#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/log.h"
#include "resq/eval/perplexity.h"
#include "resq/format/checkpoint.h"
#include "resq/model/decoder.h"
#include "resq/runtime/packed_model.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"

namespace resq::tools {
namespace {

struct EvalOptions {
  CommonOptions common;
  std::vector<std::string> models;  // --model, repeatable: one table row each
  std::string kl_base;              // --kl-base FP_MODEL_DIR
  std::string data;
  std::string wikitext2;
  int64_t seqlen = 2048;
  int64_t max_windows = -1;
  int64_t batch = 0;
  bool no_bos = false;
  bool weights_only = false;
  bool verify = false;  // hash every tensor of a packed checkpoint against its checksums first
  std::string mode;  // "" = packed for a packed checkpoint
};

// The text tokenized by `dir`'s tokenizer.
std::vector<int32_t> tokenize_with(const std::string& dir, const std::string& text, bool no_bos, bool* add_bos,
                                   std::string* kind) {
  auto tokenizer = load_tokenizer(dir);
  *add_bos = tokenizer->adds_bos() && !no_bos;
  *kind = tokenizer->kind();
  return tokenize_for_eval(*tokenizer, text, *add_bos);
}

// One row of the table: a model evaluated (and compared with the reference when --kl-base is given).
struct EvalRow {
  std::string model;
  std::string mode;
  PerplexityResult ppl;
  std::optional<ComparisonResult> cmp;
};

void print_single(const EvalOptions& o, const std::string& text_path, bool add_bos, const EvalRow& row, bool quantized) {
  const PerplexityResult& r = row.ppl;
  std::printf("model: %s%s\n", row.model.c_str(),
              !quantized ? "" : row.mode == "packed" ? " (resq packed checkpoint, integer kernels)" : " (resq packed checkpoint, simulated arithmetic)");
  std::printf("data: %s%s\n", text_path.c_str(), o.wikitext2.empty() ? "" : " (WikiText-2 rows joined with \"\\n\\n\")");
  std::printf("protocol: %s BOS, seqlen %lld, %lld non-overlapping windows (tail dropped), %lld predictions, "
              "%lld tokens in text\n",
              add_bos ? "1" : "no", static_cast<long long>(r.seqlen), static_cast<long long>(r.num_windows),
              static_cast<long long>(r.num_predictions), static_cast<long long>(r.num_tokens));
  std::printf("ppl: %.4f ± %.4f (nll %.6f ± %.6f)\n", r.ppl, r.ppl_stderr, r.nll, r.nll_stderr);
  std::printf("time: %.2f s, %.0f tokens/s (%d threads, %s, %s)\n", r.seconds, r.tokens_per_second,
              at::get_num_threads(), o.common.device.c_str(), o.common.dtype.c_str());
}

// `text` left-aligned in `width` columns, counting UTF-8 characters (± and Δ are two bytes each).
std::string pad(const std::string& text, size_t width) {
  size_t chars = 0;
  for (unsigned char ch : text) chars += (ch & 0xC0) != 0x80;
  return text + std::string(width > chars ? width - chars : 0, ' ');
}

void print_table(const EvalOptions& o, const std::string& text_path, bool add_bos, const std::vector<EvalRow>& rows) {
  const PerplexityResult& first = rows.front().ppl;
  std::printf("data: %s%s\n", text_path.c_str(), o.wikitext2.empty() ? "" : " (WikiText-2 rows joined with \"\\n\\n\")");
  std::printf("protocol: %s BOS, seqlen %lld, %lld non-overlapping windows (tail dropped), the same windows for every model\n",
              add_bos ? "1" : "no", static_cast<long long>(first.seqlen), static_cast<long long>(first.num_windows));
  size_t name_width = 5;
  for (const EvalRow& row : rows) name_width = std::max(name_width, row.model.size());
  const bool kl = !o.kl_base.empty();
  if (kl) {
    const PerplexityResult& ref = rows.front().cmp->reference;
    std::printf("reference: %s (fp), ppl %.4f ± %.4f; KL(reference || model) in nats per position\n",
                o.kl_base.c_str(), ref.ppl, ref.ppl_stderr);
  }
  std::string header = pad("model", name_width) + " | " + pad("mode", 16) + " | " + pad("ppl", 20);
  if (kl) header += " | " + pad("Δppl", 9) + " | " + pad("KL", 22) + " | top-1 agree";
  std::printf("%s\n", header.c_str());
  for (const EvalRow& row : rows) {
    std::string line = pad(row.model, name_width) + " | " + pad(row.mode, 16) + " | " +
                       pad(strprintf("%.4f ± %.4f", row.ppl.ppl, row.ppl.ppl_stderr), 20);
    if (row.cmp) {
      const ComparisonResult& c = *row.cmp;
      line += " | " + pad(strprintf("%+.4f", row.ppl.ppl - c.reference.ppl), 9) + " | " +
              pad(strprintf("%.6f ± %.6f", c.kl_mean, c.kl_stderr), 22) + " | " + strprintf("%.4f", c.top1_agreement);
    }
    std::printf("%s\n", line.c_str());
  }
}

void run_eval(const EvalOptions& o) {
  apply_runtime_options(o.common);
  if (o.data.empty() == o.wikitext2.empty()) {
    throw UsageError("resq eval: give exactly one of --data FILE or --wikitext2 RAW_FILE");
  }
  if (o.models.empty()) throw UsageError("resq eval: --model is required");
  for (const std::string& dir : o.models) {
    if (o.verify && !format::PackedCheckpoint::is_checkpoint_dir(dir)) {
      throw UsageError("--verify: '" + dir + "' is not a resq packed checkpoint (only those carry checksums)");
    }
  }
  if (o.weights_only && o.mode != "simulate") {
    throw UsageError("--weights-only: applies to --mode simulate (dequantized weights, activations and KV cache unquantized)");
  }
  std::optional<ExecutionMode> mode = parse_mode_option(o.mode);
  if (o.weights_only) mode = ExecutionMode::kSimulateWeights;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string text_path = o.data.empty() ? o.wikitext2 : o.data;
  std::string text = read_file(text_path, o.data.empty() ? "--wikitext2 text file" : "--data text file");
  if (!o.wikitext2.empty()) text = wikitext_join(text);

  // Every model (and the reference) must see the same token ids: the same windows.
  const std::string& first_dir = o.kl_base.empty() ? o.models.front() : o.kl_base;
  bool add_bos = false;
  std::string tokenizer_kind;
  const auto ids = tokenize_with(first_dir, text, o.no_bos, &add_bos, &tokenizer_kind);
  for (const std::string& dir : o.models) {
    if (dir == first_dir) continue;
    bool bos = false;
    std::string kind;
    if (tokenize_with(dir, text, o.no_bos, &bos, &kind) != ids) {
      throw UsageError("--model " + dir + ": its tokenizer gives other token ids than " + first_dir +
                       "'s; models compared in one run must share a tokenizer");
    }
  }
  const double tokenize_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  log::info(strprintf("tokenized %s (%zu bytes) into %zu tokens with %s (%sBOS prepended) in %.2f s", text_path.c_str(),
                      text.size(), ids.size(), tokenizer_kind.c_str(), add_bos ? "" : "no ", tokenize_seconds));

  PerplexityOptions po;
  po.seqlen = o.seqlen;
  po.max_windows = o.max_windows;
  po.batch = o.batch;

  std::optional<RunModel> reference;
  if (!o.kl_base.empty()) {
    if (is_quantized_model_dir(o.kl_base)) {
      throw UsageError("--kl-base " + o.kl_base + ": expected the floating-point model directory, got a resq packed checkpoint");
    }
    CommonOptions ref = o.common;
    ref.model = o.kl_base;
    reference.emplace(load_run_model(ref, std::nullopt));
  }
  std::vector<EvalRow> rows;
  bool any_quantized = false;
  for (const std::string& dir : o.models) {
    CommonOptions one = o.common;
    one.model = dir;
    if (o.verify) {
      // One more read of the checkpoint before loading it: a flipped byte is refused naming the tensor.
      const auto tv = std::chrono::steady_clock::now();
      const int64_t n = format::PackedCheckpoint::open(dir).verify_checksums();
      if (n == 0) throw FormatError("--verify: " + dir + " is a format 1.0 checkpoint without checksums");
      log::info(strprintf("%s: verified the checksums of %lld tensors in %.2f s", dir.c_str(), static_cast<long long>(n),
                          std::chrono::duration<double>(std::chrono::steady_clock::now() - tv).count()));
    }
    // One model in memory at a time (besides the reference): the others are loaded in turn.
    RunModel model = load_run_model(one, mode);
    any_quantized = any_quantized || model.quantized;
    const auto& c = model.decoder.config();
    log::info(strprintf("model %s (%s): %" PRId64 " layers, hidden %" PRId64 ", %" PRId64 " heads / %" PRId64
                        " kv heads, vocab %" PRId64 ", %.2f M parameters, dtype %s",
                        dir.c_str(), model.mode_name.c_str(), c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads,
                        c.vocab_size, c.parameter_count() / 1e6, o.common.dtype.c_str()));
    EvalRow row{dir, model.mode_name, {}, std::nullopt};
    if (reference) {
      row.cmp = compare_to_reference(reference->decoder, model.decoder, ids, po);
      row.ppl = row.cmp->candidate;
    } else {
      row.ppl = evaluate_perplexity(model.decoder, ids, po);
    }
    rows.push_back(std::move(row));
  }

  if (rows.size() == 1 && !reference) {
    print_single(o, text_path, add_bos, rows.front(), any_quantized);
  } else {
    print_table(o, text_path, add_bos, rows);
  }

  if (!o.common.json_out.empty()) {
    // The first model's figures at the top level (the single-model report), every row under "models".
    nlohmann::json j = perplexity_to_json(rows.front().ppl);
    j["model"] = rows.front().model;
    j["mode"] = rows.front().mode;
    j["data"] = text_path;
    j["data_fnv1a"] = fnv1a_hex(text);
    j["wikitext2_join"] = !o.wikitext2.empty();
    j["bos"] = add_bos;
    j["dtype"] = o.common.dtype;
    j["device"] = o.common.device;
    j["threads"] = at::get_num_threads();
    j["tokenizer"] = tokenizer_kind;
    if (reference) j["kl_base"] = o.kl_base;
    if (rows.size() > 1 || reference) {
      nlohmann::json models = nlohmann::json::array();
      for (const EvalRow& row : rows) {
        nlohmann::json m = perplexity_to_json(row.ppl);
        m["model"] = row.model;
        m["mode"] = row.mode;
        if (row.cmp) m["comparison"] = comparison_to_json(*row.cmp);
        models.push_back(std::move(m));
      }
      j["models"] = std::move(models);
    }
    write_json_file(o.common.json_out, j);
  }
}

}  // namespace

void register_eval(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  auto* cmd = app.add_subcommand("eval", "perplexity of a model on a text (GPTQ/QuaRot/ResQ protocol)");
  cmd->add_option("--model,-m", o->models,
                  "model directory (HF or resq packed checkpoint); repeat it to compare several on the same windows")
      ->required()
      ->take_all();
  cmd->add_option("--kl-base", o->kl_base,
                  "floating-point model directory: also report KL(fp || model), top-1 agreement and Δppl per model");
  cmd->add_option("--data", o->data, "text file, read verbatim");
  cmd->add_option("--wikitext2", o->wikitext2, "canonical wiki.test.raw: rows re-joined as the HF dataset text");
  cmd->add_option("--seqlen", o->seqlen, "window length in tokens")->capture_default_str();
  cmd->add_option("--max-windows", o->max_windows, "evaluate only the first K windows (default: all)");
  cmd->add_option("--batch", o->batch, "windows per forward pass (0 = automatic)")->capture_default_str();
  cmd->add_option("--mode", o->mode, "packed checkpoints: packed (integer kernels, default) or simulate (fake quantization)");
  cmd->add_flag("--weights-only", o->weights_only,
                "with --mode simulate: dequantized weights only, activations and KV cache unquantized");
  cmd->add_flag("--no-bos", o->no_bos, "do not prepend BOS even if the tokenizer config asks for it");
  cmd->add_flag("--verify", o->verify, "packed checkpoints: verify every tensor's checksum before evaluating");
  add_runtime_options(cmd, o->common);
  add_json_option(cmd, o->common);
  cmd->footer("Example:\n  resq eval --model llama-resq --model llama-quarot --kl-base models/Llama-3.2-1B --wikitext2 wiki.test.raw --json eval.json");
  cmd->callback([o] { run_eval(*o); });
}

}  // namespace resq::tools
