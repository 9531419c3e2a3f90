// DenseLinear and linear-site naming.
#include "resq/model/linear.h"

#include <ATen/ATen.h>

#include "resq/common/error.h"

namespace resq {

const char* linear_kind_name(LinearKind kind) {
  switch (kind) {
    case LinearKind::kQ: return "q_proj";
    case LinearKind::kK: return "k_proj";
    case LinearKind::kV: return "v_proj";
    case LinearKind::kO: return "o_proj";
    case LinearKind::kGate: return "gate_proj";
    case LinearKind::kUp: return "up_proj";
    case LinearKind::kDown: return "down_proj";
    case LinearKind::kLmHead: return "lm_head";
  }
  return "?";
}

std::string LinearSite::name() const {
  if (kind == LinearKind::kLmHead) return "lm_head";
  const bool attention = kind == LinearKind::kQ || kind == LinearKind::kK ||
                         kind == LinearKind::kV || kind == LinearKind::kO;
  return "layers." + std::to_string(layer) + (attention ? ".self_attn." : ".mlp.") +
         linear_kind_name(kind);
}

DenseLinear::DenseLinear(at::Tensor weight, at::Tensor bias)
    : weight_(std::move(weight)), bias_(std::move(bias)) {
  if (!weight_.defined() || weight_.dim() != 2) {
    throw ShapeError("DenseLinear: weight must be a 2-D [out, in] tensor");
  }
  if (bias_.defined() && (bias_.dim() != 1 || bias_.size(0) != weight_.size(0))) {
    throw ShapeError("DenseLinear: bias must be [" + std::to_string(weight_.size(0)) + "]");
  }
}

at::Tensor DenseLinear::forward(const at::Tensor& x) const {
  // x [..., in] -> [..., out]; at::linear dispatches to BLAS (or oneDNN for bf16).
  if (x.size(-1) != weight_.size(1)) {
    throw ShapeError("DenseLinear: input has " + std::to_string(x.size(-1)) +
                     " features, weight expects " + std::to_string(weight_.size(1)));
  }
  return bias_.defined() ? at::linear(x, weight_, bias_) : at::linear(x, weight_);
}

int64_t DenseLinear::in_features() const { return weight_.size(1); }
int64_t DenseLinear::out_features() const { return weight_.size(0); }

}  // namespace resq
