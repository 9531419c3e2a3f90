// TransientKvCache (full forward) and DenseKvCache (incremental decoding in float); see kv_cache.h.
#include "resq/model/kv_cache.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "resq/common/error.h"
#include "resq/model/decoder.h"

namespace resq {

namespace {

void check_chunk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const char* who) {
  if (q.dim() != 4 || k.dim() != 4 || !k.sizes().equals(v.sizes()) || q.size(0) != k.size(0) ||
      q.size(2) != k.size(2) || q.size(3) != k.size(3)) {
    throw ShapeError(std::string(who) + ": expected q [B, H, t, hd] and k, v [B, Hkv, t, hd], got q " +
                     std::string(c10::str(q.sizes())) + ", k " + std::string(c10::str(k.sizes())) + ", v " +
                     std::string(c10::str(v.sizes())));
  }
}

}  // namespace

// ------------------------------------------------------------------ TransientKvCache

TransientKvCache::TransientKvCache(std::shared_ptr<TensorTransform> k_transform,
                                   std::shared_ptr<TensorTransform> v_transform)
    : k_transform_(std::move(k_transform)), v_transform_(std::move(v_transform)) {}

at::Tensor TransientKvCache::append_and_attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const AttentionSpec& spec) {
  check_chunk(q, k, v, "TransientKvCache");
  const at::Tensor kt = k_transform_ ? k_transform_->apply(k) : k;
  const at::Tensor vt = v_transform_ ? v_transform_->apply(v) : v;
  return causal_attention(q, kt, vt, spec);
}

at::Tensor TransientKvCache::keys(at::ScalarType, const at::Device&) const {
  throw Error("TransientKvCache keeps no keys beyond a forward pass");
}

at::Tensor TransientKvCache::values(at::ScalarType, const at::Device&) const {
  throw Error("TransientKvCache keeps no values beyond a forward pass");
}

// ------------------------------------------------------------------ DenseKvCache

DenseKvCache::DenseKvCache(std::shared_ptr<TensorTransform> k_transform, std::shared_ptr<TensorTransform> v_transform)
    : k_transform_(std::move(k_transform)), v_transform_(std::move(v_transform)) {}

void DenseKvCache::append(at::Tensor& store, const at::Tensor& x) {
  // x [B, Hkv, t, hd] -> store[:, :, length_ : length_ + t]
  const int64_t B = x.size(0), Hkv = x.size(1), t = x.size(2), hd = x.size(3);
  const int64_t need = length_ + t;
  if (!store.defined() || store.size(2) < need) {
    // Geometric growth (or the reserved length): one token at a time stays amortized O(1) copies.
    const int64_t capacity =
        std::max<int64_t>({need, 16, reserved_, store.defined() ? 2 * store.size(2) : int64_t{0}});
    at::Tensor grown = at::empty({B, Hkv, capacity, hd}, x.options());
    if (length_ > 0) grown.narrow(2, 0, length_).copy_(store.narrow(2, 0, length_));
    store = grown;
  }
  store.narrow(2, length_, t).copy_(x);
}

at::Tensor DenseKvCache::append_and_attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const AttentionSpec& spec) {
  check_chunk(q, k, v, "DenseKvCache");
  if (length_ > 0 && (k.size(0) != k_.size(0) || k.size(1) != k_.size(1) || k.size(3) != k_.size(3))) {
    throw ShapeError("DenseKvCache: chunk k " + std::string(c10::str(k.sizes())) + " does not match the cache's [" +
                     std::to_string(k_.size(0)) + ", " + std::to_string(k_.size(1)) + ", *, " +
                     std::to_string(k_.size(3)) + "]");
  }
  append(k_, k_transform_ ? k_transform_->apply(k) : k);
  append(v_, v_transform_ ? v_transform_->apply(v) : v);
  length_ += k.size(2);
  return causal_attention(q, k_.narrow(2, 0, length_), v_.narrow(2, 0, length_), spec);
}

void DenseKvCache::truncate(int64_t len) { length_ = std::min(length_, std::max<int64_t>(0, len)); }

void DenseKvCache::reset() {
  k_ = at::Tensor();
  v_ = at::Tensor();
  length_ = 0;
}

int64_t DenseKvCache::bytes() const {
  if (!k_.defined()) return 0;
  return 2 * k_.size(0) * k_.size(1) * length_ * k_.size(3) * static_cast<int64_t>(k_.element_size());
}

at::Tensor DenseKvCache::keys(at::ScalarType dtype, const at::Device& device) const {
  if (!k_.defined()) return at::Tensor();
  return k_.narrow(2, 0, length_).to(device, dtype);
}

at::Tensor DenseKvCache::values(at::ScalarType dtype, const at::Device& device) const {
  if (!v_.defined()) return at::Tensor();
  return v_.narrow(2, 0, length_).to(device, dtype);
}

}  // namespace resq
