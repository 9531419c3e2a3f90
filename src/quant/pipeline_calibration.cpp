// Calibration statistics of the pipeline (pipeline_parts.h): Gram accumulators (float64, optionally
// from bf16 products), the covariances of the ResQ bases and the per-layer GPTQ Hessians.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "pipeline_parts.h"
#include "resq/common/error.h"

namespace resq::pipeline {

// ---------------------------------------------------------------------------- GramAccumulator

GramAccumulator::GramAccumulator(int64_t F, Products products, const at::Device& device)
    : products_(products), acc_(at::zeros({F, F}, at::TensorOptions().dtype(at::kDouble).device(device))) {
  if (products_ == Products::kBf16 && !device.is_cpu()) {
    throw UsageError("GramAccumulator: bf16 products are the CPU path (oneDNN); " + device.str() + " uses fp32 or tf32");
  }
}

void GramAccumulator::add(const at::Tensor& x2) {
  const int64_t F = acc_.size(0);
  if (products_ == Products::kFp32) {
    at::Tensor xd = x2.to(acc_.device(), at::kDouble);
    acc_.addmm_(xd.t(), xd);
    return;
  }
  if (!partial_.defined()) partial_ = at::empty({F, F}, acc_.options().dtype(at::kFloat));
  if (products_ == Products::kBf16) {
    gram_bf16(x2.to(at::kBFloat16).contiguous(), partial_, pending_ == 0 ? 0.0f : 1.0f);
  } else {
    // TF32: the caller's Tf32Scope (run_layer_chunks) lets cuBLAS use the tensor cores here.
    const at::Tensor x32 = x2.to(acc_.device(), at::kFloat);
    if (pending_ == 0) {
      at::mm_out(partial_, x32.t(), x32);
    } else {
      partial_.addmm_(x32.t(), x32);
    }
  }
  pending_ += x2.size(0);
  if (pending_ >= kFlushRows) flush();
}

const at::Tensor& GramAccumulator::result() {
  flush();
  return acc_;
}

void GramAccumulator::reset() {
  acc_.zero_();
  pending_ = 0;
}

void GramAccumulator::release_partial() {
  flush();
  partial_ = at::Tensor();
}

// acc += partial elementwise. Not acc_.add_(partial_): type promotion would materialize a float64
// copy of the float32 partial sums (512 MiB for an 8192-wide down_proj) at every flush.
void GramAccumulator::flush() {
  if (pending_ > 0 && !acc_.device().is_cpu()) {
    acc_.add_(partial_);  // a float64 temporary on the device; the CPU path below avoids it
  } else if (pending_ > 0) {
    double* acc = acc_.data_ptr<double>();
    const float* part = partial_.data_ptr<float>();
    at::parallel_for(0, acc_.numel(), int64_t{1} << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) acc[i] += static_cast<double>(part[i]);
    });
  }
  pending_ = 0;
}

// ---------------------------------------------------------------------------- CovarianceObserver

CovarianceObserver::CovarianceObserver(const ModelConfig& c, const ComputePlan& plan)
    : c_(c), device_(plan.device), gram_a_(c.hidden_size, plan.products, plan.device) {
  const auto opts = at::TensorOptions().dtype(at::kDouble).device(device_);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    cov_v.push_back(at::zeros({c.num_kv_heads, c.head_dim, c.head_dim}, opts));
    cov_k.push_back(at::zeros({c.num_kv_heads, c.head_dim, c.head_dim}, opts));
  }
}

void CovarianceObserver::on_linear_input(const LinearSite& site, const at::Tensor& x) {
  // Attention input and MLP input of every layer -> one shared d x d matrix for U_A.
  if (site.kind != LinearKind::kQ && site.kind != LinearKind::kGate) return;
  gram_a_.add(x.reshape({-1, c_.hidden_size}));
}

namespace {

// Per KV head Σ xᵀx of x [B, Hkv, T, hd] into acc [Hkv, hd, hd] (tiny GEMMs: float64).
void add_per_head_gram(at::Tensor& acc, const at::Tensor& x, const at::Device& device) {
  const at::Tensor x3 = x.transpose(0, 1).reshape({acc.size(0), -1, acc.size(2)}).to(device, at::kDouble);
  acc.add_(at::bmm(x3.transpose(1, 2), x3));
}

}  // namespace

void CovarianceObserver::on_keys(int64_t layer, const at::Tensor& k) { add_per_head_gram(cov_k[layer], k, device_); }

void CovarianceObserver::on_values(int64_t layer, const at::Tensor& v) { add_per_head_gram(cov_v[layer], v, device_); }

void CovarianceObserver::finish() {
  cov_a = gram_a_.result();
  gram_a_.release_partial();
}

// ---------------------------------------------------------------------------- HessianObserver

void HessianObserver::on_linear_input(const LinearSite& site, const at::Tensor& x) {
  LinearKind key = site.kind;
  if (key == LinearKind::kK || key == LinearKind::kV) return;  // same input as q
  if (key == LinearKind::kUp) return;                          // same input as gate
  at::Tensor x2 = x.reshape({-1, x.size(-1)});
  auto it = grams_.find(key);
  if (it == grams_.end()) it = grams_.emplace(key, GramAccumulator(x2.size(1), plan_.products, plan_.device)).first;
  it->second.add(x2);
}

std::map<LinearKind, at::Tensor> HessianObserver::finish() {
  std::map<LinearKind, at::Tensor> out;
  for (auto& [key, g] : grams_) {
    g.release_partial();
    out[key] = g.result();
  }
  return out;
}

void HessianObserver::reset() {
  for (auto& [key, g] : grams_) g.reset();
}

}  // namespace resq::pipeline
