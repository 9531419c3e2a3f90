// Host tests of the quantized paged KV cache (kernels/cuda/kv_cache_layout.h): layout math (regions
// aligned, byte offsets a bijection onto the buffer), the decode kernel's lane -> channel mapping,
// kv_write_reference against cpu::quantize_activations_reference (what PackedKvCacheQuant stores),
// kv_decode_attention_reference and a host emulation of the decode kernel (its warp / lane / online
// softmax decomposition) against a float64 attention over rows dequantized from the CPU
// quantizer's own output (so the paging / block-table path is checked too); GQA, ragged lengths,
// error paths. No GPU needed: plain C++. Fixed seeds.
#include "cuda/kv_cache_layout.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "cpu/quantize.h"

namespace {

using namespace resq::gpu;  // NOLINT
using resq::format::packed4_row_bytes;

// Shapes covering Llama-style heads (hd 128 / 64, r_h = hd / 8), stories260K (hd 8, r_h 1), an odd
// 4-bit part, and the two one-part extremes.
struct Shape {
  int64_t hd, r_h;
};
const Shape kShapes[] = {{128, 16}, {64, 8}, {8, 1}, {13, 2}, {32, 0}, {24, 24}, {256, 32}};

// ------------------------------------------------------------------ layout math

TEST(KvCacheLayout, RegionsAreAlignedAndSized) {
  for (const Shape& sh : kShapes) {
    const KvCacheLayout l{3, 2, sh.hd, sh.r_h};
    SCOPED_TRACE("hd " + std::to_string(sh.hd) + " r_h " + std::to_string(sh.r_h));
    EXPECT_EQ(l.hd4() + l.hd8(), sh.hd);
    EXPECT_GE(l.ld4(), (sh.hd - sh.r_h + 1) / 2);
    EXPECT_LT(l.ld4(), (sh.hd - sh.r_h + 1) / 2 + 16);
    EXPECT_GE(l.ld8(), sh.r_h);
    EXPECT_LT(l.ld8(), sh.r_h + 16);
    for (int64_t off : {l.ld4(), l.ld8(), l.q8_offset(), l.s4_offset(), l.z4_offset(), l.s8_offset(),
                        l.z8_offset(), l.head_block_bytes()}) {
      EXPECT_EQ(off % 16, 0) << off;
    }
    // Regions in order, each of its stated size.
    EXPECT_EQ(l.q4_offset(), 0);
    EXPECT_EQ(l.q8_offset(), 16 * l.ld4());
    EXPECT_EQ(l.s4_offset(), l.q8_offset() + 16 * l.ld8());
    EXPECT_EQ(l.z4_offset(), l.s4_offset() + 64);
    EXPECT_EQ(l.s8_offset(), l.z4_offset() + 64);
    EXPECT_EQ(l.z8_offset(), l.s8_offset() + 64);
    EXPECT_EQ(l.head_block_bytes(), 16 * (l.ld4() + l.ld8()) + 4 * 64);
    EXPECT_EQ(l.buffer_bytes(), 3 * 2 * l.head_block_bytes());
  }
  // The plan's figure: hd 128 with r_h 16 -> 56-byte 4-bit rows padded to 64.
  const KvCacheLayout l{1, 1, 128, 16};
  EXPECT_EQ(l.ld4(), 64);
  EXPECT_EQ(l.ld8(), 16);
  EXPECT_EQ(l.head_block_bytes(), 1536);
  EXPECT_EQ(kv_slot_block(37), 2);
  EXPECT_EQ(kv_slot_row(37), 5);
}

// Every byte of the buffer belongs to exactly one (block, head, region, row, byte).
TEST(KvCacheLayout, ByteOffsetsAreABijection) {
  for (const Shape& sh : kShapes) {
    const KvCacheLayout l{4, 3, sh.hd, sh.r_h};
    std::vector<int> hits(static_cast<size_t>(l.buffer_bytes()), 0);
    auto mark = [&](int64_t off, int64_t n) {
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_LT(off + i, l.buffer_bytes());
        ++hits[static_cast<size_t>(off + i)];
      }
    };
    for (int64_t b = 0; b < l.num_blocks; ++b) {
      for (int64_t h = 0; h < l.num_kv_heads; ++h) {
        const int64_t base = l.head_block_offset(b, h);
        for (int r = 0; r < kKvBlockTokens; ++r) {
          mark(base + l.q4_offset() + r * l.ld4(), l.ld4());
          mark(base + l.q8_offset() + r * l.ld8(), l.ld8());
          for (int64_t region : {l.s4_offset(), l.z4_offset(), l.s8_offset(), l.z8_offset()})
            mark(base + region + 4 * r, 4);
        }
      }
    }
    for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i], 1) << "byte " << i << " hd " << sh.hd;
  }
}

