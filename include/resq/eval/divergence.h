// Per-window divergence of a candidate model's next-token distributions from a reference's, computed
// from one batch of logits of each (the building block of compare_to_reference, eval/perplexity.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace resq {

struct WindowDivergence {
  double kl = 0.0;    // mean over the window's positions of KL(P_ref || P_cand), nats
  double top1 = 0.0;  // fraction of positions where argmax P_ref == argmax P_cand (first index on ties)
};

// reference, candidate: logits [B, T, V] (any float dtype, same shape). Returns B entries. The
// softmaxes are taken in float64. Throws ShapeError when the shapes differ or are not 3-d.
std::vector<WindowDivergence> window_divergence(const at::Tensor& reference, const at::Tensor& candidate);

}  // namespace resq
