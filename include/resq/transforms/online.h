// Online transforms and the simulated quantized linear shared by the quantization pipeline (resq/quant)
// and the runtimes (resq/runtime): a dense rotation (U_C on q/k), the online Hadamard before
// down_proj (U_D) and a fake-quantized-input x dequantized-weight linear (simulated arithmetic).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

#include "resq/linalg/rotation.h"
#include "resq/model/decoder.h"
#include "resq/model/linear.h"

namespace resq {

// y = x · M over the last dimension: x [..., n], M [n, n] (e.g. U_C on q/k [B, H, T, hd] after RoPE).
// Per head, M [heads, n, n] on x [B, X, T, n] with X a multiple of heads: head x takes
// M[x / (X / heads)], the GQA grouping (q [B, H, T, hd] and k [B, Hkv, T, hd] with M per KV head).
// M is cast to x's dtype and device on use.
class MatrixTransform : public TensorTransform {
 public:
  explicit MatrixTransform(at::Tensor m);
  at::Tensor apply(const at::Tensor& x) const override;
  const at::Tensor& matrix() const { return m_; }

 private:
  at::Tensor m_;  // [n, n] or [heads, n, n]
};

// y = x · T with T = online_hadamard_dense(t) over the last dimension, as torch ops on x's device
// (the path for non-CPU tensors; the CPU takes the raw loops of resq/linalg/rotation.h):
// x [..., n] float32/float64 (other float dtypes computed in float32) -> same shape and dtype.
// Signs, then the same butterflies in the same order as fwht_butterfly (bit-identical for a power
// of two), then the dense block mix (one batched GEMM: equal to the CPU's up to summation order).
at::Tensor apply_online_hadamard_torch(const OnlineHadamard& t, const at::Tensor& x);

// y = x · T with T an online Hadamard (fast WHT + small dense block, resq/linalg/rotation.h) over the
// last dimension: x [..., n] -> [..., n], computed in float32 (float64 for float64 inputs); CPU tensors
// by the raw loops, others by apply_online_hadamard_torch on their device.
class OnlineHadamardTransform : public TensorTransform {
 public:
  explicit OnlineHadamardTransform(OnlineHadamard t);
  at::Tensor apply(const at::Tensor& x) const override;
  const OnlineHadamard& hadamard() const { return t_; }

 private:
  OnlineHadamard t_;
};

// Simulated quantized linear: fake-quantized input (optional) times dequantized weights.
// x [..., in] -> [..., out].
class SimulatedLinear : public Linear {
 public:
  SimulatedLinear(std::shared_ptr<DenseLinear> dense, std::shared_ptr<TensorTransform> input_quant);
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return dense_->in_features(); }
  int64_t out_features() const override { return dense_->out_features(); }
  std::string implementation() const override { return "simulated"; }
  const std::shared_ptr<DenseLinear>& dense() const { return dense_; }

 private:
  std::shared_ptr<DenseLinear> dense_;
  std::shared_ptr<TensorTransform> input_quant_;
};

}  // namespace resq