// The decode kernel's lane -> channel map covers [0, hd) once for every supported hd, with the
// smallest power-of-two channels per lane.
TEST(KvCacheLayout, LaneChannelMapCoversHeadDim) {
  for (int64_t hd = 1; hd <= kMaxKvHeadDim; ++hd) {
    const int cpl = kv_channels_per_lane(hd);
    ASSERT_TRUE(cpl == 1 || cpl == 2 || cpl == 4 || cpl == 8) << hd;
    ASSERT_GE(kWarpSize * cpl, hd);
    if (cpl > 1) {
      ASSERT_LT(kWarpSize * cpl / 2, hd) << "not minimal for hd " << hd;
    }
    std::vector<int> hits(static_cast<size_t>(hd), 0);
    for (int lane = 0; lane < kWarpSize; ++lane) {
      for (int i = 0; i < cpl; ++i) {
        const int c = kv_lane_channel(lane, i, cpl);
        ASSERT_GE(c, 0);
        if (c < hd) ++hits[static_cast<size_t>(c)];
      }
    }
    for (int64_t c = 0; c < hd; ++c) ASSERT_EQ(hits[static_cast<size_t>(c)], 1) << "hd " << hd << " c " << c;
  }
  EXPECT_EQ(kv_channels_per_lane(0), 0);
  EXPECT_EQ(kv_channels_per_lane(kMaxKvHeadDim + 1), 0);
  EXPECT_EQ(kv_lane_channel(3, 1, 4), 13);
}

// ------------------------------------------------------------------ helpers

// [tokens][Hkv][hd] rows: normal values with outliers, an all-zero row, an all-positive and an
// all-negative row (the scale/zero edge cases of activation_scale_zero).
std::vector<float> random_kv_rows(int64_t tokens, int64_t Hkv, int64_t hd, int64_t ld, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(tokens * ld), 1e30f);  // padding columns: never read
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < Hkv * hd; ++j)
      x[static_cast<size_t>(t * ld + j)] = normal(rng) * (rng() % 19 == 0 ? 20.0f : 1.0f);
  }
  if (tokens > 3) {
    for (int64_t j = 0; j < hd; ++j) {
      x[static_cast<size_t>(j)] = 0.0f;
      x[static_cast<size_t>(ld + j)] = std::fabs(x[static_cast<size_t>(ld + j)]);
      x[static_cast<size_t>(2 * ld + j)] = -std::fabs(x[static_cast<size_t>(2 * ld + j)]);
    }
  }
  return x;
}

// A distinct slot for every token, scattered over the blocks (shuffled), with every fifth token
// padding (-1) when `with_padding`.
std::vector<int64_t> scattered_slots(int64_t tokens, const KvCacheLayout& l, bool with_padding,
                                     uint32_t seed) {
  std::vector<int64_t> all(static_cast<size_t>(l.num_slots()));
  std::iota(all.begin(), all.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int64_t> slots(all.begin(), all.begin() + tokens);
  if (with_padding) {
    for (int64_t t = 4; t < tokens; t += 5) slots[static_cast<size_t>(t)] = -1;
  }
  return slots;
}

// Independent dequantization (PackedKvCacheQuant::unpack's formula) of one row quantized by
// cpu::quantize_activations_reference: x [hd] -> (quantized outputs, dequantized float row).
struct CpuRow {
  std::vector<uint8_t> xq4, xq8;
  float s4 = 0, s8 = 0;
  int32_t z4 = 0, z8 = 0;
  std::vector<float> deq;
};
CpuRow cpu_quantize_row(const float* x, int64_t hd, int64_t r_h, float clip) {
  CpuRow r;
  const int64_t hd4 = hd - r_h;
  r.xq4.assign(static_cast<size_t>(packed4_row_bytes(hd4)), 0);
  r.xq8.assign(static_cast<size_t>(r_h), 0);
  resq::cpu::quantize_activations_reference(x, 1, hd4, r_h, clip, clip, r.xq4.data(), r.xq8.data(), &r.s4,
                                            &r.z4, &r.s8, &r.z8);
  r.deq.resize(static_cast<size_t>(hd));
  for (int64_t c = 0; c < hd4; ++c) {
    r.deq[static_cast<size_t>(c)] =
        r.s4 * static_cast<float>(resq::format::uint4_get(r.xq4.data(), c) - r.z4);
  }
  for (int64_t c = 0; c < r_h; ++c) {
    r.deq[static_cast<size_t>(hd4 + c)] =
        r.s8 * static_cast<float>(static_cast<int32_t>(r.xq8[static_cast<size_t>(c)]) - r.z8);
  }
  return r;
}

template <typename T>
T read4(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, 4);
  return v;
}

