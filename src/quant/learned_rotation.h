// Learned rotations inside the ResQ subspaces (recipe rotation.learn), private to src/quant: after PCA
// fixed the subspaces, Cayley SGD on the end-to-end cross-entropy of the fake-quantized model.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include <nlohmann/json.hpp>

#include "pipeline_parts.h"
#include "resq/format/layout.h"

namespace resq::pipeline {

// Replaces R.u_a, R.u_b and R.u_c (as built by build_rotations) by U · blockdiag(Q_low, Q_high), the
// orthogonal Q of each subspace (the low n - r and high r columns) learned with recipe.rotation.learn
// by minimizing the mean next-token cross-entropy on windows of calib [N, T] (int64) of the model with
// RTN weights, per-token activations and KV cache fake-quantized (straight-through gradients). U_D
// stays fixed. m: globals prepared (prepare_globals), not yet fused; every layer is loaded while
// learning (memory bounded by the model) and unloaded afterwards. Deterministic for (seed, learn.seed).
// Returns the report: loss per step, seconds, the learned matrices' max ‖UᵀU − I‖_F.
nlohmann::json learn_rotations(Decoder& m, const Recipe& recipe, const format::ModelLayout& layout,
                               const at::Tensor& calib, uint64_t seed, Rotations& R);

}  // namespace resq::pipeline
