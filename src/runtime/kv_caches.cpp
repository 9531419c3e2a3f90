// The cache choice of incremental decoding, the packed-rows CPU cache and the paged-cache index plan
// (kv_caches.h). The paged CUDA cache itself is in paged_kv_cuda.cpp.
#include "resq/runtime/kv_caches.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "resq/format/packed.h"
#include "resq/common/error.h"
#include "resq/runtime/backend.h"
#include "resq/runtime/packed_model.h"

namespace resq {

namespace {

// Appends src's rows after dst's (same K4 / K8): the row-major layouts simply concatenate.
void append_rows(cpu::QuantizedActivations& dst, const cpu::QuantizedActivations& src) {
  if (dst.M == 0) {
    dst.K4 = src.K4;
    dst.K8 = src.K8;
  } else if (dst.K4 != src.K4 || dst.K8 != src.K8) {
    throw ShapeError("PackedRowsKvCache: packed KV rows of different widths cannot be appended");
  }
  auto cat = [](auto& a, const auto& b) { a.insert(a.end(), b.begin(), b.end()); };
  cat(dst.xq4, src.xq4);
  cat(dst.xq8, src.xq8);
  cat(dst.sx4, src.sx4);
  cat(dst.zx4, src.zx4);
  cat(dst.sx8, src.sx8);
  cat(dst.zx8, src.zx8);
  dst.M += src.M;
}

// Keeps the first `rows` rows.
void truncate_rows(cpu::QuantizedActivations& q, int64_t rows) {
  if (rows >= q.M) return;
  const auto r = static_cast<size_t>(rows);
  q.xq4.resize(r * static_cast<size_t>(format::packed4_row_bytes(q.K4)));
  q.xq8.resize(r * static_cast<size_t>(q.K8));
  q.sx4.resize(r);
  q.zx4.resize(r);
  q.sx8.resize(r);
  q.zx8.resize(r);
  q.M = rows;
}

int64_t rows_bytes(const cpu::QuantizedActivations& r) {
  return static_cast<int64_t>(r.xq4.size() + r.xq8.size() + sizeof(float) * (r.sx4.size() + r.sx8.size()) +
                              sizeof(int32_t) * (r.zx4.size() + r.zx8.size()));
}

}  // namespace

// ------------------------------------------------------------------ the choice

std::unique_ptr<LayerKvCache> make_layer_kv_cache(const Decoder& decoder, int64_t layer) {
  const ModelConfig& c = decoder.config();
  const DecoderLayer& L = decoder.layers().at(static_cast<size_t>(layer));
  auto k_cpu = std::dynamic_pointer_cast<const PackedKvCacheQuant>(L.k_cache_transform);
  auto v_cpu = std::dynamic_pointer_cast<const PackedKvCacheQuant>(L.v_cache_transform);
  if (k_cpu && v_cpu) {
    if (k_cpu->head_dim() != c.head_dim || v_cpu->head_dim() != c.head_dim) {
      throw ShapeError("DecodeSession: layer " + std::to_string(layer) + "'s packed KV cache has head_dim " +
                       std::to_string(k_cpu->head_dim()) + ", the model " + std::to_string(c.head_dim));
    }
    return std::make_unique<PackedRowsKvCache>(k_cpu, v_cpu);
  }
  const bool k_gpu = is_cuda_kv_cache_quant(L.k_cache_transform.get());
  const bool v_gpu = is_cuda_kv_cache_quant(L.v_cache_transform.get());
  const bool windowed = c.sliding_window && *c.sliding_window < c.max_position_embeddings;
  if (k_gpu && v_gpu && !windowed && decoder.device().is_cuda()) {
    return make_paged_cuda_kv_cache(L.k_cache_transform, L.v_cache_transform);
  }
  return std::make_unique<DenseKvCache>(L.k_cache_transform, L.v_cache_transform);
}

// ------------------------------------------------------------------ PackedRowsKvCache

PackedRowsKvCache::PackedRowsKvCache(std::shared_ptr<const PackedKvCacheQuant> k_quant,
                                     std::shared_ptr<const PackedKvCacheQuant> v_quant)
    : k_quant_(std::move(k_quant)), v_quant_(std::move(v_quant)) {}

at::Tensor PackedRowsKvCache::append_and_attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                const AttentionSpec& spec) {
  const int64_t B = k.size(0), Hkv = k.size(1), t = k.size(2), hd = k.size(3);
  if (length_ > 0 && (B != B_ || Hkv != Hkv_ || hd != hd_)) {
    throw ShapeError("PackedRowsKvCache: chunk k " + std::string(c10::str(k.sizes())) + " does not match the cache's [" +
                     std::to_string(B_) + ", " + std::to_string(Hkv_) + ", *, " + std::to_string(hd_) + "]");
  }
  // One row per (token, head), token-major so that a step's rows append contiguously.
  for (auto [x, quant, rows] : {std::make_tuple(&k, k_quant_.get(), &k_rows_), std::make_tuple(&v, v_quant_.get(), &v_rows_)}) {
    const at::Tensor rows_f = x->to(at::kCPU, at::kFloat).permute({2, 0, 1, 3}).contiguous();  // [t, B, Hkv, hd]
    append_rows(*rows, quant->pack(rows_f.data_ptr<float>(), t * B * Hkv));
  }
  B_ = B;
  Hkv_ = Hkv;
  hd_ = hd;
  length_ += t;
  return causal_attention(q, keys(spec.dtype, q.device()), values(spec.dtype, q.device()), spec);
}

