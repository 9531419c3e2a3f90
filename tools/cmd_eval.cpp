// `resq eval`: WikiText-2 (or any text) perplexity of a model directory.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <optional>

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
  std::string data;
  std::string wikitext2;
  int64_t seqlen = 2048;
  int64_t max_windows = -1;
  int64_t batch = 0;
  bool no_bos = false;
  bool verify = false;  // hash every tensor of a packed checkpoint against its checksums first
  std::string mode;  // "" = packed for a packed checkpoint
};

void run_eval(const EvalOptions& o) {
  apply_runtime_options(o.common);
  if (o.data.empty() == o.wikitext2.empty()) {
    throw UsageError("resq eval: give exactly one of --data FILE or --wikitext2 RAW_FILE");
  }
  if (o.verify && !format::PackedCheckpoint::is_checkpoint_dir(o.common.model)) {
    throw UsageError("--verify: '" + o.common.model + "' is not a resq packed checkpoint (only those carry checksums)");
  }
  const auto t0 = std::chrono::steady_clock::now();
  const std::string text_path = o.data.empty() ? o.wikitext2 : o.data;
  std::string text = read_file(text_path, o.data.empty() ? "--wikitext2 text file" : "--data text file");
  if (!o.wikitext2.empty()) text = wikitext_join(text);

  auto tokenizer = load_tokenizer(o.common.model);
  const bool add_bos = tokenizer->adds_bos() && !o.no_bos;
  const auto ids = tokenize_for_eval(*tokenizer, text, add_bos);
  const double tokenize_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  log::info(strprintf("tokenized %s (%zu bytes) into %zu tokens with %s (%sBOS prepended) in %.2f s", text_path.c_str(),
                      text.size(), ids.size(), tokenizer->kind().c_str(), add_bos ? "" : "no ", tokenize_seconds));

  const std::optional<ExecutionMode> mode = parse_mode_option(o.mode);
  if (o.verify) {
    // One more read of the checkpoint before loading it: a flipped byte is refused naming the tensor.
    const auto tv = std::chrono::steady_clock::now();
    const int64_t n = format::PackedCheckpoint::open(o.common.model).verify_checksums();
    if (n == 0) throw FormatError("--verify: " + o.common.model + " is a format 1.0 checkpoint without checksums");
    log::info(strprintf("verified the checksums of %lld tensors in %.2f s", static_cast<long long>(n),
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - tv).count()));
  }
  RunModel model = load_run_model(o.common, mode);
  Decoder& decoder = model.decoder;
  const bool quantized = model.quantized;
  const std::string& mode_name = model.mode_name;
  if (quantized) {
    log::info("packed checkpoint, mode " + mode_name + " (linears: " + decoder.layers()[0].q->implementation() + ")");
  }
  const auto& c = decoder.config();
  log::info(strprintf("model %s: %" PRId64 " layers, hidden %" PRId64 ", %" PRId64 " heads / %" PRId64
                      " kv heads, vocab %" PRId64 ", %.2f M parameters, dtype %s",
                      o.common.model.c_str(), c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size,
                      c.parameter_count() / 1e6, o.common.dtype.c_str()));

  PerplexityOptions po;
  po.seqlen = o.seqlen;
  po.max_windows = o.max_windows;
  po.batch = o.batch;
  const PerplexityResult r = evaluate_perplexity(decoder, ids, po);

  std::printf("model: %s%s\n", o.common.model.c_str(),
              !quantized ? "" : mode_name == "packed" ? " (resq packed checkpoint, integer kernels)" : " (resq packed checkpoint, simulated arithmetic)");
  std::printf("data: %s%s\n", text_path.c_str(), o.wikitext2.empty() ? "" : " (WikiText-2 rows joined with \"\\n\\n\")");
  std::printf("protocol: %s BOS, seqlen %lld, %lld non-overlapping windows (tail dropped), %lld predictions, "
              "%lld tokens in text\n",
              add_bos ? "1" : "no", static_cast<long long>(r.seqlen), static_cast<long long>(r.num_windows),
              static_cast<long long>(r.num_predictions), static_cast<long long>(r.num_tokens));
  std::printf("ppl: %.4f ± %.4f (nll %.6f ± %.6f)\n", r.ppl, r.ppl_stderr, r.nll, r.nll_stderr);
  std::printf("time: %.2f s, %.0f tokens/s (%d threads, %s, %s)\n", r.seconds, r.tokens_per_second,
              at::get_num_threads(), o.common.device.c_str(), o.common.dtype.c_str());

  if (!o.common.json_out.empty()) {
    nlohmann::json j = perplexity_to_json(r);
    j["model"] = o.common.model;
    j["data"] = text_path;
    j["data_fnv1a"] = fnv1a_hex(text);
    j["wikitext2_join"] = !o.wikitext2.empty();
    j["bos"] = add_bos;
    j["dtype"] = o.common.dtype;
    j["device"] = o.common.device;
    j["threads"] = at::get_num_threads();
    j["tokenizer"] = tokenizer->kind();
    j["mode"] = mode_name;
    write_json_file(o.common.json_out, j);
  }
}

}  // namespace

void register_eval(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  auto* cmd = app.add_subcommand("eval", "perplexity of a model on a text (GPTQ/QuaRot/ResQ protocol)");
  add_model_option(cmd, o->common);
  cmd->add_option("--data", o->data, "text file, read verbatim");
  cmd->add_option("--wikitext2", o->wikitext2, "canonical wiki.test.raw: rows re-joined as the HF dataset text");
  cmd->add_option("--seqlen", o->seqlen, "window length in tokens")->capture_default_str();
  cmd->add_option("--max-windows", o->max_windows, "evaluate only the first K windows (default: all)");
  cmd->add_option("--batch", o->batch, "windows per forward pass (0 = automatic)")->capture_default_str();
  cmd->add_option("--mode", o->mode, "packed checkpoints: packed (integer kernels, default) or simulate (fake quantization)");
  cmd->add_flag("--no-bos", o->no_bos, "do not prepend BOS even if the tokenizer config asks for it");
  cmd->add_flag("--verify", o->verify, "packed checkpoints: verify every tensor's checksum before evaluating");
  add_runtime_options(cmd, o->common);
  add_json_option(cmd, o->common);
  cmd->callback([o] { run_eval(*o); });
}

}  // namespace resq::tools