// ------------------------------------------------------------------ write reference

TEST(KvWriteReference, EqualsCpuActivationQuantizer) {
  for (const Shape& sh : kShapes) {
    for (float clip : {1.0f, 0.9f}) {
      SCOPED_TRACE("hd " + std::to_string(sh.hd) + " r_h " + std::to_string(sh.r_h) + " clip " +
                   std::to_string(clip));
      const KvCacheLayout l{5, 3, sh.hd, sh.r_h};
      const int64_t tokens = 37, ld = l.num_kv_heads * sh.hd + 5;
      const std::vector<float> x =
          random_kv_rows(tokens, l.num_kv_heads, sh.hd, ld, 11u + static_cast<uint32_t>(sh.hd));
      const std::vector<int64_t> slots = scattered_slots(tokens, l, true, 7u);
      std::vector<uint8_t> cache(static_cast<size_t>(l.buffer_bytes()), 0xAB);
      kv_write_reference(x.data(), tokens, ld, slots.data(), l, clip, cache.data());
      std::vector<bool> written(static_cast<size_t>(l.num_slots() * l.num_kv_heads), false);
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t slot = slots[static_cast<size_t>(t)];
        if (slot < 0) continue;
        const int row = kv_slot_row(slot);
        for (int64_t h = 0; h < l.num_kv_heads; ++h) {
          written[static_cast<size_t>(slot * l.num_kv_heads + h)] = true;
          const CpuRow want = cpu_quantize_row(x.data() + t * ld + h * sh.hd, sh.hd, sh.r_h, clip);
          const uint8_t* hb = cache.data() + l.head_block_offset(kv_slot_block(slot), h);
          const uint8_t* q4 = hb + l.q4_offset() + row * l.ld4();
          const uint8_t* q8 = hb + l.q8_offset() + row * l.ld8();
          for (int64_t b = 0; b < l.ld4(); ++b) {
            const uint8_t w =
                b < static_cast<int64_t>(want.xq4.size()) ? want.xq4[static_cast<size_t>(b)] : 0;
            ASSERT_EQ(q4[b], w) << "token " << t << " head " << h << " q4 byte " << b;
          }
          for (int64_t b = 0; b < l.ld8(); ++b) {
            const uint8_t w = b < sh.r_h ? want.xq8[static_cast<size_t>(b)] : 0;
            ASSERT_EQ(q8[b], w) << "token " << t << " head " << h << " q8 byte " << b;
          }
          const int32_t bits_s4 = read4<int32_t>(hb + l.s4_offset() + 4 * row);
          const int32_t bits_s8 = read4<int32_t>(hb + l.s8_offset() + 4 * row);
          int32_t want_s4 = 0, want_s8 = 0;
          std::memcpy(&want_s4, &want.s4, 4);
          std::memcpy(&want_s8, &want.s8, 4);
          ASSERT_EQ(bits_s4, want_s4) << "token " << t << " head " << h;
          ASSERT_EQ(bits_s8, want_s8) << "token " << t << " head " << h;
          ASSERT_EQ(read4<int32_t>(hb + l.z4_offset() + 4 * row), want.z4);
          ASSERT_EQ(read4<int32_t>(hb + l.z8_offset() + 4 * row), want.z8);
          // The dequantized row read back through the layout equals PackedKvCacheQuant's unpack.
          std::vector<float> deq(static_cast<size_t>(sh.hd));
          kv_dequantize_row_reference(cache.data(), l, slot, h, deq.data());
          for (int64_t c = 0; c < sh.hd; ++c)
            ASSERT_EQ(deq[static_cast<size_t>(c)], want.deq[static_cast<size_t>(c)]) << c;
        }
      }
      // Slots that no token maps to keep their old bytes (rows of the padding tokens included).
      for (int64_t slot = 0; slot < l.num_slots(); ++slot) {
        for (int64_t h = 0; h < l.num_kv_heads; ++h) {
          if (written[static_cast<size_t>(slot * l.num_kv_heads + h)]) continue;
          const uint8_t* hb = cache.data() + l.head_block_offset(kv_slot_block(slot), h);
          const int row = kv_slot_row(slot);
          for (int64_t b = 0; b < l.ld4(); ++b) ASSERT_EQ(hb[l.q4_offset() + row * l.ld4() + b], 0xAB);
          for (int64_t b = 0; b < l.ld8(); ++b) ASSERT_EQ(hb[l.q8_offset() + row * l.ld8() + b], 0xAB);
          ASSERT_EQ(read4<uint32_t>(hb + l.s4_offset() + 4 * row), 0xABABABABu);
          ASSERT_EQ(read4<uint32_t>(hb + l.z8_offset() + 4 * row), 0xABABABABu);
        }
      }
    }
  }
}

