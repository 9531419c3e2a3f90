// The paged 4/8-bit CUDA KV cache of incremental decoding (kv_caches.h): a torch adapter over
// kv_cache_write_cuda / kv_decode_attention_cuda (kernels/cuda/kv_cache.cuh). Without CUDA kernels
// make_paged_cuda_kv_cache returns null.
#include "resq/runtime/kv_caches.h"

#if defined(RESQ_HAVE_CUDA)

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda/kv_cache.cuh"
#include "resq/common/error.h"
#include "resq/cuda/check.h"
#include "cuda/kv_cache_layout.h"
#include "resq/runtime/packed_cuda.h"

namespace resq {

namespace {

static_assert(gpu::kKvBlockTokens == 16, "PagedKvPlan assumes 16-token blocks");

// Launches go to the legacy default stream, like every packed CUDA launch (see packed_cuda.h).
constexpr cudaStream_t kStream = nullptr;

at::Tensor int_tensor(const std::vector<int32_t>& v, const at::Device& device) {
  return at::tensor(at::ArrayRef<int32_t>(v), at::TensorOptions().dtype(at::kInt)).to(device);
}

class PagedCudaKvCache : public LayerKvCache {
 public:
  PagedCudaKvCache(std::shared_ptr<TensorTransform> k_transform, std::shared_ptr<TensorTransform> v_transform)
      : k_transform_(std::move(k_transform)), v_transform_(std::move(v_transform)) {
    const auto* kq = dynamic_cast<const PackedCudaKvCacheQuant*>(k_transform_.get());
    const auto* vq = dynamic_cast<const PackedCudaKvCacheQuant*>(v_transform_.get());
    if (!kq || !vq) throw Error("PagedCudaKvCache: needs the layer's PackedCudaKvCacheQuant K and V transforms");
    if (kq->head_dim() != vq->head_dim() || kq->r_h() != vq->r_h()) {
      throw ShapeError("PagedCudaKvCache: K (head_dim " + std::to_string(kq->head_dim()) + ", r_h " +
                       std::to_string(kq->r_h()) + ") and V (head_dim " + std::to_string(vq->head_dim()) + ", r_h " +
                       std::to_string(vq->r_h()) + ") quantizers differ");
    }
    head_dim_ = kq->head_dim();
    r_h_ = kq->r_h();
    k_clip_ = kq->clip();
    v_clip_ = vq->clip();
  }

  at::Tensor append_and_attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const AttentionSpec& spec) override {
    // q [B, H, t, hd], k/v [B, Hkv, t, hd] on CUDA, float32 or bfloat16
    const int64_t B = k.size(0), Hkv = k.size(1), t = k.size(2), hd = k.size(3), H = q.size(1);
    const std::string fn = "PagedCudaKvCache";
    if (hd != head_dim_) {
      throw ShapeError(fn + ": head_dim " + std::to_string(hd) + ", the quantizer's " + std::to_string(head_dim_));
    }
    if (!k.device().is_cuda()) throw UnsupportedError(fn + ": K/V must be CUDA tensors");
    if (length_ > 0 && (B != plan_.batch || Hkv != layout_.num_kv_heads)) {
      throw ShapeError(fn + ": chunk of " + std::to_string(B) + " sequences x " + std::to_string(Hkv) +
                       " kv heads, the cache holds " + std::to_string(plan_.batch) + " x " +
                       std::to_string(layout_.num_kv_heads));
    }
    const int64_t pos0 = length_;
    ensure_capacity(B, Hkv, pos0 + t, k.device());
    write(k, v, pos0, t);
    length_ = pos0 + t;
    if (pos0 == 0) {
      // Prefill into an empty cache: the quantize-dequantized K/V (PackedCudaKvCacheQuant, the very
      // values just written) through the fused attention, O(T^2) on tensor cores instead of the decode
      // kernel's CUDA-core loops.
      return causal_attention(q, k_transform_->apply(k), v_transform_->apply(v), spec);
    }
    return decode_attention(q, pos0, t, H, spec.dtype);
  }

