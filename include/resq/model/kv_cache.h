// The K/V store one decoder layer attends through (Decoder::run_layer): the interface, the transient
// store of a full forward pass and the persistent float store of incremental decoding. Packed CPU rows
// and the paged 4/8-bit CUDA cache implement the same interface in resq/runtime/kv_caches.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

#include "resq/model/attention.h"

namespace resq {

class TensorTransform;

class LayerKvCache {
 public:
  virtual ~LayerKvCache() = default;

  // Stores this chunk's keys and values and returns the attention of its queries over every cached
  // position: q [B, H, t, hd], k/v [B, Hkv, t, hd] in the compute dtype (k after RoPE and the layer's
  // qk_transform, v as v_proj made it, neither through a cache transform yet); the chunk takes
  // positions [length(), length() + t). -> [B, t, H*hd] in spec.dtype. B must stay the same between
  // calls until reset().
  virtual at::Tensor append_and_attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const AttentionSpec& spec) = 0;
  virtual int64_t length() const = 0;  // cached positions per sequence
  // Keeps positions [0, len) (a failed step rolls back to where it started).
  virtual void truncate(int64_t len) = 0;
  virtual void reset() = 0;  // empties the cache; the next chunk may have another batch size
  // Prepares room for `positions` positions per sequence (a hint; appending grows as needed).
  virtual void reserve(int64_t positions) {}
  // Bytes held for the cached positions (K and V).
  virtual int64_t bytes() const = 0;
  // K or V of every cached position as attention reads it: [B, Hkv, length(), hd] in `dtype` on `device`.
  virtual at::Tensor keys(at::ScalarType dtype, const at::Device& device) const = 0;
  virtual at::Tensor values(at::ScalarType dtype, const at::Device& device) const = 0;
  // Stored as packed 4/8-bit rows (CPU rows or the paged CUDA cache).
  virtual bool packed() const { return false; }
  virtual const char* name() const = 0;  // "transient", "dense", "packed-rows", "paged-cuda"
};

// One chunk's K/V through the layer's cache transforms (null = identity), nothing kept beyond the
// call: the full forward (eval, calibration). Only a chunk at position 0 is accepted.
class TransientKvCache : public LayerKvCache {
 public:
  TransientKvCache(std::shared_ptr<TensorTransform> k_transform, std::shared_ptr<TensorTransform> v_transform);
  at::Tensor append_and_attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const AttentionSpec& spec) override;
  int64_t length() const override { return 0; }
  void truncate(int64_t) override {}
  void reset() override {}
  int64_t bytes() const override { return 0; }
  at::Tensor keys(at::ScalarType dtype, const at::Device& device) const override;
  at::Tensor values(at::ScalarType dtype, const at::Device& device) const override;
  const char* name() const override { return "transient"; }

 private:
  std::shared_ptr<TensorTransform> k_transform_, v_transform_;
};

// Persistent K/V [B, Hkv, capacity, hd] in the compute dtype, stored after the layer's cache
// transforms (fp models: none; --mode simulate: the KV fake quant; also the CUDA fake quant of
// sliding-window models). The transforms must act per (token, head), as every resq KV transform does,
// so transforming a chunk equals transforming the whole sequence. Geometric growth.
class DenseKvCache : public LayerKvCache {
 public:
  DenseKvCache(std::shared_ptr<TensorTransform> k_transform, std::shared_ptr<TensorTransform> v_transform);
  at::Tensor append_and_attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const AttentionSpec& spec) override;
  int64_t length() const override { return length_; }
  void truncate(int64_t len) override;
  void reset() override;
  void reserve(int64_t positions) override { reserved_ = positions; }
  int64_t bytes() const override;
  at::Tensor keys(at::ScalarType dtype, const at::Device& device) const override;
  at::Tensor values(at::ScalarType dtype, const at::Device& device) const override;
  const char* name() const override { return "dense"; }

 private:
  void append(at::Tensor& store, const at::Tensor& x);
  std::shared_ptr<TensorTransform> k_transform_, v_transform_;
  at::Tensor k_, v_;  // [B, Hkv, capacity, hd]
  int64_t length_ = 0;
  int64_t reserved_ = 0;
};

}  // namespace resq