TEST(KvWriteReference, ErrorsBeforeAnyWrite) {
  const KvCacheLayout l{2, 2, 16, 2};
  std::vector<float> x(static_cast<size_t>(4 * 32), 1.0f);
  std::vector<uint8_t> cache(static_cast<size_t>(l.buffer_bytes()), 0xAB);
  const std::vector<uint8_t> before = cache;
  std::vector<int64_t> slots = {0, 5, 31, 32};  // 32 = num_slots: out of range
  EXPECT_THROW(kv_write_reference(x.data(), 4, 0, slots.data(), l, 1.0f, cache.data()), resq::ShapeError);
  EXPECT_EQ(cache, before);  // the range check precedes every write
  slots[3] = -1;
  EXPECT_THROW(kv_write_reference(x.data(), 4, 0, slots.data(), l, 0.0f, cache.data()), resq::ConfigError);
  EXPECT_THROW(kv_write_reference(x.data(), 4, 0, slots.data(), l, 1.5f, cache.data()), resq::ConfigError);
  EXPECT_THROW(kv_write_reference(x.data(), 4, 31, slots.data(), l, 1.0f, cache.data()), resq::ShapeError);
  EXPECT_THROW(kv_write_reference(x.data(), -1, 0, slots.data(), l, 1.0f, cache.data()), resq::ShapeError);
  EXPECT_THROW(kv_write_reference(nullptr, 4, 0, slots.data(), l, 1.0f, cache.data()), resq::ShapeError);
  EXPECT_THROW(
      kv_write_reference(x.data(), 4, 0, slots.data(), KvCacheLayout{2, 2, 16, 17}, 1.0f, cache.data()),
      resq::ShapeError);
  EXPECT_THROW(
      kv_write_reference(x.data(), 4, 0, slots.data(), KvCacheLayout{2, 0, 16, 2}, 1.0f, cache.data()),
      resq::ShapeError);
  EXPECT_THROW(
      kv_write_reference(x.data(), 4, 0, slots.data(), KvCacheLayout{2, 2, 257, 2}, 1.0f, cache.data()),
      resq::UnsupportedError);
  EXPECT_EQ(cache, before);
  EXPECT_NO_THROW(kv_write_reference(x.data(), 4, 0, slots.data(), l, 1.0f, cache.data()));
  EXPECT_NE(cache, before);
}

// ------------------------------------------------------------------ attention reference

// Caches of `seqs` sequences of ragged lengths, written through shuffled block tables, plus the
// same K/V rows dequantized by the CPU quantizer in token order (the float64 oracle's input).
struct AttnCase {
  KvCacheLayout layout;
  int64_t Hq = 0, max_blocks = 0;
  std::vector<int32_t> lens, tables;
  std::vector<uint8_t> k_cache, v_cache;
  std::vector<float> q;
  std::vector<std::vector<float>> k_deq, v_deq;  // per sequence: [len][Hkv][hd]
};

