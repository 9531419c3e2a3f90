// Windowed perplexity evaluation and the comparison of a model with a reference on the same windows.
#include "resq/eval/perplexity.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <nlohmann/json.hpp>
#include <tuple>
#include <utility>

#include "resq/common/error.h"
#include "resq/common/log.h"
#include "resq/eval/divergence.h"
#include "resq/model/decoder.h"

namespace resq {

namespace {

// Windows per forward pass: attention is chunked inside the decoder, so the largest intermediates
// are the logits [B, T, V] (float32, and their log-softmax). Keeping them under ~16 MiB lets glibc
// serve them from the heap instead of fresh mmap()s whose page faults otherwise dominate.
int64_t choose_batch(const ModelConfig& c, int64_t seqlen) {
  const double logits = 4.0 * static_cast<double>(seqlen) * std::max(c.vocab_size, c.intermediate_size);
  const double budget = 16.0 * 1024 * 1024;
  return std::max<int64_t>(1, std::min<int64_t>(8, static_cast<int64_t>(budget / logits)));
}

// The windows of a text: count (tail dropped, capped by max_windows) and the batch size.
struct Windows {
  int64_t count = 0;
  int64_t batch = 0;
};

Windows plan_windows(const ModelConfig& c, const std::vector<int32_t>& ids, const PerplexityOptions& options) {
  const int64_t seqlen = options.seqlen;
  if (seqlen < 2) throw UsageError("--seqlen must be >= 2, got " + std::to_string(seqlen));
  int64_t windows = static_cast<int64_t>(ids.size()) / seqlen;
  if (windows == 0) {
    throw UsageError("the text has " + std::to_string(ids.size()) + " tokens, fewer than one window of --seqlen " +
                     std::to_string(seqlen));
  }
  if (options.max_windows >= 0) windows = std::min(windows, options.max_windows);
  if (windows == 0) throw UsageError("--max-windows must be >= 1");
  return {windows, options.batch > 0 ? options.batch : choose_batch(c, seqlen)};
}

// ids_batch [nb, seqlen] (int64) of windows w0 .. w0 + nb - 1.
at::Tensor window_ids(const std::vector<int32_t>& ids, int64_t w0, int64_t nb, int64_t seqlen) {
  at::Tensor ids_batch = at::empty({nb, seqlen}, at::TensorOptions().dtype(at::kLong));
  int64_t* dst = ids_batch.data_ptr<int64_t>();
  for (int64_t i = 0; i < nb * seqlen; ++i) dst[i] = ids[w0 * seqlen + i];
  return ids_batch;
}

// Appends each window's mean NLL of its seqlen - 1 next-token predictions: logits [nb, T, V].
void append_window_nll(const at::Tensor& logits, const at::Tensor& ids_batch, std::vector<double>* out) {
  const int64_t seqlen = ids_batch.size(1);
  const auto stat_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor logp = at::log_softmax(logits.narrow(1, 0, seqlen - 1).to(stat_type), -1);  // [nb, T-1, V]
  at::Tensor targets = ids_batch.narrow(1, 1, seqlen - 1).to(logp.device()).unsqueeze(-1);
  at::Tensor nll = -logp.gather(-1, targets).squeeze(-1);  // [nb, T-1]
  at::Tensor window_nll = nll.to(at::kDouble).mean(1).cpu();
  for (int64_t b = 0; b < window_nll.size(0); ++b) {
    const double v = window_nll[b].item<double>();
    // A NaN or infinite loss makes every figure after it meaningless ("ppl: -nan"): stop here.
    if (!std::isfinite(v)) {
      const int64_t w = static_cast<int64_t>(out->size());
      throw NumericError(strprintf("eval: window %" PRId64 " (tokens %" PRId64 "..%" PRId64 ") has a non-finite loss (%f): "
                                   "the model produced NaN or infinite logits (non-finite weights, or an overflow in "
                                   "this dtype); no perplexity can be reported",
                                   w, w * seqlen, (w + 1) * seqlen - 1, v));
    }
    out->push_back(v);
  }
}

// Mean and its standard error (std with ddof=1 over sqrt(n); 0 for one value).
std::pair<double, double> mean_stderr(const std::vector<double>& v) {
  const double n = static_cast<double>(v.size());
  double sum = 0.0;
  for (double x : v) sum += x;
  const double mean = sum / n;
  double ss = 0.0;
  for (double x : v) ss += (x - mean) * (x - mean);
  return {mean, v.size() > 1 ? std::sqrt(ss / (n - 1)) / std::sqrt(n) : 0.0};
}

// The summary of a result whose window_nll is filled.
void finish_perplexity(PerplexityResult* r, double seconds) {
  const auto [nll, nll_stderr] = mean_stderr(r->window_nll);
  r->seconds = seconds;
  r->nll = nll;
  r->nll_stderr = nll_stderr;
  r->ppl = std::exp(r->nll);
  r->ppl_stderr = r->ppl * r->nll_stderr;
  r->tokens_per_second = r->num_windows * r->seqlen / std::max(r->seconds, 1e-9);
}

PerplexityResult empty_result(const std::vector<int32_t>& ids, int64_t seqlen, int64_t windows) {
  PerplexityResult r;
  r.seqlen = seqlen;
  r.num_windows = windows;
  r.num_tokens = static_cast<int64_t>(ids.size());
  r.num_predictions = windows * (seqlen - 1);
  r.window_nll.reserve(windows);
  return r;
}

// Progress line every ~2 s and at the end; `what` names the run, `extra` the running figures.
class Progress {
 public:
  Progress(bool enabled, int64_t windows, int64_t seqlen)
      : enabled_(enabled), windows_(windows), seqlen_(seqlen), start_(std::chrono::steady_clock::now()), last_(start_) {}
  void report(int64_t done, const std::string& extra) {
    const auto now = std::chrono::steady_clock::now();
    if (!enabled_ || (std::chrono::duration<double>(now - last_).count() <= 2.0 && done != windows_)) return;
    last_ = now;
    const double tps = done * seqlen_ / std::max(seconds(), 1e-9);
    const double eta = (windows_ - done) * seqlen_ / std::max(tps, 1e-9);
    log::info(strprintf("eval: window %" PRId64 "/%" PRId64 " | %.0f tok/s | %s | ETA %.0f s", done, windows_, tps,
                        extra.c_str(), eta));
  }
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  bool enabled_;
  int64_t windows_, seqlen_;
  std::chrono::steady_clock::time_point start_, last_;
};

double running_ppl(const std::vector<double>& window_nll) { return std::exp(mean_stderr(window_nll).first); }

}  // namespace

PerplexityResult evaluate_perplexity(Decoder& decoder, const std::vector<int32_t>& ids,
                                     const PerplexityOptions& options) {
  const Windows w = plan_windows(decoder.config(), ids, options);
  PerplexityResult r = empty_result(ids, options.seqlen, w.count);
  c10::NoGradGuard no_grad;
  Progress progress(options.progress, w.count, options.seqlen);
  for (int64_t w0 = 0; w0 < w.count; w0 += w.batch) {
    const int64_t nb = std::min(w.batch, w.count - w0);
    const at::Tensor ids_batch = window_ids(ids, w0, nb, options.seqlen);
    append_window_nll(decoder.forward(ids_batch), ids_batch, &r.window_nll);  // logits [nb, T, V]
    progress.report(w0 + nb, strprintf("running ppl %.4f", running_ppl(r.window_nll)));
  }
  finish_perplexity(&r, progress.seconds());
  return r;
}

std::vector<WindowDivergence> window_divergence(const at::Tensor& reference, const at::Tensor& candidate) {
  if (reference.dim() != 3 || reference.sizes() != candidate.sizes()) {
    throw ShapeError("window_divergence: logits must both be [B, T, V], got " + std::string(c10::str(reference.sizes())) +
                     " and " + std::string(c10::str(candidate.sizes())));
  }
  at::Tensor lp = at::log_softmax(reference.to(at::kDouble), -1);  // [B, T, V]
  at::Tensor lq = at::log_softmax(candidate.to(at::kDouble), -1);
  at::Tensor kl = (lp.exp() * (lp - lq)).sum(-1).mean(1).cpu();                            // [B]
  at::Tensor agree = lp.argmax(-1).eq(lq.argmax(-1)).to(at::kDouble).mean(1).cpu();      // [B]
  std::vector<WindowDivergence> out(static_cast<size_t>(reference.size(0)));
  for (int64_t b = 0; b < reference.size(0); ++b) out[b] = {kl[b].item<double>(), agree[b].item<double>()};
  return out;
}

ComparisonResult compare_to_reference(Decoder& reference, Decoder& candidate, const std::vector<int32_t>& ids,
                                      const PerplexityOptions& options) {
  if (reference.config().vocab_size != candidate.config().vocab_size) {
    throw UsageError("--kl-base: the reference has a vocabulary of " + std::to_string(reference.config().vocab_size) +
                     " tokens, the model " + std::to_string(candidate.config().vocab_size) + "; both must share a tokenizer");
  }
  const Windows w = plan_windows(candidate.config(), ids, options);
  ComparisonResult r;
  r.reference = empty_result(ids, options.seqlen, w.count);
  r.candidate = empty_result(ids, options.seqlen, w.count);
  r.num_positions = w.count * options.seqlen;
  c10::NoGradGuard no_grad;
  Progress progress(options.progress, w.count, options.seqlen);
  for (int64_t w0 = 0; w0 < w.count; w0 += w.batch) {
    const int64_t nb = std::min(w.batch, w.count - w0);
    const at::Tensor ids_batch = window_ids(ids, w0, nb, options.seqlen);
    const at::Tensor ref_logits = reference.forward(ids_batch);  // [nb, T, V]
    const at::Tensor cand_logits = candidate.forward(ids_batch);
    append_window_nll(ref_logits, ids_batch, &r.reference.window_nll);
    append_window_nll(cand_logits, ids_batch, &r.candidate.window_nll);
    for (const WindowDivergence& d : window_divergence(ref_logits, cand_logits)) {
      if (!std::isfinite(d.kl)) {
        throw NumericError("eval: window " + std::to_string(r.window_kl.size()) +
                           " gives a non-finite KL divergence (NaN or infinite logits)");
      }
      r.window_kl.push_back(d.kl);
      r.window_top1.push_back(d.top1);
    }
    progress.report(w0 + nb, strprintf("running ppl %.4f (reference %.4f), KL %.5f", running_ppl(r.candidate.window_nll),
                                       running_ppl(r.reference.window_nll), mean_stderr(r.window_kl).first));
  }
  const double seconds = progress.seconds();
  finish_perplexity(&r.reference, seconds);
  finish_perplexity(&r.candidate, seconds);
  std::tie(r.kl_mean, r.kl_stderr) = mean_stderr(r.window_kl);
  std::tie(r.top1_agreement, r.top1_stderr) = mean_stderr(r.window_top1);
  return r;
}

nlohmann::json comparison_to_json(const ComparisonResult& r) {
  return {{"kl", r.kl_mean},
          {"kl_stderr", r.kl_stderr},
          {"top1_agreement", r.top1_agreement},
          {"top1_agreement_stderr", r.top1_stderr},
          {"num_positions", r.num_positions},
          {"reference_ppl", r.reference.ppl},
          {"delta_ppl", r.candidate.ppl - r.reference.ppl},
          {"reference", perplexity_to_json(r.reference)},
          {"window_kl", r.window_kl},
          {"window_top1_agreement", r.window_top1}};
}

nlohmann::json perplexity_to_json(const PerplexityResult& r) {
  return {{"ppl", r.ppl},
          {"nll", r.nll},
          {"nll_stderr", r.nll_stderr},
          {"ppl_stderr", r.ppl_stderr},
          {"num_windows", r.num_windows},
          {"num_tokens", r.num_tokens},
          {"num_predictions", r.num_predictions},
          {"seqlen", r.seqlen},
          {"seconds", r.seconds},
          {"tokens_per_second", r.tokens_per_second},
          {"window_nll", r.window_nll}};
}

}  // namespace resq
