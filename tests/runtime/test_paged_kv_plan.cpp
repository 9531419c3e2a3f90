// Host emulation of the paged CUDA KV cache (PagedKvPlan slots, block tables, context lengths and
// regrowth, with the layout's reference write / decode attention in place of the kernels) against
// the packed-rows CPU cache, which stores the same quantization in token order.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "resq/common/error.h"
#include "cuda/kv_cache_layout.h"
#include "resq/model/attention.h"
#include "resq/runtime/kv_caches.h"
#include "resq/runtime/packed_model.h"

namespace resq {
namespace {

// What PagedCudaKvCache does, step for step, on host buffers.
struct HostPagedCache {
  int64_t hd = 0, r_h = 0;
  float clip = 1.0f;
  PagedKvPlan plan;
  gpu::KvCacheLayout layout{};
  std::vector<uint8_t> k, v;
  int64_t length = 0;

  void ensure(int64_t B, int64_t Hkv, int64_t positions, int64_t reserved) {
    const int64_t need = paged_kv_blocks_for(std::max(positions, reserved));
    if (plan.batch == B && plan.blocks_per_seq >= paged_kv_blocks_for(positions)) return;
    const int64_t blocks = plan.batch == B ? std::max(need, 2 * plan.blocks_per_seq) : need;
    gpu::KvCacheLayout nl{B * blocks, Hkv, hd, r_h};
    std::vector<uint8_t> nk(static_cast<size_t>(nl.buffer_bytes()), 0), nv(nk.size(), 0);
    if (plan.batch == B && length > 0) {
      for (const auto& m : plan.regrow_moves(blocks, Hkv * nl.head_block_bytes())) {
        std::memcpy(nk.data() + m.dst, k.data() + m.src, static_cast<size_t>(m.bytes));
        std::memcpy(nv.data() + m.dst, v.data() + m.src, static_cast<size_t>(m.bytes));
      }
    }
    k.swap(nk);
    v.swap(nv);
    layout = nl;
    plan.batch = B;
    plan.blocks_per_seq = blocks;
  }

  // q [B, H, t, hd], kk/vv [B, Hkv, t, hd] float32 -> attention [B, t, H*hd] of the chunk through the
  // decode reference (positions > 0); the first chunk returns an undefined tensor (the CUDA cache
  // takes the fused path there, which the packed-rows cache reproduces exactly).
  at::Tensor append(const at::Tensor& q, const at::Tensor& kk, const at::Tensor& vv, int64_t reserved) {
    const int64_t B = kk.size(0), Hkv = kk.size(1), t = kk.size(2), H = q.size(1);
    const int64_t pos0 = length;
    ensure(B, Hkv, pos0 + t, reserved);
    const std::vector<int64_t> slots = plan.chunk_slots(pos0, t);
    const at::Tensor kr = kk.transpose(1, 2).contiguous(), vr = vv.transpose(1, 2).contiguous();  // [B, t, Hkv, hd]
    gpu::kv_write_reference(kr.data_ptr<float>(), B * t, Hkv * hd, slots.data(), layout, clip, k.data());
    gpu::kv_write_reference(vr.data_ptr<float>(), B * t, Hkv * hd, slots.data(), layout, clip, v.data());
    length = pos0 + t;
    if (pos0 == 0) return at::Tensor();
    std::vector<int32_t> tables, lens;
    plan.chunk_queries(pos0, t, &tables, &lens);
    const at::Tensor qf = q.transpose(1, 2).contiguous();  // [B, t, H, hd]
    at::Tensor out = at::zeros({B * t, H, hd});
    gpu::KvDecodeArgs a;
    a.num_seqs = B * t;
    a.num_q_heads = H;
    a.max_blocks_per_seq = plan.blocks_per_seq;
    a.q = qf.data_ptr<float>();
    a.block_tables = tables.data();
    a.context_lens = lens.data();
    a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
    a.out = out.data_ptr<float>();
    gpu::kv_decode_attention_reference(a, layout, k.data(), v.data());
    return out.view({B, t, H * hd});
  }

