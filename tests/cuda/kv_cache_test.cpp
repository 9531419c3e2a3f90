// GPU tests of the quantized KV cache kernels (kernels/cuda/kv_cache.cu) against the CPU
// references of kernels/cuda/kv_cache_layout.h: the cache write (fp32 and bf16 K/V, strided rows,
// padding slots) equals kv_write_reference byte for byte over the whole buffer; decode attention
// (hd 8 / 64 / 128 / 256, MHA / GQA / MQA, ragged context lengths) equals
// kv_decode_attention_reference within 1e-5 of max |v|. Device tests GTEST_SKIP() without a GPU;
// the argument checks run everywhere (they throw before any CUDA call). Fixed seeds.
#include "cuda/kv_cache.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cpu/gemm.h"
#include "resq/cuda/device.h"
#include "cuda/kv_cache_layout.h"

namespace {

using namespace resq::gpu;  // NOLINT

class KvCacheDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount reports none)";
  }
};

// [tokens][ld] with [Hkv * hd] meaningful columns: normal values with outliers, an all-zero row, an
// all-positive and an all-negative row; padding columns hold huge values (never read).
std::vector<float> random_rows(int64_t tokens, int64_t width, int64_t ld, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(tokens * ld), 1e30f);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < width; ++j)
      x[static_cast<size_t>(t * ld + j)] = normal(rng) * (rng() % 19 == 0 ? 20.0f : 1.0f);
  }
  if (tokens > 3) {
    for (int64_t j = 0; j < width; ++j) {
      x[static_cast<size_t>(j)] = 0.0f;
      x[static_cast<size_t>(ld + j)] = std::fabs(x[static_cast<size_t>(ld + j)]);
      x[static_cast<size_t>(2 * ld + j)] = -std::fabs(x[static_cast<size_t>(2 * ld + j)]);
    }
  }
  return x;
}

// bf16 bits of x (round to nearest even) and their exact fp32 values (what the kernel converts to).
void to_bf16(const std::vector<float>& x, std::vector<uint16_t>* bits, std::vector<float>* values) {
  bits->resize(x.size());
  resq::cpu::convert_f32_to_bf16(x.data(), static_cast<int64_t>(x.size()), bits->data());
  values->resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const uint32_t u = static_cast<uint32_t>((*bits)[i]) << 16;
    std::memcpy(&(*values)[i], &u, 4);
  }
}

// ------------------------------------------------------------------ cache write

struct WriteCase {
  int64_t hd, r_h, Hkv, tokens, ld_extra;
  bool bf16;
};

TEST_F(KvCacheDeviceTest, WriteEqualsReferenceBitForBit) {
  const WriteCase cases[] = {
      {128, 16, 8, 70, 0, false}, {128, 16, 8, 70, 0, true}, {64, 8, 4, 33, 96, false},
      {64, 8, 4, 33, 96, true},   {8, 1, 4, 21, 0, false},   {13, 2, 3, 17, 5, true},
      {32, 0, 2, 40, 0, false},   {24, 24, 2, 40, 0, true},  {256, 32, 2, 19, 0, false},
  };
  for (const WriteCase& wc : cases) {
    SCOPED_TRACE("hd " + std::to_string(wc.hd) + " r_h " + std::to_string(wc.r_h) + " Hkv " +
                 std::to_string(wc.Hkv) + (wc.bf16 ? " bf16" : " fp32"));
    const KvCacheLayout l{wc.tokens / 16 + 4, wc.Hkv, wc.hd, wc.r_h};
    const int64_t ld = wc.Hkv * wc.hd + wc.ld_extra;
    std::vector<float> k = random_rows(wc.tokens, wc.Hkv * wc.hd, ld, 5u + static_cast<uint32_t>(wc.hd));
    std::vector<float> v = random_rows(wc.tokens, wc.Hkv * wc.hd, ld, 6u + static_cast<uint32_t>(wc.hd));
    std::vector<uint16_t> k16, v16;
    if (wc.bf16) {
      to_bf16(k, &k16, &k);
      to_bf16(v, &v16, &v);
    }
    // Distinct slots scattered over all blocks, every fifth token padding (-1), one slot past the end
    // (skipped on the device; the reference would reject it, so it gets -1 there).
    std::vector<int64_t> all(static_cast<size_t>(l.num_slots()));
    std::iota(all.begin(), all.end(), 0);
    std::mt19937 rng(77u);
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int64_t> slots(all.begin(), all.begin() + wc.tokens);
    for (int64_t t = 4; t < wc.tokens; t += 5) slots[static_cast<size_t>(t)] = -1;
    std::vector<int64_t> dev_slots = slots;
    dev_slots[1] = l.num_slots();
    slots[1] = -1;

    const float k_clip = 1.0f, v_clip = 0.9f;
    std::vector<uint8_t> want_k(static_cast<size_t>(l.buffer_bytes()), 0xAB), want_v = want_k;
    kv_write_reference(k.data(), wc.tokens, ld, slots.data(), l, k_clip, want_k.data());
    kv_write_reference(v.data(), wc.tokens, ld, slots.data(), l, v_clip, want_v.data());

    DeviceBuffer<uint8_t> dk_cache(std::vector<uint8_t>(want_k.size(), 0xAB));
    DeviceBuffer<uint8_t> dv_cache(std::vector<uint8_t>(want_v.size(), 0xAB));
    DeviceBuffer<int64_t> dslots(dev_slots);
    if (wc.bf16) {
      DeviceBuffer<uint16_t> dk(k16), dv(v16);
      kv_cache_write_bf16_cuda(dk.get(), dv.get(), wc.tokens, ld, dslots.get(), l, k_clip, v_clip,
                               dk_cache.get(), dv_cache.get(), nullptr);
    } else {
      DeviceBuffer<float> dk(k), dv(v);
      kv_cache_write_cuda(dk.get(), dv.get(), wc.tokens, ld, dslots.get(), l, k_clip, v_clip, dk_cache.get(),
                          dv_cache.get(), nullptr);
    }
    RESQ_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<uint8_t> got_k = dk_cache.download(), got_v = dv_cache.download();
    for (size_t i = 0; i < want_k.size(); ++i) ASSERT_EQ(got_k[i], want_k[i]) << "K cache byte " << i;
    for (size_t i = 0; i < want_v.size(); ++i) ASSERT_EQ(got_v[i], want_v[i]) << "V cache byte " << i;
  }
}