AttnCase make_attn_case(int64_t hd, int64_t r_h, int64_t Hq, int64_t Hkv, std::vector<int32_t> lens,
                        uint32_t seed) {
  AttnCase c;
  c.Hq = Hq;
  c.lens = std::move(lens);
  const int64_t seqs = static_cast<int64_t>(c.lens.size());
  int64_t max_len = 1, total_blocks = 0;
  for (int32_t n : c.lens) {
    max_len = std::max<int64_t>(max_len, n);
    total_blocks += (n + kKvBlockTokens - 1) / kKvBlockTokens;
  }
  c.max_blocks = (max_len + kKvBlockTokens - 1) / kKvBlockTokens + 1;  // one spare entry per row
  c.layout = KvCacheLayout{total_blocks + 3, Hkv, hd, r_h};            // 3 blocks nobody uses
  std::vector<int32_t> phys(static_cast<size_t>(c.layout.num_blocks));
  std::iota(phys.begin(), phys.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(phys.begin(), phys.end(), rng);
  c.tables.assign(static_cast<size_t>(seqs * c.max_blocks), -7);  // unused entries: invalid ids, never read
  c.k_cache.assign(static_cast<size_t>(c.layout.buffer_bytes()), 0xCD);
  c.v_cache = c.k_cache;
  size_t next = 0;
  for (int64_t s = 0; s < seqs; ++s) {
    const int64_t n = c.lens[static_cast<size_t>(s)];
    for (int64_t j = 0; j < (n + kKvBlockTokens - 1) / kKvBlockTokens; ++j)
      c.tables[static_cast<size_t>(s * c.max_blocks + j)] = phys[next++];
    const std::vector<float> k = random_kv_rows(n, Hkv, hd, Hkv * hd, seed + 100 + static_cast<uint32_t>(s));
    const std::vector<float> v = random_kv_rows(n, Hkv, hd, Hkv * hd, seed + 200 + static_cast<uint32_t>(s));
    std::vector<int64_t> slots(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t)
      slots[static_cast<size_t>(t)] =
          int64_t{c.tables[static_cast<size_t>(s * c.max_blocks + t / 16)]} * 16 + t % 16;
    kv_write_reference(k.data(), n, 0, slots.data(), c.layout, 1.0f, c.k_cache.data());
    kv_write_reference(v.data(), n, 0, slots.data(), c.layout, 0.95f, c.v_cache.data());
    std::vector<float> kd(static_cast<size_t>(n * Hkv * hd)), vd(kd.size());
    for (int64_t r = 0; r < n * Hkv; ++r) {
      const CpuRow kr = cpu_quantize_row(k.data() + r * hd, hd, r_h, 1.0f);
      const CpuRow vr = cpu_quantize_row(v.data() + r * hd, hd, r_h, 0.95f);
      std::copy(kr.deq.begin(), kr.deq.end(), kd.begin() + r * hd);
      std::copy(vr.deq.begin(), vr.deq.end(), vd.begin() + r * hd);
    }
    c.k_deq.push_back(std::move(kd));
    c.v_deq.push_back(std::move(vd));
  }
  std::normal_distribution<float> normal(0.0f, 1.0f);
  c.q.resize(static_cast<size_t>(seqs * Hq * hd));
  for (auto& e : c.q) e = normal(rng);
  return c;
}

KvDecodeArgs decode_args(const AttnCase& c, std::vector<float>& out) {
  out.assign(static_cast<size_t>(static_cast<int64_t>(c.lens.size()) * c.Hq * c.layout.head_dim), -1.0f);
  KvDecodeArgs a;
  a.num_seqs = static_cast<int64_t>(c.lens.size());
  a.num_q_heads = c.Hq;
  a.max_blocks_per_seq = c.max_blocks;
  a.q = c.q.data();
  a.block_tables = c.tables.data();
  a.context_lens = c.lens.data();
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.layout.head_dim));
  a.out = out.data();
  return a;
}

