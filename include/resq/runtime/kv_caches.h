// The packed K/V caches of incremental decoding (resq/model/kv_cache.h's interface): 4/8-bit rows on
// the CPU, the paged 4/8-bit cache on CUDA, and the one place that picks a layer's cache.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

#include "cpu/quantize.h"
#include "resq/model/decoder.h"
#include "resq/model/kv_cache.h"

namespace resq {

class PackedKvCacheQuant;

// The cache DecodeSession keeps for layer `layer` of `decoder`, from the layer's cache transforms:
//   - PackedKvCacheQuant (CPU integer runtime) -> PackedRowsKvCache;
//   - PackedCudaKvCacheQuant (GPU runtime) -> the paged CUDA cache (make_paged_cuda_kv_cache), unless
//     the model has a sliding window shorter than its context, which the decode kernel does not
//     implement: then a DenseKvCache over the same transforms (bit-identical values, float storage);
//   - anything else (simulated fake quant, fp models) -> DenseKvCache over the transforms.
std::unique_ptr<LayerKvCache> make_layer_kv_cache(const Decoder& decoder, int64_t layer);

// Packed 4/8-bit rows on the host, ordered (position, batch, kv head): row = one (token, head), the
// first hd - r_h channels 4-bit (two per byte, low nibble first), the last r_h 8-bit, per-row
// scale/zero per part (format/packed.h). Attention reads them dequantized (s * (q - z)): exactly the
// values PackedKvCacheQuant::apply gives the full forward (the quantization is per row, so appending
// is exact).
class PackedRowsKvCache : public LayerKvCache {
 public:
  PackedRowsKvCache(std::shared_ptr<const PackedKvCacheQuant> k_quant, std::shared_ptr<const PackedKvCacheQuant> v_quant);
  at::Tensor append_and_attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const AttentionSpec& spec) override;
  int64_t length() const override { return length_; }
  void truncate(int64_t len) override;
  void reset() override;
  int64_t bytes() const override;
  at::Tensor keys(at::ScalarType dtype, const at::Device& device) const override;
  at::Tensor values(at::ScalarType dtype, const at::Device& device) const override;
  bool packed() const override { return true; }
  const char* name() const override { return "packed-rows"; }
  const cpu::QuantizedActivations& key_rows() const { return k_rows_; }
  const cpu::QuantizedActivations& value_rows() const { return v_rows_; }

 private:
  at::Tensor read(const PackedKvCacheQuant& quant, const cpu::QuantizedActivations& rows, at::ScalarType dtype,
                  const at::Device& device) const;
  std::shared_ptr<const PackedKvCacheQuant> k_quant_, v_quant_;
  cpu::QuantizedActivations k_rows_, v_rows_;
  int64_t length_ = 0, B_ = 0, Hkv_ = 0, hd_ = 0;
};

// Paged-cache index plan (plain arithmetic, shared by the CUDA cache and its host tests). Every
// sequence b owns the contiguous physical blocks [b * blocks_per_seq, (b + 1) * blocks_per_seq), so
// position p of sequence b lives in slot b * blocks_per_seq * 16 + p, and growing blocks_per_seq
// moves each sequence's blocks as one range.
struct PagedKvPlan {
  int64_t batch = 0;
  int64_t blocks_per_seq = 0;
  int64_t slot(int64_t seq, int64_t pos) const;  // block * 16 + row
  // Slots of a chunk: tokens ordered (b, i) for positions [pos0, pos0 + t), as the rows of k
  // [B, t, Hkv, hd] that the cache write reads.
  std::vector<int64_t> chunk_slots(int64_t pos0, int64_t t) const;
  // Attention of a chunk through the decode kernel: query (b, i) at position pos0 + i is one
  // "sequence" with sequence b's block table and context length pos0 + i + 1 (so causality needs no
  // mask). block_tables int32 [B * t][blocks_per_seq], context_lens int32 [B * t].
  void chunk_queries(int64_t pos0, int64_t t, std::vector<int32_t>* block_tables, std::vector<int32_t>* context_lens) const;
  // Growing to `blocks_per_seq_new` (same batch) moves sequence b's bytes [b * old, b * old + old)
  // to b * new, where old / new = blocks per sequence * bytes per block (all kv heads): the copies.
  struct ByteMove {
    int64_t src = 0, dst = 0, bytes = 0;
  };
  std::vector<ByteMove> regrow_moves(int64_t blocks_per_seq_new, int64_t block_bytes) const;
};
// Blocks per sequence for `positions` positions (at least 1).
int64_t paged_kv_blocks_for(int64_t positions);

// The paged CUDA cache (null when this binary has no CUDA kernels): K and V of every (sequence,
// position, kv head) written by kv_cache_write_cuda in the KvCacheLayout of kernels/cuda/kv_cache_layout.h
// (bit-identical to PackedCudaKvCacheQuant's quantization), attention by kv_decode_attention_cuda
// reading the 4/8-bit rows directly; a prefill chunk into an empty cache attends with the layer's fused
// attention over the same quantize-dequantized K/V instead (the decode kernel is O(T^2) on CUDA cores).
// k_quant / v_quant: the layer's PackedCudaKvCacheQuant transforms (head_dim, r_h, clip).
std::unique_ptr<LayerKvCache> make_paged_cuda_kv_cache(std::shared_ptr<TensorTransform> k_quant,
                                                       std::shared_ptr<TensorTransform> v_quant);

}  // namespace resq