// ------------------------------------------------------------------ decode attention

struct AttnCase {
  int64_t hd, r_h, Hq, Hkv;
};

TEST_F(KvCacheDeviceTest, DecodeAttentionMatchesReference) {
  // hd 128 / 64 (Llama shapes), 8 (stories260K), 256, 96 (lanes partly idle), odd 4-bit part;
  // MHA, GQA 4, MQA.
  const AttnCase cases[] = {{128, 16, 8, 2}, {128, 16, 4, 4}, {64, 8, 8, 8},  {64, 8, 8, 1},
                            {8, 1, 8, 4},    {256, 32, 4, 2}, {96, 12, 6, 3}, {13, 2, 4, 2}};
  const std::vector<int32_t> lens = {1, 2, 3, 15, 16, 17, 0, 31, 100, 257};
  for (const AttnCase& ac : cases) {
    SCOPED_TRACE("hd " + std::to_string(ac.hd) + " Hq " + std::to_string(ac.Hq) + " Hkv " +
                 std::to_string(ac.Hkv));
    const int64_t seqs = static_cast<int64_t>(lens.size());
    int64_t max_len = 0, total_blocks = 0;
    for (int32_t n : lens) {
      max_len = std::max<int64_t>(max_len, n);
      total_blocks += (n + 15) / 16;
    }
    const int64_t max_blocks = (max_len + 15) / 16 + 1;
    const KvCacheLayout l{total_blocks + 2, ac.Hkv, ac.hd, ac.r_h};
    std::vector<int32_t> phys(static_cast<size_t>(l.num_blocks));
    std::iota(phys.begin(), phys.end(), 0);
    std::mt19937 rng(31u);
    std::shuffle(phys.begin(), phys.end(), rng);
    std::vector<int32_t> tables(static_cast<size_t>(seqs * max_blocks), 0);
    std::vector<int64_t> slots;
    size_t next = 0;
    for (int64_t s = 0; s < seqs; ++s) {
      const int64_t n = lens[static_cast<size_t>(s)];
      for (int64_t j = 0; j < (n + 15) / 16; ++j)
        tables[static_cast<size_t>(s * max_blocks + j)] = phys[next++];
      for (int64_t t = 0; t < n; ++t)
        slots.push_back(int64_t{tables[static_cast<size_t>(s * max_blocks + t / 16)]} * 16 + t % 16);
    }
    const int64_t tokens = static_cast<int64_t>(slots.size());
    const std::vector<float> k = random_rows(tokens, ac.Hkv * ac.hd, ac.Hkv * ac.hd, 41u);
    const std::vector<float> v = random_rows(tokens, ac.Hkv * ac.hd, ac.Hkv * ac.hd, 42u);
    std::vector<float> q(static_cast<size_t>(seqs * ac.Hq * ac.hd));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& e : q) e = normal(rng);

    // Caches: written by the GPU (and checked against the reference), then attended on the GPU.
    std::vector<uint8_t> k_cache(static_cast<size_t>(l.buffer_bytes()), 0), v_cache = k_cache;
    kv_write_reference(k.data(), tokens, 0, slots.data(), l, 1.0f, k_cache.data());
    kv_write_reference(v.data(), tokens, 0, slots.data(), l, 1.0f, v_cache.data());
    DeviceBuffer<uint8_t> dk_cache(std::vector<uint8_t>(k_cache.size(), 0)),
        dv_cache(std::vector<uint8_t>(v_cache.size(), 0));
    DeviceBuffer<float> dk(k), dv(v), dq(q), dout(static_cast<size_t>(seqs * ac.Hq * ac.hd));
    DeviceBuffer<int64_t> dslots(slots);
    DeviceBuffer<int32_t> dtables(tables), dlens(lens);
    kv_cache_write_cuda(dk.get(), dv.get(), tokens, 0, dslots.get(), l, 1.0f, 1.0f, dk_cache.get(),
                        dv_cache.get(), nullptr);
    ASSERT_EQ(dk_cache.download(), k_cache);
    ASSERT_EQ(dv_cache.download(), v_cache);

    KvDecodeArgs a;
    a.num_seqs = seqs;
    a.num_q_heads = ac.Hq;
    a.max_blocks_per_seq = max_blocks;
    a.scale = 1.0f / std::sqrt(static_cast<float>(ac.hd));
    std::vector<float> want(static_cast<size_t>(seqs * ac.Hq * ac.hd), -1.0f);
    KvDecodeArgs ha = a;
    ha.q = q.data();
    ha.block_tables = tables.data();
    ha.context_lens = lens.data();
    ha.out = want.data();
    kv_decode_attention_reference(ha, l, k_cache.data(), v_cache.data());
    a.q = dq.get();
    a.block_tables = dtables.get();
    a.context_lens = dlens.get();
    a.out = dout.get();
    kv_decode_attention_cuda(a, l, dk_cache.get(), dv_cache.get(), nullptr);
    RESQ_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> got = dout.download();

    // Tolerance: 1e-5 of the largest |v| of the sequence's values (the output is a convex combination
    // of value rows). Not exact because the summation orders differ: the GPU sums each dot as per-lane
    // partials plus a butterfly, keeps one online softmax per warp over every 4th token, rescales
    // and merges them, and uses the device expf; the reference sums in increasing channel / token
    // order. Both stay within ~7e-7 of float64 on these inputs (host test), so 1e-5 leaves room.
    for (int64_t s = 0; s < seqs; ++s) {
      const int64_t n = lens[static_cast<size_t>(s)];
      int64_t first = 0;
      for (int64_t p = 0; p < s; ++p) first += lens[static_cast<size_t>(p)];
      for (int64_t qh = 0; qh < ac.Hq; ++qh) {
        const int64_t kh = qh / (ac.Hq / ac.Hkv);
        double vmax = 0.0;
        std::vector<float> row(static_cast<size_t>(ac.hd));
        for (int64_t t = 0; t < n; ++t) {
          kv_dequantize_row_reference(v_cache.data(), l, slots[static_cast<size_t>(first + t)], kh,
                                      row.data());
          for (float e : row) vmax = std::max(vmax, std::fabs(static_cast<double>(e)));
        }
        for (int64_t d = 0; d < ac.hd; ++d) {
          const size_t i = static_cast<size_t>((s * ac.Hq + qh) * ac.hd + d);
          if (n == 0) {
            ASSERT_EQ(got[i], 0.0f) << "empty sequence " << s;
            continue;
          }
          ASSERT_LE(std::fabs(static_cast<double>(got[i]) - want[i]), 1e-5 * vmax)
              << "seq " << s << " (len " << n << ") q head " << qh << " channel " << d << ": got " << got[i]
              << " want " << want[i];
        }
      }
    }
  }
}