at::Tensor PackedRowsKvCache::read(const PackedKvCacheQuant& quant, const cpu::QuantizedActivations& rows,
                                   at::ScalarType dtype, const at::Device& device) const {
  at::Tensor out = at::empty({length_, B_, Hkv_, hd_}, at::TensorOptions().dtype(at::kFloat));
  if (length_ > 0) quant.unpack(rows, out.data_ptr<float>());
  return out.permute({1, 2, 0, 3}).to(device, dtype);  // [B, Hkv, length, hd]
}

at::Tensor PackedRowsKvCache::keys(at::ScalarType dtype, const at::Device& device) const {
  return read(*k_quant_, k_rows_, dtype, device);
}

at::Tensor PackedRowsKvCache::values(at::ScalarType dtype, const at::Device& device) const {
  return read(*v_quant_, v_rows_, dtype, device);
}

void PackedRowsKvCache::truncate(int64_t len) {
  if (len >= length_) return;
  length_ = std::max<int64_t>(0, len);
  // A failed step may have appended K without V: cut both to the kept positions.
  truncate_rows(k_rows_, length_ * B_ * Hkv_);
  truncate_rows(v_rows_, length_ * B_ * Hkv_);
}

void PackedRowsKvCache::reset() {
  k_rows_ = cpu::QuantizedActivations{};
  v_rows_ = cpu::QuantizedActivations{};
  length_ = B_ = Hkv_ = hd_ = 0;
}

int64_t PackedRowsKvCache::bytes() const { return rows_bytes(k_rows_) + rows_bytes(v_rows_); }

// ------------------------------------------------------------------ the paged plan

int64_t paged_kv_blocks_for(int64_t positions) {
  constexpr int64_t kBlock = 16;  // kKvBlockTokens of kernels/cuda/kv_cache_layout.h (static_assert there)
  return std::max<int64_t>(1, (positions + kBlock - 1) / kBlock);
}

int64_t PagedKvPlan::slot(int64_t seq, int64_t pos) const { return seq * blocks_per_seq * 16 + pos; }

std::vector<int64_t> PagedKvPlan::chunk_slots(int64_t pos0, int64_t t) const {
  std::vector<int64_t> slots(static_cast<size_t>(batch * t));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < t; ++i) slots[static_cast<size_t>(b * t + i)] = slot(b, pos0 + i);
  }
  return slots;
}

void PagedKvPlan::chunk_queries(int64_t pos0, int64_t t, std::vector<int32_t>* block_tables,
                                std::vector<int32_t>* context_lens) const {
  block_tables->assign(static_cast<size_t>(batch * t * blocks_per_seq), 0);
  context_lens->assign(static_cast<size_t>(batch * t), 0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < t; ++i) {
      const int64_t s = b * t + i;
      for (int64_t j = 0; j < blocks_per_seq; ++j) {
        (*block_tables)[static_cast<size_t>(s * blocks_per_seq + j)] = static_cast<int32_t>(b * blocks_per_seq + j);
      }
      (*context_lens)[static_cast<size_t>(s)] = static_cast<int32_t>(pos0 + i + 1);
    }
  }
}

std::vector<PagedKvPlan::ByteMove> PagedKvPlan::regrow_moves(int64_t blocks_per_seq_new, int64_t block_bytes) const {
  if (blocks_per_seq_new < blocks_per_seq) {
    throw ShapeError("PagedKvPlan: cannot shrink from " + std::to_string(blocks_per_seq) + " to " +
                     std::to_string(blocks_per_seq_new) + " blocks per sequence");
  }
  std::vector<ByteMove> moves;
  const int64_t old_bytes = blocks_per_seq * block_bytes, new_bytes = blocks_per_seq_new * block_bytes;
  for (int64_t b = 0; b < batch; ++b) moves.push_back({b * old_bytes, b * new_bytes, old_bytes});
  return moves;
}

}  // namespace resq
