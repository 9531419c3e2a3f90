// Cayley SGD on the orthogonal group (SpinQuant's optimizer; Li et al. 2020), the manifold step of the
// learned rotations (src/quant/learned_rotation.cpp).
#pragma once

#include <ATen/core/Tensor.h>

namespace resq {

// One Cayley SGD step with momentum on an orthogonal x [n, n] (float64), given the Euclidean gradient
// grad [n, n] of the loss at x: A = grad·xᵀ − x·gradᵀ (skew-symmetric: the Riemannian gradient's
// generator), momentum ← beta·momentum + A, then the Cayley retraction
//   x ← (I + α/2·momentum)⁻¹ (I − α/2·momentum) x,  α = min(lr, 1 / ‖momentum‖_F)
// (SpinQuant's step bound). The Cayley transform of a skew-symmetric matrix is orthogonal, so x stays
// orthogonal to rounding. momentum [n, n] float64 (zeros at first) is updated in place.
void cayley_sgd_step(at::Tensor& x, const at::Tensor& grad, at::Tensor& momentum, double lr, double beta);

}  // namespace resq