// ------------------------------------------------------------------ argument errors (no device needed)

TEST(KvCacheCudaArgs, WriteErrorsBeforeAnyCudaCall) {
  // Fake, never dereferenced device pointers: every check below throws before the first CUDA call.
  auto* f = reinterpret_cast<const float*>(uintptr_t{0x1000});
  auto* slots = reinterpret_cast<const int64_t*>(uintptr_t{0x2000});
  auto* kc = reinterpret_cast<uint8_t*>(uintptr_t{0x3000});
  auto* vc = reinterpret_cast<uint8_t*>(uintptr_t{0x4000});
  const KvCacheLayout l{4, 2, 128, 16};
  EXPECT_THROW(
      kv_cache_write_cuda(f, f, 3, 0, slots, KvCacheLayout{4, 2, 300, 16}, 1.0f, 1.0f, kc, vc, nullptr),
      resq::UnsupportedError);
  EXPECT_THROW(
      kv_cache_write_cuda(f, f, 3, 0, slots, KvCacheLayout{4, 2, 128, 129}, 1.0f, 1.0f, kc, vc, nullptr),
      resq::ShapeError);
  EXPECT_THROW(
      kv_cache_write_cuda(f, f, 3, 0, slots, KvCacheLayout{4, 0, 128, 16}, 1.0f, 1.0f, kc, vc, nullptr),
      resq::ShapeError);
  EXPECT_THROW(kv_cache_write_cuda(f, f, 3, 0, slots, l, 0.0f, 1.0f, kc, vc, nullptr), resq::ConfigError);
  EXPECT_THROW(kv_cache_write_cuda(f, f, 3, 0, slots, l, 1.0f, 1.01f, kc, vc, nullptr), resq::ConfigError);
  EXPECT_THROW(kv_cache_write_cuda(f, f, 3, 255, slots, l, 1.0f, 1.0f, kc, vc, nullptr), resq::ShapeError);
  EXPECT_THROW(kv_cache_write_cuda(f, f, -1, 0, slots, l, 1.0f, 1.0f, kc, vc, nullptr), resq::ShapeError);
  EXPECT_THROW(kv_cache_write_cuda(f, nullptr, 3, 0, slots, l, 1.0f, 1.0f, kc, vc, nullptr),
               resq::ShapeError);
  EXPECT_THROW(kv_cache_write_cuda(f, f, 3, 0, nullptr, l, 1.0f, 1.0f, kc, vc, nullptr), resq::ShapeError);
  EXPECT_THROW(kv_cache_write_cuda(f, f, 3, 0, slots, l, 1.0f, 1.0f, kc + 4, vc, nullptr), resq::ShapeError);
  auto* b = reinterpret_cast<const uint16_t*>(uintptr_t{0x1000});
  EXPECT_THROW(kv_cache_write_bf16_cuda(b, b, 3, 0, slots, l, 1.0f, 1.0f, kc, nullptr, nullptr),
               resq::ShapeError);
  // Zero tokens: nothing to do, no CUDA call, no error even with null pointers.
  EXPECT_NO_THROW(
      kv_cache_write_cuda(nullptr, nullptr, 0, 0, nullptr, l, 1.0f, 1.0f, nullptr, nullptr, nullptr));
}