  at::Tensor read(const std::vector<uint8_t>& cache) const {  // [B, Hkv, length, hd]
    const int64_t B = plan.batch, Hkv = layout.num_kv_heads;
    at::Tensor out = at::zeros({B, Hkv, length, hd});
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t p = 0; p < length; ++p)
          gpu::kv_dequantize_row_reference(cache.data(), layout, plan.slot(b, p), h,
                                           out.data_ptr<float>() + ((b * Hkv + h) * length + p) * hd);
    return out;
  }
};

struct PlanCase {
  int64_t B, H, Hkv, hd, r_h, reserved;
  std::vector<int64_t> chunks;  // tokens per step
};

TEST(PagedKvPlan, HostEmulationMatchesPackedRowsCache) {
  const std::vector<PlanCase> cases = {
      {2, 4, 2, 16, 2, 0, {5, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}},  // growth at 16, GQA
      {1, 8, 1, 8, 1, 0, {17, 1, 1, 15, 1, 2}},                                              // MQA, blocks cross
      {3, 3, 3, 13, 0, 64, {1, 1, 20, 1}},                                                   // MHA, r_h 0, odd hd, reserved
      {1, 2, 2, 24, 24, 0, {33, 1, 1}},                                                      // all 8-bit
  };
  for (const PlanCase& c : cases) {
    SCOPED_TRACE("B " + std::to_string(c.B) + " H " + std::to_string(c.H) + " Hkv " + std::to_string(c.Hkv) + " hd " +
                 std::to_string(c.hd) + " r_h " + std::to_string(c.r_h));
    at::manual_seed(11);
    auto quant = std::make_shared<const PackedKvCacheQuant>(c.hd, c.r_h, 1.0f);
    PackedRowsKvCache rows(quant, quant);
    HostPagedCache paged;
    paged.hd = c.hd;
    paged.r_h = c.r_h;
    AttentionSpec spec;
    int64_t pos = 0;
    for (int64_t t : c.chunks) {
      const at::Tensor q = at::randn({c.B, c.H, t, c.hd}), k = at::randn({c.B, c.Hkv, t, c.hd});
      const at::Tensor v = at::randn({c.B, c.Hkv, t, c.hd}) * 3.0;
      const at::Tensor want = rows.append_and_attend(q, k, v, spec);  // [B, t, H*hd]
      const at::Tensor got = paged.append(q, k, v, c.reserved);
      pos += t;
      // The stored rows: every slot the plan maps equals the packed-rows cache bit for bit.
      ASSERT_TRUE(at::equal(paged.read(paged.k), rows.keys(at::kFloat, at::kCPU))) << "keys after position " << pos;
      ASSERT_TRUE(at::equal(paged.read(paged.v), rows.values(at::kFloat, at::kCPU))) << "values after position " << pos;
      if (!got.defined()) continue;
      // Attention: same values, different fp32 summation order (the kernels' own tests bound it the same way).
      const double err = (got - want).abs().max().item<double>();
      const double scale = v.abs().max().item<double>();
      EXPECT_LE(err, 4e-6 * scale) << "attention after position " << pos;
    }
    EXPECT_EQ(paged.length, rows.length());
  }
}

TEST(PagedKvPlan, SlotsTablesAndMoves) {
  PagedKvPlan p{2, 3};  // 2 sequences x 3 blocks of 16
  EXPECT_EQ(p.slot(0, 0), 0);
  EXPECT_EQ(p.slot(1, 0), 48);
  EXPECT_EQ(p.slot(1, 17), 65);
  EXPECT_EQ(p.chunk_slots(15, 2), (std::vector<int64_t>{15, 16, 63, 64}));
  std::vector<int32_t> tables, lens;
  p.chunk_queries(4, 2, &tables, &lens);
  EXPECT_EQ(tables, (std::vector<int32_t>{0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5}));
  EXPECT_EQ(lens, (std::vector<int32_t>{5, 6, 5, 6}));
  const auto moves = p.regrow_moves(5, 100);
  ASSERT_EQ(moves.size(), 2u);
  EXPECT_EQ(moves[1].src, 300);
  EXPECT_EQ(moves[1].dst, 500);
  EXPECT_EQ(moves[1].bytes, 300);
  EXPECT_THROW(p.regrow_moves(2, 100), ShapeError);
  EXPECT_EQ(paged_kv_blocks_for(0), 1);
  EXPECT_EQ(paged_kv_blocks_for(16), 1);
  EXPECT_EQ(paged_kv_blocks_for(17), 2);
}

TEST(AttentionCore, ChunkRowsEqualTheFullForwardsRows) {
  // A later chunk (queries at [L - t, L)) sees what the same rows of the full causal attention see.
  at::manual_seed(3);
  const int64_t B = 2, H = 6, Hkv = 2, L = 19, hd = 8, t = 4;
  const at::Tensor q = at::randn({B, H, L, hd}, at::kDouble), k = at::randn({B, Hkv, L, hd}, at::kDouble);
  const at::Tensor v = at::randn({B, Hkv, L, hd}, at::kDouble);
  for (const std::optional<int64_t> window : {std::optional<int64_t>(), std::optional<int64_t>(5)}) {
    AttentionSpec spec;
    spec.dtype = at::kDouble;
    spec.window = window;
    const at::Tensor full = causal_attention(q, k, v, spec);                      // [B, L, H*hd]
    const at::Tensor chunk = causal_attention(q.narrow(2, L - t, t), k, v, spec);  // [B, t, H*hd]
    EXPECT_LE((full.narrow(1, L - t, t) - chunk).abs().max().item<double>(), 1e-13);
  }
  // The mask: query L - t + i sees key j iff j <= L - t + i (and within the window).
  const at::Tensor m = attention_mask(2, 5, 2, at::kFloat, at::kCPU);
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> want = {-inf, -inf, 0, 0, -inf, -inf, -inf, -inf, 0, 0};
  EXPECT_TRUE(at::equal(m, at::tensor(want).view({2, 5})));
  if (!fused_attention_compiled()) {
    AttentionSpec spec;
    spec.path = AttentionPath::kFused;
    EXPECT_THROW(causal_attention(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), spec), UnsupportedError);
  }
  EXPECT_THROW(causal_attention(q, k.narrow(1, 0, 1).repeat({1, 4, 1, 1}), v, AttentionSpec{}), ShapeError);
}

}  // namespace
}  // namespace resq