  int64_t length() const override { return length_; }
  void truncate(int64_t len) override { length_ = std::min(length_, std::max<int64_t>(0, len)); }
  void reset() override {
    k_cache_ = at::Tensor();
    v_cache_ = at::Tensor();
    block_tables_ = at::Tensor();
    plan_ = PagedKvPlan{};
    layout_ = gpu::KvCacheLayout{};
    length_ = 0;
  }
  void reserve(int64_t positions) override { reserved_ = std::max<int64_t>(reserved_, positions); }
  int64_t bytes() const override {
    if (plan_.batch == 0) return 0;
    return 2 * plan_.batch * paged_kv_blocks_for(length_) * layout_.num_kv_heads * layout_.head_block_bytes();
  }
  at::Tensor keys(at::ScalarType dtype, const at::Device& device) const override { return read(k_cache_, dtype, device); }
  at::Tensor values(at::ScalarType dtype, const at::Device& device) const override {
    return read(v_cache_, dtype, device);
  }
  bool packed() const override { return true; }
  const char* name() const override { return "paged-cuda"; }

 private:
  // Buffers for B sequences of `positions` positions, growing blocks_per_seq geometrically; a
  // sequence's blocks are one contiguous byte range, so growth copies B ranges.
  void ensure_capacity(int64_t B, int64_t Hkv, int64_t positions, const at::Device& device) {
    const int64_t need = paged_kv_blocks_for(std::max(positions, reserved_));
    if (plan_.batch == B && plan_.blocks_per_seq >= paged_kv_blocks_for(positions)) return;
    const int64_t blocks = plan_.batch == B ? std::max(need, 2 * plan_.blocks_per_seq) : need;
    gpu::KvCacheLayout layout{B * blocks, Hkv, head_dim_, r_h_};
    gpu::check_kv_cache_layout(layout, "PagedCudaKvCache");
    const auto opts = at::TensorOptions().dtype(at::kByte).device(device);
    at::Tensor k_new = at::zeros({layout.buffer_bytes()}, opts), v_new = at::zeros({layout.buffer_bytes()}, opts);
    if (plan_.batch == B && length_ > 0) {
      for (const PagedKvPlan::ByteMove& m : plan_.regrow_moves(blocks, Hkv * layout.head_block_bytes())) {
        k_new.narrow(0, m.dst, m.bytes).copy_(k_cache_.narrow(0, m.src, m.bytes));
        v_new.narrow(0, m.dst, m.bytes).copy_(v_cache_.narrow(0, m.src, m.bytes));
      }
    }
    k_cache_ = k_new;
    v_cache_ = v_new;
    layout_ = layout;
    plan_.batch = B;
    plan_.blocks_per_seq = blocks;
    block_tables_ = at::Tensor();  // rebuilt for the new plan
  }

  // K/V rows of positions [pos0, pos0 + t) into their slots.
  void write(const at::Tensor& k, const at::Tensor& v, int64_t pos0, int64_t t) {
    const int64_t B = k.size(0), Hkv = k.size(1), hd = k.size(3);
    // [B, Hkv, t, hd] -> rows (b, i) of [Hkv * hd]: the kernel's token rows.
    const bool bf16 = k.scalar_type() == at::kBFloat16;
    const at::ScalarType st = bf16 ? at::kBFloat16 : at::kFloat;
    const at::Tensor kr = k.to(st).transpose(1, 2).contiguous(), vr = v.to(st).transpose(1, 2).contiguous();
    // PagedKvPlan::chunk_slots computed on the device: slot(b, pos0 + i) = b * blocks_per_seq * 16 +
    // pos0 + i, rows ordered (b, i). A host vector would need a copy from pageable memory per layer
    // and step, which synchronizes the stream and stalls decoding.
    const auto lopts = at::TensorOptions().dtype(at::kLong).device(k.device());
    const at::Tensor slot_dev = (at::arange(B, lopts).mul_(plan_.blocks_per_seq * gpu::kKvBlockTokens).unsqueeze(1) +
                                 at::arange(pos0, pos0 + t, lopts).unsqueeze(0))
                                    .reshape({B * t})
                                    .contiguous();
    auto* kc = k_cache_.data_ptr<uint8_t>();
    auto* vc = v_cache_.data_ptr<uint8_t>();
    if (bf16) {
      gpu::kv_cache_write_bf16_cuda(static_cast<const uint16_t*>(kr.data_ptr()), static_cast<const uint16_t*>(vr.data_ptr()),
                                    B * t, Hkv * hd, slot_dev.data_ptr<int64_t>(), layout_, k_clip_, v_clip_, kc, vc,
                                    kStream);
    } else {
      gpu::kv_cache_write_cuda(kr.data_ptr<float>(), vr.data_ptr<float>(), B * t, Hkv * hd,
                               slot_dev.data_ptr<int64_t>(), layout_, k_clip_, v_clip_, kc, vc, kStream);
    }
  }