// Checks out against float64 attention over the token-order dequantized rows; returns the largest
// error relative to max |v| of the (sequence, head).
double check_against_float64(const AttnCase& c, const std::vector<float>& out, double tol) {
  const int64_t hd = c.layout.head_dim, Hkv = c.layout.num_kv_heads, G = c.Hq / Hkv;
  const double fscale =
      static_cast<double>(1.0f / std::sqrt(static_cast<float>(hd)));  // the float scale used
  double worst = 0.0;
  for (size_t s = 0; s < c.lens.size(); ++s) {
    const int64_t n = c.lens[s];
    for (int64_t qh = 0; qh < c.Hq; ++qh) {
      const int64_t kh = qh / G;
      const float* o = out.data() + (static_cast<int64_t>(s) * c.Hq + qh) * hd;
      if (n == 0) {
        for (int64_t d = 0; d < hd; ++d) EXPECT_EQ(o[d], 0.0f);
        continue;
      }
      const float* qr = c.q.data() + (static_cast<int64_t>(s) * c.Hq + qh) * hd;
      std::vector<double> sc(static_cast<size_t>(n));
      double mx = -1e300, vmax = 0.0;
      for (int64_t t = 0; t < n; ++t) {
        const float* kr = c.k_deq[s].data() + (t * Hkv + kh) * hd;
        double dot = 0.0;
        for (int64_t d = 0; d < hd; ++d) dot += static_cast<double>(qr[d]) * kr[d];
        sc[static_cast<size_t>(t)] = dot * fscale;
        mx = std::max(mx, sc[static_cast<size_t>(t)]);
        for (int64_t d = 0; d < hd; ++d)
          vmax = std::max(
              vmax, std::fabs(static_cast<double>(c.v_deq[s][static_cast<size_t>((t * Hkv + kh) * hd + d)])));
      }
      double l = 0.0;
      for (auto& e : sc) l += (e = std::exp(e - mx));
      for (int64_t d = 0; d < hd; ++d) {
        double want = 0.0;
        for (int64_t t = 0; t < n; ++t)
          want += sc[static_cast<size_t>(t)] * c.v_deq[s][static_cast<size_t>((t * Hkv + kh) * hd + d)];
        want /= l;
        const double err = std::fabs(static_cast<double>(o[d]) - want) / std::max(vmax, 1e-30);
        worst = std::max(worst, err);
        EXPECT_LE(err, tol) << "seq " << s << " (len " << n << ") head " << qh << " channel " << d << ": got "
                            << o[d] << " want " << want;
      }
    }
  }
  return worst;
}

TEST(KvDecodeAttentionReference, MatchesFloat64OnRaggedGqa) {
  struct Cfg {
    int64_t hd, r_h, Hq, Hkv;
  };
  // MHA, GQA 2 and 4, MQA; hd 128 / 64 / 8 / odd 4-bit part.
  const Cfg cfgs[] = {{128, 16, 4, 4}, {128, 16, 8, 2}, {64, 8, 8, 2},
                      {64, 8, 4, 1},   {8, 1, 8, 4},    {13, 2, 6, 3}};
  for (const Cfg& cf : cfgs) {
    SCOPED_TRACE("hd " + std::to_string(cf.hd) + " Hq " + std::to_string(cf.Hq) + " Hkv " +
                 std::to_string(cf.Hkv));
    const AttnCase c = make_attn_case(cf.hd, cf.r_h, cf.Hq, cf.Hkv, {1, 15, 16, 17, 0, 50, 97}, 2024u);
    std::vector<float> out;
    const KvDecodeArgs a = decode_args(c, out);
    kv_decode_attention_reference(a, c.layout, c.k_cache.data(), c.v_cache.data());
    // fp32 dots of <= 128 terms, exp and sums over <= 97 tokens: errors of a few 1e-7 of max |v|.
    const double worst = check_against_float64(c, out, 2e-6);
    EXPECT_GT(worst, 0.0) << "fp32 reference identical to float64 everywhere: the check is not looking";
  }
}

