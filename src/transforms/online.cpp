// Online transforms (dense rotation, online Hadamard) and the simulated quantized linear (online.h).
#include "resq/transforms/online.h"

#include <ATen/ATen.h>

#include "resq/common/error.h"

namespace resq {

MatrixTransform::MatrixTransform(at::Tensor m) : m_(std::move(m)) {
  if (m_.dim() != 2 || m_.size(0) != m_.size(1)) throw ShapeError("MatrixTransform: expected a square matrix");
}

at::Tensor MatrixTransform::apply(const at::Tensor& x) const {
  return at::matmul(x, m_.to(x.device(), x.scalar_type()));
}

OnlineHadamardTransform::OnlineHadamardTransform(OnlineHadamard t) : t_(std::move(t)) {}

at::Tensor OnlineHadamardTransform::apply(const at::Tensor& x) const {
  if (x.size(-1) != t_.n) {
    throw ShapeError("online Hadamard of size " + std::to_string(t_.n) + " applied to last dim " +
                     std::to_string(x.size(-1)));
  }
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
