// Tests of the layout (resq/format/layout.h), the one owner of the 8-bit subspace convention: the
// high columns, packed permutation, r / r_h / r_ffn and storage of every site for real model shapes
// and recipe parameters, against expectations computed by hand (not by the functions under test).
#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "common/model_shapes.h"
#include "resq/common/error.h"
#include "resq/format/layout.h"

namespace resq::format {
namespace {

// stories260K (../shared/models/stories260K/config.json): d 64, 8 heads x 8, 4 kv heads, ffn 172.
ModelConfig stories260k() {
  return test::llama_config({/*hidden*/ 64, /*ffn*/ 172, /*layers*/ 5, /*heads*/ 8, /*kv_heads*/ 4, /*head_dim*/ 8,
                             /*vocab*/ 512});
}

// Llama-3-8B: d 4096, 32 heads x 128, 8 kv heads, ffn 14336.
ModelConfig llama3_8b() {
  return test::llama_config({/*hidden*/ 4096, /*ffn*/ 14336, /*layers*/ 32, /*heads*/ 32, /*kv_heads*/ 8,
                             /*head_dim*/ 128, /*vocab*/ 128256});
}

std::vector<int64_t> range(int64_t a, int64_t b) {
  std::vector<int64_t> v(static_cast<size_t>(b - a));
  std::iota(v.begin(), v.end(), a);
  return v;
}

TEST(Layout, Stories260KUnderResqKeepsTheLast8Of64ColumnsHigh) {
  const ModelLayout L = model_layout(stories260k(), LayoutParams{});  // resq.json: 1/8, 4/8, down all 4-bit
  EXPECT_EQ(L.r, 8);
  EXPECT_EQ(L.r_h, 1);
  EXPECT_EQ(L.r_ffn, 22);  // round(172 / 8 = 21.5) = 22 (half away from zero)
  ASSERT_EQ(L.sites.size(), 7u);
  for (SiteKind k : {SiteKind::kQ, SiteKind::kK, SiteKind::kV, SiteKind::kGate, SiteKind::kUp}) {
    const SiteSpec& s = L.sites.at(k);
    SCOPED_TRACE(site_name(k));
    EXPECT_EQ(s.K, 64);
    EXPECT_EQ(s.high_rule, HighRule::kLast);
    EXPECT_EQ(s.high_columns(), range(56, 64));
    EXPECT_EQ(s.K8(), 8);
    EXPECT_EQ(s.K4(), 56);
    EXPECT_FALSE(s.permuted());
    EXPECT_EQ(s.activations.high_count, 8);
    EXPECT_EQ(s.storage, LinearStorage::kPacked);
    EXPECT_EQ(s.weight_bits_low, 4);
    EXPECT_EQ(s.weight_bits_high, 8);
  }
  EXPECT_EQ(L.sites.at(SiteKind::kQ).N, 64);
  EXPECT_EQ(L.sites.at(SiteKind::kK).N, 32);  // 4 kv heads x 8
  EXPECT_EQ(L.sites.at(SiteKind::kGate).N, 172);
}

TEST(Layout, Stories260KOProjKeepsTheLastChannelOfEveryHeadHigh) {
  const ModelLayout L = model_layout(stories260k(), LayoutParams{});
  const SiteSpec& o = L.sites.at(SiteKind::kO);
  EXPECT_EQ(o.N, 64);
  EXPECT_EQ(o.K, 64);
  EXPECT_EQ(o.high_rule, HighRule::kPerHead);
  EXPECT_EQ(o.high_group, 8);
  EXPECT_EQ(o.high_count, 1);
  EXPECT_EQ(o.high_columns(), (std::vector<int64_t>{7, 15, 23, 31, 39, 47, 55, 63}));
  EXPECT_EQ(o.K8(), 8);
  EXPECT_TRUE(o.permuted());
  // Low columns ascending (every column but 8h + 7), then the eight high columns.
  std::vector<int32_t> want;
  for (int32_t k = 0; k < 64; ++k)
    if (k % 8 != 7) want.push_back(k);
  for (int32_t h = 0; h < 8; ++h) want.push_back(8 * h + 7);
  EXPECT_EQ(o.packed_column_order(), want);
  EXPECT_EQ(o.activation_high_columns(), o.high_columns());
}

TEST(Layout, DownProjIsAllLowUnlessDownHigh) {
  LayoutParams p;
  const SiteSpec down = model_layout(stories260k(), p).sites.at(SiteKind::kDown);
  EXPECT_EQ(down.K, 172);
  EXPECT_EQ(down.K8(), 0);
  EXPECT_TRUE(down.high_columns().empty());
  EXPECT_EQ(describe_high_columns(down), "none");
  p.weight_down_high = true;  // weights only: the activation split follows activation_down_high
  const SiteSpec w = model_layout(stories260k(), p).sites.at(SiteKind::kDown);
  EXPECT_EQ(w.high_columns(), range(150, 172));
  EXPECT_EQ(w.activations.high_count, 0);
  EXPECT_TRUE(w.activation_high_columns().empty());
}

TEST(Layout, Llama3SplitsAsThePaper) {
  const ModelLayout L = model_layout(llama3_8b(), LayoutParams{});
  EXPECT_EQ(L.r, 512);
  EXPECT_EQ(L.r_h, 16);
  const SiteSpec& q = L.sites.at(SiteKind::kQ);
  EXPECT_EQ(q.high_columns().front(), 4096 - 512);
  const SiteSpec& o = L.sites.at(SiteKind::kO);
  EXPECT_EQ(o.K8(), 32 * 16);
  const auto perm = o.packed_column_order();
  EXPECT_EQ(perm[0], 0);
  EXPECT_EQ(perm[111], 111);
  EXPECT_EQ(perm[112], 128);         // head 0's channels 112..127 are high: the next low column is head 1's first
  EXPECT_EQ(perm[o.K4()], 112);      // first high column: head 0, channel 128 - 16
  EXPECT_EQ(perm[o.K4() + 16], 240);  // head 1's first high column
  EXPECT_EQ(perm.back(), 4095);
}

TEST(Layout, ZeroFractionHasNoHighColumnsAndNoPermutation) {
  LayoutParams quarot;  // quarot.json / rtn-w4a4kv4.json: high_fraction 0, bits 4/4
  quarot.high_fraction = 0.0;
  quarot.weight_bits_high = 4;
  quarot.activation_bits_high = 4;
  const ModelLayout L = model_layout(stories260k(), quarot);
  EXPECT_EQ(L.r, 0);
  EXPECT_EQ(L.r_h, 0);
  for (const auto& [kind, s] : L.sites) {
    SCOPED_TRACE(site_name(kind));
    EXPECT_EQ(s.K8(), 0);
    EXPECT_FALSE(s.permuted());
    EXPECT_EQ(s.storage, LinearStorage::kPacked);
  }
}

TEST(Layout, StorageFollowsTheWeightBits) {
  LayoutParams fp;  // fp.json: weights not quantized, activations off
  fp.high_fraction = 0.0;
  fp.weights_quantized = false;
  fp.activations_enabled = false;
  for (const auto& [kind, s] : model_layout(stories260k(), fp).sites) {
    EXPECT_EQ(s.storage, LinearStorage::kDense);
    EXPECT_EQ(s.weight_bits_low, 16);
    EXPECT_EQ(s.weight_bits_high, 16);
    EXPECT_FALSE(s.activations.enabled);
  }
  LayoutParams wide;  // 6-bit low part: does not fit the 4-bit container
  wide.weight_bits_low = 6;
  EXPECT_EQ(model_layout(stories260k(), wide).sites.at(SiteKind::kQ).storage, LinearStorage::kDense);
}

TEST(Layout, BiasesFollowTheConfig) {
  ModelConfig c = stories260k();
  c.qkv_bias = true;  // Qwen2
  const ModelLayout L = model_layout(c, LayoutParams{});
  EXPECT_TRUE(L.sites.at(SiteKind::kQ).has_bias);
  EXPECT_TRUE(L.sites.at(SiteKind::kV).has_bias);
  EXPECT_FALSE(L.sites.at(SiteKind::kO).has_bias);
  EXPECT_FALSE(L.sites.at(SiteKind::kDown).has_bias);
  c.mlp_bias = true;
  EXPECT_TRUE(site_has_bias(c, SiteKind::kDown));
}

TEST(Layout, RankRoundsHalfAwayFromZero) {
  EXPECT_EQ(high_rank(0.125, 64), 8);
  EXPECT_EQ(high_rank(0.125, 12), 2);  // 1.5
  EXPECT_EQ(high_rank(0.125, 4), 1);   // 0.5
  EXPECT_EQ(high_rank(0.0, 4096), 0);
  EXPECT_TRUE(high_rank_is_exact(0.125, 4096));
  EXPECT_FALSE(high_rank_is_exact(0.125, 12));
}

TEST(Layout, RuleHelpers) {
  EXPECT_EQ(high_columns(HighRule::kLast, 5, 0, 0), std::vector<int64_t>{});
  EXPECT_EQ(high_columns(HighRule::kLast, 5, 0, 5), range(0, 5));
  EXPECT_EQ(high_columns(HighRule::kPerHead, 6, 3, 1), (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(packed_column_order(HighRule::kPerHead, 6, 3, 1), (std::vector<int32_t>{0, 1, 3, 4, 2, 5}));
  EXPECT_EQ(high_column_count(HighRule::kPerHead, 6, 0, 1), 0);
  EXPECT_EQ(std::string(high_rule_name(HighRule::kPerHead)), "per_head");
  EXPECT_EQ(parse_high_rule("last"), HighRule::kLast);
  EXPECT_FALSE(parse_high_rule("first").has_value());
}

TEST(Layout, TensorNames) {
  EXPECT_EQ(site_prefix(3, SiteKind::kQ), "model.layers.3.self_attn.q_proj");
  EXPECT_EQ(site_prefix(0, SiteKind::kDown), "model.layers.0.mlp.down_proj");
  const SiteTensorNames n = site_tensor_names(2, SiteKind::kO);
  EXPECT_EQ(n.qweight4, "model.layers.2.self_attn.o_proj.qweight4");
  EXPECT_EQ(n.perm, "model.layers.2.self_attn.o_proj.perm");
  EXPECT_EQ(input_norm_tensor(1), "model.layers.1.input_layernorm.weight");
  EXPECT_EQ(post_attention_norm_tensor(1), "model.layers.1.post_attention_layernorm.weight");
  EXPECT_EQ(qk_rotation_tensor(4), "resq.layers.4.qk_rotation");
  EXPECT_EQ(parse_site_name("up_proj", "x"), SiteKind::kUp);
  EXPECT_THROW(parse_site_name("w_proj", "x"), FormatError);
}

TEST(Layout, DescribesTheHighColumns) {
  const ModelLayout L = model_layout(stories260k(), LayoutParams{});
  EXPECT_EQ(describe_high_columns(L.sites.at(SiteKind::kQ)), "last 8 of 64");
  EXPECT_EQ(describe_high_columns(L.sites.at(SiteKind::kO)), "last 1 of every 8 (per head), permuted");
}

}  // namespace
}  // namespace resq::format