// Host emulation of kv_decode_attention_kernel for every CTA (sequence s, query head qh): its
// warps (tokens t = w, w + 4, ...), lanes (kv_lane_channel), partial dots and xor butterfly, the
// per-warp online softmax and the merge, calling the kernel's own per-lane functions
// (kv_dequantize_lane, kv_softmax_step, kv_merge_warp_states) in the kernel's order. What it
// cannot show: races, and the device's expf / FMA contraction.
template <int CPL>
void emulate_decode_kernel(const KvDecodeArgs& a, const KvCacheLayout& layout, const uint8_t* k_cache,
                           const uint8_t* v_cache) {
  const KvHeadBlockGeometry g = kv_head_block_geometry(layout);
  const int64_t Hq = a.num_q_heads;
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    for (int64_t qh = 0; qh < Hq; ++qh) {
      const int64_t kh = qh / (Hq / layout.num_kv_heads);
      float* o = a.out + (s * Hq + qh) * g.hd;
      int64_t len = a.context_lens[s];
      len = std::min<int64_t>(std::max<int64_t>(len, 0), a.max_blocks_per_seq * kKvBlockTokens);
      if (len == 0) {
        for (int c = 0; c < g.hd; ++c) o[c] = 0.0f;
        continue;
      }
      const float* qr = a.q + (s * Hq + qh) * g.hd;
      float sm_m[kKvAttnWarps], sm_l[kKvAttnWarps];
      std::vector<float> sm_acc(static_cast<size_t>(kKvAttnWarps * kMaxKvHeadDim), std::nanf(""));
      for (int w = 0; w < kKvAttnWarps; ++w) {
        float qv[kWarpSize][CPL], acc[kWarpSize][CPL];
        for (int lane = 0; lane < kWarpSize; ++lane) {
          for (int i = 0; i < CPL; ++i) {
            const int c = kv_lane_channel(lane, i, CPL);
            qv[lane][i] = c < g.hd ? qr[c] : 0.0f;
            acc[lane][i] = 0.0f;
          }
        }
        float m = -std::numeric_limits<float>::infinity(), l = 0.0f;  // identical in every lane
        for (int64_t t = w; t < len; t += kKvAttnWarps) {
          const int64_t blk = a.block_tables[s * a.max_blocks_per_seq + t / kKvBlockTokens];
          const int row = static_cast<int>(t % kKvBlockTokens);
          const int64_t hb_off = (blk * layout.num_kv_heads + kh) * g.bytes;
          float dot[kWarpSize];
          for (int lane = 0; lane < kWarpSize; ++lane) {
            float kd[CPL];
            kv_dequantize_lane<CPL>(k_cache + hb_off, g, row, lane, kd);
            dot[lane] = 0.0f;
            for (int i = 0; i < CPL; ++i) dot[lane] += qv[lane][i] * kd[i];
          }
          for (int off = kWarpSize / 2; off > 0; off >>= 1) {  // __shfl_xor_sync butterfly
            float prev[kWarpSize];
            std::copy(dot, dot + kWarpSize, prev);
            for (int lane = 0; lane < kWarpSize; ++lane) dot[lane] = prev[lane] + prev[lane ^ off];
          }
          for (int lane = 1; lane < kWarpSize; ++lane)
            ASSERT_EQ(dot[lane], dot[0]) << "butterfly lanes disagree";
          float corr = 0.0f, p = 0.0f;
          kv_softmax_step(dot[0] * a.scale, &m, &l, &corr, &p);
          for (int lane = 0; lane < kWarpSize; ++lane) {
            float vd[CPL];
            kv_dequantize_lane<CPL>(v_cache + hb_off, g, row, lane, vd);
            for (int i = 0; i < CPL; ++i) acc[lane][i] = acc[lane][i] * corr + p * vd[i];
          }
        }
        sm_m[w] = m;
        sm_l[w] = l;
        for (int lane = 0; lane < kWarpSize; ++lane) {
          for (int i = 0; i < CPL; ++i) {
            const int c = kv_lane_channel(lane, i, CPL);
            if (c < g.hd) sm_acc[static_cast<size_t>(w * kMaxKvHeadDim + c)] = acc[lane][i];
          }
        }
      }
      for (int c = 0; c < g.hd; ++c) o[c] = kv_merge_warp_states(sm_m, sm_l, sm_acc.data(), kMaxKvHeadDim, c);
    }
  }
}

TEST(KvDecodeAttentionEmulation, KernelDecompositionMatchesFloat64) {
  struct Cfg {
    int64_t hd, r_h, Hq, Hkv;
  };
  // Every channels-per-lane instantiation: hd 8 / 13 (1), 64 (2), 96 / 128 (4), 256 (8).
  const Cfg cfgs[] = {{128, 16, 8, 2}, {64, 8, 4, 1},  {8, 1, 8, 4},
                      {13, 2, 6, 3},   {96, 12, 4, 4}, {256, 32, 2, 1}};
  for (const Cfg& cf : cfgs) {
    SCOPED_TRACE("hd " + std::to_string(cf.hd) + " Hq " + std::to_string(cf.Hq) + " Hkv " +
                 std::to_string(cf.Hkv));
    // Lengths below the warp count (some warps see no token), ragged, and block boundaries.
    const AttnCase c = make_attn_case(cf.hd, cf.r_h, cf.Hq, cf.Hkv, {1, 2, 3, 0, 15, 16, 17, 33, 97}, 4242u);
    std::vector<float> out;
    const KvDecodeArgs a = decode_args(c, out);
    switch (kv_channels_per_lane(cf.hd)) {
      case 1:
        emulate_decode_kernel<1>(a, c.layout, c.k_cache.data(), c.v_cache.data());
        break;
      case 2:
        emulate_decode_kernel<2>(a, c.layout, c.k_cache.data(), c.v_cache.data());
        break;
      case 4:
        emulate_decode_kernel<4>(a, c.layout, c.k_cache.data(), c.v_cache.data());
        break;
      default:
        emulate_decode_kernel<8>(a, c.layout, c.k_cache.data(), c.v_cache.data());
        break;
    }
    ASSERT_FALSE(HasFatalFailure());
    check_against_float64(c, out, 2e-6);
  }
}

