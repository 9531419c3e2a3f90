// `resq generate`: text generation from a prompt with an incremental KV cache (packed 4/8-bit rows
// on a packed checkpoint's integer runtime), greedy or seeded temperature / top-k sampling, with
// prefill and decode throughput and the KV cache's size.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cinttypes>
#include <cstdio>
#include <memory>
#include <optional>

#include "common.h"
#include "run_model.h"
#include "resq/common/error.h"
#include "resq/common/log.h"
#include "resq/model/decoder.h"
#include "resq/runtime/generate.h"
#include "resq/runtime/packed_model.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"

namespace resq::tools {
namespace {

struct GenerateCliOptions {
  CommonOptions common;
  std::string prompt;
  std::string mode;  // "" = packed for a packed checkpoint
  int64_t max_new_tokens = 64;
  double temperature = 0.0;
  int64_t top_k = 0;
  bool no_bos = false;
};

std::vector<int32_t> to_int32(const std::vector<int64_t>& ids) { return std::vector<int32_t>(ids.begin(), ids.end()); }

// Byte-level tokens can stop inside a UTF-8 sequence; JSON strings must be valid UTF-8 (U+FFFD there).
std::string utf8_safe(const std::string& s) {
  return nlohmann::json::parse(nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)).get<std::string>();
}

void run_generate(const GenerateCliOptions& o) {
  apply_runtime_options(o.common);
  if (o.prompt.empty()) throw UsageError("resq generate: --prompt is empty");
  if (o.max_new_tokens < 1) throw UsageError("--max-new-tokens must be >= 1, got " + std::to_string(o.max_new_tokens));
  const std::optional<ExecutionMode> mode = parse_mode_option(o.mode);
  GenerateOptions g;
  g.max_new_tokens = o.max_new_tokens;
  g.sampling.temperature = o.temperature;
  g.sampling.top_k = o.top_k;
  g.sampling.seed = o.common.seed;
  TokenSampler check_sampling(g.sampling);  // rejects bad --temperature / --top-k before loading anything

  auto tokenizer = load_tokenizer(o.common.model);
  const bool add_bos = tokenizer->adds_bos() && !o.no_bos;
  const std::vector<int32_t> text_ids = tokenizer->encode(o.prompt);
  const std::vector<int32_t> ids32 = tokenize_for_eval(*tokenizer, o.prompt, add_bos);
  const std::vector<int64_t> prompt(ids32.begin(), ids32.end());

  RunModel model = load_run_model(o.common, mode);
  Decoder& decoder = model.decoder;
  const bool quantized = model.quantized;
  const std::string& mode_name = model.mode_name;
  const ModelConfig& c = decoder.config();
  g.eos_id = c.eos_token_id;
  const std::string linears = quantized ? ", linears " + decoder.layers()[0].q->implementation() : "";
  log::info(strprintf("model %s (%s%s): %" PRId64 " layers, %" PRId64 " heads / %" PRId64 " kv heads, head_dim %" PRId64
                      ", max %" PRId64 " positions; prompt: %zu tokens (%sBOS)",
                      o.common.model.c_str(), mode_name.c_str(), linears.c_str(), c.num_layers, c.num_heads,
                      c.num_kv_heads, c.head_dim, c.max_position_embeddings, prompt.size(), add_bos ? "" : "no "));
  log::info("sampling: " + (o.temperature == 0.0 ? std::string("greedy")
                                                 : "temperature " + std::to_string(o.temperature) + ", top-k " +
                                                       std::to_string(o.top_k) + ", seed " + std::to_string(o.common.seed)));

  const GenerateResult r = generate(decoder, prompt, g);

  // Decode the prompt and the new tokens together (SentencePiece drops a sequence's leading space,
  // so the continuation alone would lose the space between them); EOS is not text.
  std::vector<int64_t> generated = r.tokens;
  if (r.stopped_at_eos) generated.pop_back();
  std::vector<int32_t> all = text_ids;
  for (int64_t t : generated) all.push_back(static_cast<int32_t>(t));
  const std::string text = tokenizer->decode(all);
  const std::string prompt_text = tokenizer->decode(text_ids);
  const std::string completion =
      text.compare(0, prompt_text.size(), prompt_text) == 0 ? text.substr(prompt_text.size()) : tokenizer->decode(to_int32(generated));

  const KvCacheBytes& kv = r.cache;
  const bool packed_kv = kv.packed_layers == kv.layers && kv.layers > 0;
  std::printf("%s\n", text.c_str());
  std::printf("prefill: %lld tokens in %.4f s (%.1f tokens/s)\n", static_cast<long long>(r.prompt_tokens), r.prefill_seconds,
              r.prefill_tokens_per_second());
  std::printf("decode: %lld tokens in %.4f s (%.1f tokens/s, one token per step)%s\n", static_cast<long long>(r.decode_steps),
              r.decode_seconds, r.decode_tokens_per_second(), r.stopped_at_eos ? ", stopped at EOS" : "");
  char ratio[64] = "";
  if (packed_kv && kv.stored > 0) {
    std::snprintf(ratio, sizeof ratio, "; %.2fx smaller than fp32", static_cast<double>(kv.fp32) / static_cast<double>(kv.stored));
  }
  std::printf("kv cache: %lld bytes %s for %lld positions (fp32 would take %lld bytes, bf16 %lld%s; %s cache)\n",
              static_cast<long long>(kv.stored), packed_kv ? "packed 4/8-bit" : o.common.dtype.c_str(),
              static_cast<long long>(r.prompt_tokens + r.decode_steps), static_cast<long long>(kv.fp32),
              static_cast<long long>(kv.bf16), ratio, r.cache_kind.c_str());
  std::printf("(%d threads, %s, %s, mode %s)\n", at::get_num_threads(), o.common.device.c_str(), o.common.dtype.c_str(),
              mode_name.c_str());

  if (!o.common.json_out.empty()) {
    nlohmann::json j;
    j["model"] = o.common.model;
    j["mode"] = mode_name;
    j["prompt"] = utf8_safe(o.prompt);
    j["bos"] = add_bos;
    j["prompt_ids"] = prompt;
    j["generated_ids"] = r.tokens;
    j["completion"] = utf8_safe(completion);
    j["text"] = utf8_safe(text);
    j["stopped_at_eos"] = r.stopped_at_eos;
    j["sampling"] = {{"temperature", o.temperature}, {"top_k", o.top_k}, {"seed", o.common.seed}};
    j["prefill_tokens"] = r.prompt_tokens;
    j["prefill_seconds"] = r.prefill_seconds;
    j["prefill_tokens_per_second"] = r.prefill_tokens_per_second();
    j["decode_tokens"] = r.decode_steps;
    j["decode_seconds"] = r.decode_seconds;
    j["decode_tokens_per_second"] = r.decode_tokens_per_second();
    j["kv_cache"] = {{"bytes", kv.stored}, {"fp32_bytes", kv.fp32}, {"bf16_bytes", kv.bf16},
                     {"packed", packed_kv}, {"positions", r.prompt_tokens + r.decode_steps},
                     {"kind", r.cache_kind}};
    j["dtype"] = o.common.dtype;
    j["device"] = o.common.device;
    j["threads"] = at::get_num_threads();
    write_json_file(o.common.json_out, j);
  }
}

}  // namespace

void register_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateCliOptions>();
  auto* cmd = app.add_subcommand("generate", "generate text from a prompt (incremental decoding, quantized KV cache)");
  add_model_option(cmd, o->common);
  cmd->add_option("--prompt", o->prompt, "prompt text (tokenized like resq eval: BOS when the tokenizer adds it)")->required();
  cmd->add_option("--mode", o->mode, "packed checkpoints: packed (integer kernels, packed KV cache; default) or simulate");
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate (fewer at EOS)")->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "0 = greedy; > 0 samples softmax(logits / T)")->capture_default_str();
  cmd->add_option("--top-k", o->top_k, "sample among the k most likely tokens (0 = all)")->capture_default_str();
  cmd->add_flag("--no-bos", o->no_bos, "do not prepend BOS even if the tokenizer config asks for it");
  add_seed_option(cmd, o->common, 0);
  add_runtime_options(cmd, o->common);
  add_json_option(cmd, o->common);
  cmd->footer("Example:\n  resq generate --model llama-resq --prompt \"Once upon a time\" --max-new-tokens 64");
  cmd->callback([o] { run_generate(*o); });
}

}  // namespace resq::tools