  // Queries of positions [pos0, pos0 + t) against the cached rows through the decode kernel.
  at::Tensor decode_attention(const at::Tensor& q, int64_t pos0, int64_t t, int64_t H, at::ScalarType dtype) {
    const int64_t B = q.size(0), hd = q.size(3);
    at::Tensor tables, lens;
    if (t == 1) {
      if (!block_tables_.defined()) {
        std::vector<int32_t> bt, cl;
        plan_.chunk_queries(0, 1, &bt, &cl);
        block_tables_ = int_tensor(bt, q.device());
      }
      tables = block_tables_;
      lens = at::full({B}, pos0 + 1, at::TensorOptions().dtype(at::kInt).device(q.device()));
    } else {
      std::vector<int32_t> bt, cl;
      plan_.chunk_queries(pos0, t, &bt, &cl);
      tables = int_tensor(bt, q.device());
      lens = int_tensor(cl, q.device());
    }
    const at::Tensor qf = q.to(at::kFloat).transpose(1, 2).contiguous();  // [B, t, H, hd] = [seqs][Hq][hd]
    at::Tensor out = at::empty({B * t, H, hd}, qf.options());
    gpu::KvDecodeArgs a;
    a.num_seqs = B * t;
    a.num_q_heads = H;
    a.max_blocks_per_seq = plan_.blocks_per_seq;
    a.q = qf.data_ptr<float>();
    a.block_tables = tables.data_ptr<int32_t>();
    a.context_lens = lens.data_ptr<int32_t>();
    a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    a.out = out.data_ptr<float>();
    gpu::kv_decode_attention_cuda(a, layout_, k_cache_.data_ptr<uint8_t>(), v_cache_.data_ptr<uint8_t>(), kStream);
    return out.view({B, t, H * hd}).to(dtype);
  }

  // Dequantized [B, Hkv, length, hd] (tests and inspection): the buffer is copied to the host and
  // read with the layout's reference dequantization.
  at::Tensor read(const at::Tensor& cache, at::ScalarType dtype, const at::Device& device) const {
    const int64_t B = plan_.batch, Hkv = layout_.num_kv_heads, hd = head_dim_;
    at::Tensor out = at::zeros({B, Hkv, length_, hd}, at::TensorOptions().dtype(at::kFloat));
    if (B == 0 || length_ == 0) return out.to(device, dtype);
    const at::Tensor host = cache.to(at::kCPU);
    float* o = out.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < Hkv; ++h) {
        for (int64_t p = 0; p < length_; ++p) {
          gpu::kv_dequantize_row_reference(host.data_ptr<uint8_t>(), layout_, plan_.slot(b, p), h,
                                           o + ((b * Hkv + h) * length_ + p) * hd);
        }
      }
    }
    return out.to(device, dtype);
  }

  std::shared_ptr<TensorTransform> k_transform_, v_transform_;
  int64_t head_dim_ = 0, r_h_ = 0;
  float k_clip_ = 1.0f, v_clip_ = 1.0f;
  gpu::KvCacheLayout layout_{};
  PagedKvPlan plan_{};
  at::Tensor k_cache_, v_cache_;  // uint8 [layout_.buffer_bytes()]
  at::Tensor block_tables_;       // int32 [B][blocks_per_seq] of the current plan (decode steps)
  int64_t length_ = 0;
  int64_t reserved_ = 0;
};

}  // namespace

std::unique_ptr<LayerKvCache> make_paged_cuda_kv_cache(std::shared_ptr<TensorTransform> k_quant,
                                                       std::shared_ptr<TensorTransform> v_quant) {
  return std::make_unique<PagedCudaKvCache>(std::move(k_quant), std::move(v_quant));
}

}  // namespace resq

#else  // !RESQ_HAVE_CUDA

namespace resq {

std::unique_ptr<LayerKvCache> make_paged_cuda_kv_cache(std::shared_ptr<TensorTransform>, std::shared_ptr<TensorTransform>) {
  return nullptr;
}

}  // namespace resq

#endif