// One key: softmax weight exactly 1, so the output is exactly the dequantized value row of the
// KV head the GQA map names (qh / (Hq / Hkv)) — any other head's values would differ.
TEST(KvDecodeAttentionReference, GqaMappingWithOneKey) {
  const AttnCase c = make_attn_case(16, 2, 8, 2, {1, 1}, 99u);
  std::vector<float> out;
  const KvDecodeArgs a = decode_args(c, out);
  kv_decode_attention_reference(a, c.layout, c.k_cache.data(), c.v_cache.data());
  for (int64_t s = 0; s < 2; ++s) {
    for (int64_t qh = 0; qh < 8; ++qh) {
      for (int64_t d = 0; d < 16; ++d) {
        ASSERT_EQ(out[static_cast<size_t>((s * 8 + qh) * 16 + d)],
                  c.v_deq[static_cast<size_t>(s)][static_cast<size_t>((qh / 4) * 16 + d)])
            << "seq " << s << " q head " << qh;
      }
    }
  }
}

TEST(KvDecodeAttentionReference, ArgumentErrors) {
  AttnCase c = make_attn_case(16, 2, 4, 2, {5, 20}, 3u);
  std::vector<float> out;
  KvDecodeArgs a = decode_args(c, out);
  const uint8_t* kc = c.k_cache.data();
  const uint8_t* vc = c.v_cache.data();
  EXPECT_NO_THROW(kv_decode_attention_reference(a, c.layout, kc, vc));
  KvDecodeArgs bad = a;
  bad.num_q_heads = 3;  // not a multiple of Hkv = 2
  EXPECT_THROW(kv_decode_attention_reference(bad, c.layout, kc, vc), resq::ShapeError);
  bad = a;
  bad.max_blocks_per_seq = 0;
  EXPECT_THROW(kv_decode_attention_reference(bad, c.layout, kc, vc), resq::ShapeError);
  bad = a;
  bad.q = nullptr;
  EXPECT_THROW(kv_decode_attention_reference(bad, c.layout, kc, vc), resq::ShapeError);
  bad = a;
  bad.scale = std::numeric_limits<float>::infinity();
  EXPECT_THROW(kv_decode_attention_reference(bad, c.layout, kc, vc), resq::ShapeError);
  EXPECT_THROW(kv_decode_attention_reference(a, c.layout, kc, nullptr), resq::ShapeError);
  KvCacheLayout big = c.layout;
  big.head_dim = 300;
  big.r_h = 2;
  EXPECT_THROW(kv_decode_attention_reference(a, big, kc, vc), resq::UnsupportedError);
  // Context length beyond the block table, and a block id outside the buffer.
  std::vector<int32_t> lens = c.lens;
  lens[1] = static_cast<int32_t>(c.max_blocks * 16 + 1);
  bad = a;
  bad.context_lens = lens.data();
  EXPECT_THROW(kv_decode_attention_reference(bad, c.layout, kc, vc), resq::ShapeError);
  std::vector<int32_t> tables = c.tables;
  tables[static_cast<size_t>(c.max_blocks)] = static_cast<int32_t>(c.layout.num_blocks);  // seq 1, block 0
  bad = a;
  bad.block_tables = tables.data();
  EXPECT_THROW(kv_decode_attention_reference(bad, c.layout, kc, vc), resq::ShapeError);
  // Zero sequences: nothing to check, nothing read.
  bad = a;
  bad.num_seqs = 0;
  bad.q = nullptr;
  EXPECT_NO_THROW(kv_decode_attention_reference(bad, c.layout, nullptr, nullptr));
}

}  // namespace
