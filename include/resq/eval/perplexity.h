// Perplexity with the GPTQ/QuaRot/SpinQuant/ResQ protocol: non-overlapping windows of seqlen tokens
// (tail dropped), window NLL = mean over its seqlen-1 next-token predictions, ppl = exp(mean NLL).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace resq {

class Decoder;

struct PerplexityOptions {
  int64_t seqlen = 2048;
  int64_t max_windows = -1;  // < 0: all windows
  int64_t batch = 0;         // windows per forward pass; 0 = choose from a memory budget
  bool progress = true;      // windows done, tokens/s and ETA on stderr
};

struct PerplexityResult {
  double nll = 0.0;         // mean of window NLLs
  double ppl = 0.0;         // exp(nll)
  double nll_stderr = 0.0;  // std(window NLLs, ddof=1) / sqrt(windows)
  double ppl_stderr = 0.0;  // delta method: ppl * nll_stderr
  int64_t seqlen = 0;
  int64_t num_windows = 0;
  int64_t num_tokens = 0;       // tokens of the whole text (incl. BOS)
  int64_t num_predictions = 0;  // windows * (seqlen - 1)
  double seconds = 0.0;
  double tokens_per_second = 0.0;  // evaluated tokens (windows * seqlen) per second
  std::vector<double> window_nll;
};

// ids: the whole tokenized text (BOS already prepended). Throws UsageError if there is no full window,
// NumericError naming the window when a window's loss is NaN or infinite (never reports "ppl: nan").
PerplexityResult evaluate_perplexity(Decoder& decoder, const std::vector<int32_t>& ids,
                                     const PerplexityOptions& options);

// A candidate model against a reference (the fp model) on the same windows: both run on each batch of
// windows in turn, so only one batch of each model's logits [batch, seqlen, V] is ever in memory.
// KL(P_reference || P_candidate) and top-1 agreement (argmax equal) are taken at every position of a
// window (each position's next-token distribution, seqlen per window); the NLLs as in
// evaluate_perplexity (seqlen - 1 predictions per window).
struct ComparisonResult {
  PerplexityResult reference;  // ppl of the reference on these windows
  PerplexityResult candidate;  // ppl of the candidate on these windows
  double kl_mean = 0.0;        // mean of window KLs (nats per position)
  double kl_stderr = 0.0;      // std(window KLs, ddof=1) / sqrt(windows)
  double top1_agreement = 0.0; // mean of window agreements (fraction of positions)
  double top1_stderr = 0.0;
  int64_t num_positions = 0;   // windows * seqlen
  std::vector<double> window_kl;    // mean KL of each window
  std::vector<double> window_top1;  // agreement of each window
};
ComparisonResult compare_to_reference(Decoder& reference, Decoder& candidate, const std::vector<int32_t>& ids,
                                      const PerplexityOptions& options);

// {"kl", "kl_stderr", "top1_agreement", "delta_ppl", "reference_ppl", ..., "window_kl": [...]}.
nlohmann::json comparison_to_json(const ComparisonResult& result);

// {"ppl", "nll", "nll_stderr", ..., "window_nll": [...]}.
nlohmann::json perplexity_to_json(const PerplexityResult& result);

}  // namespace resq
