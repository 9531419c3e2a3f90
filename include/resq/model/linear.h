// Swappable linear-layer implementations and the names of the sites where linears sit in a decoder.
// The fp model uses DenseLinear; quantization recipes swap in simulated or packed implementations.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

namespace resq {

enum class LinearKind { kQ, kK, kV, kO, kGate, kUp, kDown, kLmHead };

const char* linear_kind_name(LinearKind kind);  // "q_proj", ..., "lm_head"

// Where a linear sits: layer index (-1 for lm_head) and which projection.
struct LinearSite {
  int64_t layer = -1;
  LinearKind kind = LinearKind::kQ;
  std::string name() const;  // "layers.3.self_attn.q_proj", "lm_head"
};

// y = f(x): x [..., in_features] -> y [..., out_features], in the compute dtype of x.
class Linear {
 public:
  virtual ~Linear() = default;
  virtual at::Tensor forward(const at::Tensor& x) const = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  virtual std::string implementation() const = 0;  // "dense", "simulated", "packed-cpu", ...
};

// Plain floating-point linear: weight [out, in], optional bias [out].
class DenseLinear : public Linear {
 public:
  DenseLinear(at::Tensor weight, at::Tensor bias);
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override;
  int64_t out_features() const override;
  std::string implementation() const override { return "dense"; }
  const at::Tensor& weight() const { return weight_; }
  const at::Tensor& bias() const { return bias_; }  // undefined when absent

 private:
  at::Tensor weight_;
  at::Tensor bias_;
};

}  // namespace resq
