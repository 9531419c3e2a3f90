// Windowed perplexity evaluation with progress reporting.
#include "resq/eval/perplexity.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <nlohmann/json.hpp>

#include "resq/common/error.h"
#include "resq/common/log.h"
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

}  // namespace

PerplexityResult evaluate_perplexity(Decoder& decoder, const std::vector<int32_t>& ids,
                                     const PerplexityOptions& options) {
  const int64_t seqlen = options.seqlen;
  if (seqlen < 2) throw UsageError("--seqlen must be >= 2, got " + std::to_string(seqlen));
  int64_t windows = static_cast<int64_t>(ids.size()) / seqlen;
  if (windows == 0) {
    throw UsageError("the text has " + std::to_string(ids.size()) + " tokens, fewer than one window of --seqlen " +
                     std::to_string(seqlen));
  }
  if (options.max_windows >= 0) windows = std::min(windows, options.max_windows);
  if (windows == 0) throw UsageError("--max-windows must be >= 1");
  const int64_t batch = options.batch > 0 ? options.batch : choose_batch(decoder.config(), seqlen);

  PerplexityResult r;
  r.seqlen = seqlen;
  r.num_windows = windows;
  r.num_tokens = static_cast<int64_t>(ids.size());
  r.num_predictions = windows * (seqlen - 1);
  r.window_nll.reserve(windows);

  c10::NoGradGuard no_grad;
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    const int64_t nb = std::min(batch, windows - w0);
    // ids_batch [nb, seqlen]
    at::Tensor ids_batch = at::empty({nb, seqlen}, at::TensorOptions().dtype(at::kLong));
    int64_t* dst = ids_batch.data_ptr<int64_t>();
    for (int64_t i = 0; i < nb * seqlen; ++i) dst[i] = ids[w0 * seqlen + i];
    at::Tensor logits = decoder.forward(ids_batch);  // [nb, T, V]
    const auto stat_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor logp = at::log_softmax(logits.narrow(1, 0, seqlen - 1).to(stat_type), -1);  // [nb, T-1, V]
    at::Tensor targets = ids_batch.narrow(1, 1, seqlen - 1).to(logp.device()).unsqueeze(-1);
    at::Tensor nll = -logp.gather(-1, targets).squeeze(-1);  // [nb, T-1]
    at::Tensor window_nll = nll.to(at::kDouble).mean(1).cpu();
    for (int64_t b = 0; b < nb; ++b) {
      const double v = window_nll[b].item<double>();
      // A NaN or infinite loss makes every figure after it meaningless ("ppl: -nan"): stop here.
      if (!std::isfinite(v)) {
        throw NumericError(strprintf("eval: window %" PRId64 " (tokens %" PRId64 "..%" PRId64 ") has a non-finite loss (%f): "
                                     "the model produced NaN or infinite logits (non-finite weights, or an overflow in "
                                     "this dtype); no perplexity can be reported",
                                     w0 + b, (w0 + b) * seqlen, (w0 + b + 1) * seqlen - 1, v));
      }
      r.window_nll.push_back(v);
    }

    const auto now = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(now - start).count();
    const int64_t done = w0 + nb;
    if (options.progress && (std::chrono::duration<double>(now - last_report).count() > 2.0 || done == windows)) {
      last_report = now;
      const double tps = done * seqlen / std::max(elapsed, 1e-9);
      const double eta = (windows - done) * seqlen / std::max(tps, 1e-9);
      double sum = 0;
      for (double v : r.window_nll) sum += v;
      log::info(strprintf("eval: window %" PRId64 "/%" PRId64 " | %.0f tok/s | running ppl %.4f | ETA %.0f s", done,
                          windows, tps, std::exp(sum / r.window_nll.size()), eta));
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double sum = 0.0;
  for (double v : r.window_nll) sum += v;
  r.nll = sum / windows;
  double ss = 0.0;
  for (double v : r.window_nll) ss += (v - r.nll) * (v - r.nll);
  r.nll_stderr = windows > 1 ? std::sqrt(ss / (windows - 1)) / std::sqrt(static_cast<double>(windows)) : 0.0;
  r.ppl = std::exp(r.nll);
  r.ppl_stderr = r.ppl * r.nll_stderr;
  r.tokens_per_second = windows * seqlen / std::max(r.seconds, 1e-9);
  return r;
}

KlResult evaluate_kl_divergence(Decoder& reference, Decoder& candidate, const std::vector<int32_t>& ids,
                                int64_t seqlen, int64_t max_windows) {
  if (seqlen < 2) throw UsageError("--seqlen must be >= 2, got " + std::to_string(seqlen));
  int64_t windows = static_cast<int64_t>(ids.size()) / seqlen;
  if (max_windows >= 0) windows = std::min(windows, max_windows);
  if (windows == 0) throw UsageError("the text has fewer tokens than one window of " + std::to_string(seqlen));
  c10::NoGradGuard no_grad;
  double total = 0.0;
  for (int64_t w = 0; w < windows; ++w) {
    at::Tensor x = at::empty({1, seqlen}, at::TensorOptions().dtype(at::kLong));
    for (int64_t j = 0; j < seqlen; ++j) x[0][j] = ids[w * seqlen + j];
    at::Tensor lp = at::log_softmax(reference.forward(x).to(at::kDouble), -1);  // [1, T, V]
    at::Tensor lq = at::log_softmax(candidate.forward(x).to(at::kDouble), -1);
    total += (lp.exp() * (lp - lq)).sum().item<double>();
    if (!std::isfinite(total)) {
      throw NumericError("kl: window " + std::to_string(w) + " gives a non-finite KL divergence (NaN or infinite logits)");
    }
  }
  KlResult r;
  r.num_positions = windows * seqlen;
  r.kl_mean = total / static_cast<double>(r.num_positions);
  return r;
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
