// Learned rotations inside the ResQ subspaces (recipe rotation.learn), private to src/quant: after PCA
// fixed the subspaces, Cayley SGD on an end-to-end loss (CE or KL to the fp model) of the
// fake-quantized model or its second-order estimate ("noise"), with held-out early stopping.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include <nlohmann/json.hpp>

#include "pipeline_parts.h"
#include "resq/format/layout.h"

namespace resq::pipeline {

// Replaces R.u_a, R.u_b and R.u_c (as built by build_rotations) by U · blockdiag(Q_low, Q_high), the
// orthogonal Q of each subspace (the low n - r and high r columns) learned with recipe.rotation.learn
// by minimizing learn.objective ("ce": next-token cross-entropy; "kl": KL(fp || quantized); "noise":
// the Fisher-weighted expected quantization noise of rotation_noise.h, recorded once, of activations,
// KV cache and, with weights_in_loop "rtn", the q/k/gate/up weights) on the
// training windows of calib [N, T] (int64) of the model with per-token activations, KV cache and
// (weights_in_loop "rtn") RTN weights fake-quantized (scale-aware straight-through gradients,
// resq/quant/ste_quant.h); with learn.holdout > 0 the last windows are held out and the rotations of
// the best held-out measurement are kept. U_D
// stays fixed. m: globals prepared (prepare_globals), not yet fused; every layer is loaded while
// learning (memory bounded by the model) and unloaded afterwards. Deterministic for (seed, learn.seed).
// Returns the report: loss per step, held-out curve and kept step, seconds, the learned matrices'
// max ‖UᵀU − I‖_F. Throws ConfigError when the hold-out leaves no training window.
nlohmann::json learn_rotations(Decoder& m, const Recipe& recipe, const format::ModelLayout& layout,
                               const at::Tensor& calib, uint64_t seed, Rotations& R);

}  // namespace resq::pipeline