TEST(KvCacheCudaArgs, DecodeAttentionErrorsBeforeAnyCudaCall) {
  const KvCacheLayout l{4, 2, 64, 8};
  KvDecodeArgs a;
  a.num_seqs = 2;
  a.num_q_heads = 4;
  a.max_blocks_per_seq = 2;
  a.q = reinterpret_cast<const float*>(uintptr_t{0x1000});
  a.block_tables = reinterpret_cast<const int32_t*>(uintptr_t{0x2000});
  a.context_lens = reinterpret_cast<const int32_t*>(uintptr_t{0x3000});
  a.out = reinterpret_cast<float*>(uintptr_t{0x4000});
  auto* kc = reinterpret_cast<const uint8_t*>(uintptr_t{0x5000});
  KvDecodeArgs bad = a;
  bad.num_q_heads = 3;  // not a multiple of Hkv = 2
  EXPECT_THROW(kv_decode_attention_cuda(bad, l, kc, kc, nullptr), resq::ShapeError);
  bad = a;
  bad.max_blocks_per_seq = 0;
  EXPECT_THROW(kv_decode_attention_cuda(bad, l, kc, kc, nullptr), resq::ShapeError);
  bad = a;
  bad.context_lens = nullptr;
  EXPECT_THROW(kv_decode_attention_cuda(bad, l, kc, kc, nullptr), resq::ShapeError);
  bad = a;
  bad.scale = std::nanf("");
  EXPECT_THROW(kv_decode_attention_cuda(bad, l, kc, kc, nullptr), resq::ShapeError);
  EXPECT_THROW(kv_decode_attention_cuda(a, l, kc, nullptr, nullptr), resq::ShapeError);
  EXPECT_THROW(kv_decode_attention_cuda(a, l, kc + 8, kc, nullptr), resq::ShapeError);
  EXPECT_THROW(kv_decode_attention_cuda(a, KvCacheLayout{4, 2, 512, 64}, kc, kc, nullptr),
               resq::UnsupportedError);
  bad = a;
  bad.num_seqs = 0;  // nothing to do: no CUDA call
  EXPECT_NO_THROW(kv_decode_attention_cuda(bad, l, nullptr, nullptr, nullptr));
}

}  // namespace
