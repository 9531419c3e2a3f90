// Online transforms (dense rotation, online Hadamard) and the simulated quantized linear (online.h).
#include "resq/transforms/online.h"

#include <ATen/ATen.h>

#include <cmath>

#include "resq/common/error.h"
#include "resq/io/safetensors.h"  // format_shape

namespace resq {

MatrixTransform::MatrixTransform(at::Tensor m) : m_(std::move(m)) {
  if (!m_.defined() || (m_.dim() != 2 && m_.dim() != 3) || m_.size(-1) != m_.size(-2)) {
    throw ShapeError("MatrixTransform: expected a square matrix [n, n] or one per head [heads, n, n], got " +
                     (m_.defined() ? format_shape(m_.sizes().vec()) : std::string("none")));
  }
}

at::Tensor MatrixTransform::apply(const at::Tensor& x) const {
  const at::Tensor m = m_.to(x.device(), x.scalar_type());
  if (m.dim() == 2) return at::matmul(x, m);
  const int64_t heads = m.size(0);
  if (x.dim() != 4 || x.size(3) != m.size(2) || x.size(1) % heads != 0) {
    throw ShapeError("MatrixTransform: per-head matrices " + format_shape(m_.sizes().vec()) + " applied to " + format_shape(x.sizes().vec()) +
                     " (expected [B, a multiple of " + std::to_string(heads) + ", T, " + std::to_string(m.size(2)) + "])");
  }
  // [B, heads, group, T, n] · [heads, 1, n, n] (a view of x: splitting one dim needs no copy; the
  // matrices broadcast over the group instead of being repeated per call): head x by M[x / group].
  const int64_t group = x.size(1) / heads;
  return at::matmul(x.view({x.size(0), heads, group, x.size(2), x.size(3)}), m.unsqueeze(1)).view(x.sizes());
}

namespace {

void check_last_dim(const OnlineHadamard& t, const at::Tensor& x) {
  if (!x.defined() || x.dim() < 1 || x.size(-1) != t.n) {
    throw ShapeError("online Hadamard of size " + std::to_string(t.n) + " applied to last dim " +
                     (x.defined() && x.dim() >= 1 ? std::to_string(x.size(-1)) : std::string("(none)")));
  }
}

}  // namespace

at::Tensor apply_online_hadamard_torch(const OnlineHadamard& t, const at::Tensor& x) {
  check_online_hadamard(t, "apply_online_hadamard_torch");
  check_last_dim(t, x);
  const at::ScalarType work = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t n = t.n, p = t.pow2, m = t.block;
  const auto opts = x.options().dtype(work);
  at::Tensor y = x.to(work).reshape({-1, n});  // [rows, n]
  const int64_t rows = y.size(0);
  bool all_plus = true;
  for (float s : t.signs) all_plus = all_plus && s == 1.0f;
  if (!all_plus) {
    at::Tensor signs = at::from_blob(const_cast<float*>(t.signs.data()), {n}, at::TensorOptions().dtype(at::kFloat));
    y = y * signs.to(opts);
  }
  // Butterflies on every chunk of p: index i*2h + s*h + j pairs (s = 0, s = 1) as fwht_butterfly does.
  at::Tensor z = y.reshape({rows * m, p});
  for (int64_t h = 1; h < p; h *= 2) {
    const at::Tensor v = z.view({rows * m, p / (2 * h), 2, h});
    const at::Tensor a = v.select(2, 0), b = v.select(2, 1);
    z = at::stack({a + b, a - b}, 2).view({rows * m, p});
  }
  const double inv_sqrt_p = 1.0 / std::sqrt(static_cast<double>(p));
  if (m == 1) {
    const double scale = t.block_matrix[0] * inv_sqrt_p;  // a float tensor takes it as float, like the CPU loop
    if (scale != 1.0) z = z * scale;
  } else {
    // Y = Bᵀ Z / sqrt(p) per row, Z [rows, m, p]: mix[d, b] = B[b, d] / sqrt(p).
    at::Tensor mix = at::empty({m, m}, at::TensorOptions().dtype(at::kDouble));
    double* mp = mix.data_ptr<double>();
    for (int64_t b = 0; b < m; ++b)
      for (int64_t d = 0; d < m; ++d) mp[d * m + b] = t.block_matrix[b * m + d] * inv_sqrt_p;
    z = at::matmul(mix.to(opts), z.view({rows, m, p}));
  }
  return z.reshape(x.sizes()).to(x.scalar_type());
}

OnlineHadamardTransform::OnlineHadamardTransform(OnlineHadamard t) : t_(std::move(t)) {}

at::Tensor OnlineHadamardTransform::apply(const at::Tensor& x) const {
  check_last_dim(t_, x);
  if (!x.device().is_cpu()) return apply_online_hadamard_torch(t_, x);
  if (x.scalar_type() == at::kDouble) {
    at::Tensor y = x.contiguous().cpu().clone();
    apply_online_hadamard(t_, y.data_ptr<double>(), y.numel() / t_.n);
    return y.to(x.device());
  }
  at::Tensor y = x.to(at::kFloat).contiguous().cpu().clone();
  apply_online_hadamard(t_, y.data_ptr<float>(), y.numel() / t_.n);
  return y.to(x.device(), x.scalar_type());
}

SimulatedLinear::SimulatedLinear(std::shared_ptr<DenseLinear> dense, std::shared_ptr<TensorTransform> input_quant)
    : dense_(std::move(dense)), input_quant_(std::move(input_quant)) {
  if (!dense_) throw Error("SimulatedLinear: null dense linear");
}

at::Tensor SimulatedLinear::forward(const at::Tensor& x) const {
  return dense_->forward(input_quant_ ? input_quant_->apply(x) : x);
}

}  // namespace resq
