// Incremental decoding (DecodeSession) against Decoder::forward on the whole sequence: stories260K in
// float32 / float64, with a sliding window, and a packed resq-rtn checkpoint (packed KV cache rows of
// the expected size, equal to the full forward's cache codes) and its simulated mode; token sampling
// (seeded, top-k, frequencies), greedy generation (deterministic, equal to argmax of the full
// forward) and the errors (empty prompt, positions beyond the model, batch changes, bad options).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "common/quantized_stories.h"
#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/format/packed.h"
#include "resq/quant/pipeline.h"
#include "resq/quant/recipe.h"
#include "resq/runtime/generate.h"
#include "resq/runtime/packed_model.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"
#include "resq/transforms/online.h"

namespace resq {
namespace {

std::string stories_dir() { return test::shared_path("models/stories260K"); }

// B rows of T tokens of TinyStories text (BOS first), row b starting `b * 97` tokens in.
at::Tensor story_ids(int64_t B, int64_t T) {
  auto tok = load_tokenizer(stories_dir());
  const std::string text = test::read_file(test::shared_path("data/tinystories/valid_head.txt")).substr(0, 20000);
  const auto ids = tokenize_for_eval(*tok, text, true);
  std::vector<int64_t> rows;
  for (int64_t b = 0; b < B; ++b) rows.insert(rows.end(), ids.begin() + b * 97, ids.begin() + b * 97 + T);
  return at::tensor(at::ArrayRef<int64_t>(rows), at::TensorOptions().dtype(at::kLong)).view({B, T});
}

// Feeds ids [B, T] in chunks of the given sizes (the last size repeats until T is reached) and
// concatenates the logits -> [B, T, vocab].
at::Tensor incremental_logits(DecodeSession& s, const at::Tensor& ids, const std::vector<int64_t>& chunks) {
  std::vector<at::Tensor> parts;
  int64_t pos = 0;
  for (size_t i = 0; pos < ids.size(1); ++i) {
    const int64_t n = std::min(chunks[std::min(i, chunks.size() - 1)], ids.size(1) - pos);
    parts.push_back(s.step(ids.narrow(1, pos, n)));
    pos += n;
  }
  return at::cat(parts, 1);
}

double max_rel(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / std::max(1e-30, b.abs().max().item<double>());
}

double argmax_agreement(const at::Tensor& a, const at::Tensor& b) {
  return at::argmax(a, -1).eq(at::argmax(b, -1)).to(at::kDouble).mean().item<double>();
}

// ------------------------------------------------------------------ fp model

TEST(DecodeSession, IncrementalMatchesFullForwardFloat32) {
  Decoder d = Decoder::load(stories_dir());
  c10::NoGradGuard guard;
  const at::Tensor ids = story_ids(2, 96);
  const at::Tensor full = d.forward(ids);
  DecodeSession s(d);
  // A 40-token prompt chunk, a 7-token chunk, then one token per step.
  const at::Tensor inc = incremental_logits(s, ids, {40, 7, 1});
  ASSERT_EQ(inc.sizes(), full.sizes());
  EXPECT_EQ(inc.scalar_type(), at::kFloat);
  EXPECT_LT(max_rel(inc, full), 1e-4);
  EXPECT_EQ(argmax_agreement(inc, full), 1.0);
  EXPECT_EQ(s.position(), 96);
  EXPECT_EQ(s.batch(), 2);
  // fp model: float K/V, 2 (K, V) x 5 layers x 2 sequences x 4 kv heads x 96 positions x 8 channels.
  EXPECT_FALSE(s.packed_cache(0));
  EXPECT_THROW(s.packed_keys(0), Error);
  const KvCacheBytes b = s.cache_bytes();
  EXPECT_EQ(b.fp32, 2 * 5 * 2 * 4 * 96 * 8 * 4);
  EXPECT_EQ(b.stored, b.fp32);
  EXPECT_EQ(b.packed_layers, 0);
  EXPECT_EQ(s.cached_keys(3).sizes(), (std::vector<int64_t>{2, 4, 96, 8}));
  // reset(): a new sequence from position 0 gives the same logits again.
  s.reset();
  EXPECT_EQ(s.position(), 0);
  EXPECT_LT(max_rel(s.step(ids.narrow(0, 0, 1)), full.narrow(0, 0, 1)), 1e-4);
}

TEST(DecodeSession, IncrementalMatchesFullForwardFloat64) {
  LoadOptions o;
  o.dtype = "float64";
  Decoder d = Decoder::load(stories_dir(), o);
  c10::NoGradGuard guard;
  const at::Tensor ids = story_ids(2, 80);
  const at::Tensor full = d.forward(ids);
  DecodeSession s(d);
  const at::Tensor inc = incremental_logits(s, ids, {33, 1});
  EXPECT_EQ(inc.scalar_type(), at::kDouble);
  EXPECT_LT(max_rel(inc, full), 1e-9);
}

TEST(DecodeSession, SlidingWindowMatchesFullForward) {
  Decoder base = Decoder::load(stories_dir());
  ModelConfig c = base.config();
  c.sliding_window = 6;
  Decoder d(c, base.dtype(), base.device());
  d.embed_weight = base.embed_weight;
  d.final_norm_weight = base.final_norm_weight;
  d.lm_head = base.lm_head;
  d.layers() = base.layers();
  c10::NoGradGuard guard;
  const at::Tensor ids = story_ids(1, 48);
  const at::Tensor full = d.forward(ids);
  // The window matters here (else this test would not test it) ...
  EXPECT_GT(max_rel(full, base.forward(ids)), 1e-2);
  // ... and the incremental path applies it to the cache.
  DecodeSession s(d);
  EXPECT_LT(max_rel(incremental_logits(s, ids, {10, 1}), full), 1e-4);
}

// ------------------------------------------------------------------ packed checkpoint

class DecodePacked : public ::testing::Test {
 protected:
  static std::string checkpoint() { return test::quantized_stories("resq-rtn", /*seed=*/1, /*nsamples=*/4, /*seqlen=*/64); }
};

// Captures the keys the full forward hands to each layer's cache transform.
struct KeyObserver : ForwardObserver {
  std::map<int64_t, at::Tensor> keys;  // layer -> [B, Hkv, T, hd]
  void on_keys(int64_t layer, const at::Tensor& k) override { keys[layer] = k.clone(); }
};

TEST_F(DecodePacked, PackedIncrementalMatchesPackedFullForwardAndCachesPackedRows) {
  Decoder d = load_model_for_eval(checkpoint(), LoadOptions{});
  ASSERT_EQ(d.layers()[0].q->implementation(), "packed-cpu");
  const auto kv = std::dynamic_pointer_cast<const PackedKvCacheQuant>(d.layers()[0].k_cache_transform);
  ASSERT_TRUE(kv) << "packed mode must use the packed KV cache";
  c10::NoGradGuard guard;
  const int64_t B = 2, T = 80, Hkv = 4, hd = 8, r_h = kv->r_h();
  ASSERT_GT(r_h, 0);
  const at::Tensor ids = story_ids(B, T);
  KeyObserver observed;
  const at::Tensor full = d.forward(ids, &observed);
  DecodeSession s(d);
  const at::Tensor inc = incremental_logits(s, ids, {30, 1});
  // Every quantizer is per token or per (token, head), so only fp32 summation order differs (GEMM
  // and attention shapes); a flipped rounding in a later quantizer moves a logit by a quantization
  // step. Observed on stories260K (this checkpoint, 2 x 80 tokens): max relative difference 3.5e-7,
  // argmax agreement 1.0; the bound leaves room for such a flip on other CPUs / kernels.
  const double rel = max_rel(inc, full), agree = argmax_agreement(inc, full);
  std::printf("packed incremental vs full forward: max rel %.3g, argmax agreement %.4f\n", rel, agree);
  EXPECT_LT(rel, 1e-3);
  EXPECT_GE(agree, 0.99);

  // The cache holds packed rows: (position, batch, kv head), (hd - r_h) 4-bit + r_h 8-bit values.
  const int64_t rows = T * B * Hkv, row_bytes = format::packed4_row_bytes(hd - r_h);
  for (int64_t l = 0; l < 5; ++l) {
    ASSERT_TRUE(s.packed_cache(l));
    for (const cpu::QuantizedActivations* q : {&s.packed_keys(l), &s.packed_values(l)}) {
      EXPECT_EQ(q->M, rows);
      EXPECT_EQ(q->K4, hd - r_h);
      EXPECT_EQ(q->K8, r_h);
      EXPECT_EQ(static_cast<int64_t>(q->xq4.size()), rows * row_bytes);
      EXPECT_EQ(static_cast<int64_t>(q->xq8.size()), rows * r_h);
      EXPECT_EQ(static_cast<int64_t>(q->sx4.size()), rows);
    }
  }
  const KvCacheBytes b = s.cache_bytes();
  EXPECT_EQ(b.packed_layers, 5);
  EXPECT_EQ(b.stored, 5 * 2 * rows * (row_bytes + r_h + 16));  // + 4-byte scale and zero per part
  EXPECT_EQ(b.fp32, 5 * 2 * rows * hd * 4);
  EXPECT_LT(b.stored, b.fp32);

  // Layer 0's cached rows are the full forward's cache rows: its keys come from the same embeddings
  // through per-token arithmetic, so the integer codes and zeros agree (allowing a rare rounding
  // flip); the float32 scales differ in about a third of the rows by fp32 summation order (the
  // packed GEMM's epilogue and U_C at M = B vs M = B * T), observed max relative difference 1.1e-5
  // (a single-channel 8-bit part's scale is |x| / 255, so a small x carries its GEMM cancellation).
  const at::Tensor k0 = observed.keys.at(0).to(at::kFloat).permute({2, 0, 1, 3}).contiguous();  // [T, B, Hkv, hd]
  const cpu::QuantizedActivations want = kv->pack(k0.data_ptr<float>(), rows);
  const cpu::QuantizedActivations& got = s.packed_keys(0);
  int64_t same_codes = 0;
  double scale_rel = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    same_codes += std::memcmp(got.xq4.data() + r * row_bytes, want.xq4.data() + r * row_bytes, row_bytes) == 0 &&
                  std::memcmp(got.xq8.data() + r * r_h, want.xq8.data() + r * r_h, r_h) == 0 &&
                  got.zx4[r] == want.zx4[r] && got.zx8[r] == want.zx8[r];
    scale_rel = std::max({scale_rel, std::abs(got.sx4[r] - want.sx4[r]) / static_cast<double>(want.sx4[r]),
                          std::abs(got.sx8[r] - want.sx8[r]) / static_cast<double>(want.sx8[r])});
  }
  std::printf("layer 0 packed K rows: %lld of %lld with identical codes, scales within %.3g relative\n",
              static_cast<long long>(same_codes), static_cast<long long>(rows), scale_rel);
  EXPECT_GE(static_cast<double>(same_codes) / rows, 0.99);
  EXPECT_LT(scale_rel, 1e-4);
  // And attention reads them dequantized: equal to the full forward's cache transform of those keys.
  const at::Tensor dequant_full = kv->apply(observed.keys.at(0));
  EXPECT_LT(max_rel(s.cached_keys(0), dequant_full), 1e-2);
}

// In float64: every quantizer rounds per token or per (token, head), so the incremental and the full
// forward differ only by summation order; in float32 that order (GEMMs of M = B·20 vs B·64 rows) can
// flip one rounding, which 4-bit activations and KV cache then carry into every later token (observed
// with the per-KV-head U_C checkpoint: one V code of layer 1, token 16, then a max relative logit
// difference of 0.19 from token 20 on, argmax agreement 0.945; in float64 4.9e-16 and 1.0).
TEST_F(DecodePacked, SimulateModeIncrementalMatchesSimulatedFullForward) {
  LoadOptions o;
  o.dtype = "float64";
  Decoder d = load_model_for_eval(checkpoint(), o, ExecutionMode::kSimulate);
  c10::NoGradGuard guard;
  const at::Tensor ids = story_ids(2, 64);
  const at::Tensor full = d.forward(ids);
  DecodeSession s(d);
  const at::Tensor inc = incremental_logits(s, ids, {20, 1});
  EXPECT_EQ(inc.scalar_type(), at::kDouble);
  EXPECT_FALSE(s.packed_cache(0));  // KvFakeQuant: dequantized floats are stored, here float64
  EXPECT_EQ(s.cache_bytes().stored, 2 * s.cache_bytes().fp32);
  const double rel = max_rel(inc, full), agree = argmax_agreement(inc, full);
  std::printf("simulated incremental vs full forward: max rel %.3g, argmax agreement %.4f\n", rel, agree);
  EXPECT_LT(rel, 1e-9);
  EXPECT_EQ(agree, 1.0);
}

// One U_C per KV head (format 1.2), nothing else that rounds per token (4-bit weights only): the
// incremental path applies each head's U_C exactly as the full forward (a query head its KV head's).
TEST_F(DecodePacked, PerKvHeadQkRotationIncrementalMatchesFullForward) {
  const std::string dir = test::quantized_stories("resq-w4a16", /*seed=*/1, /*nsamples=*/4, /*seqlen=*/64);
  for (const ExecutionMode mode : {ExecutionMode::kPacked, ExecutionMode::kSimulate}) {
    Decoder d = load_model_for_eval(dir, LoadOptions{}, mode);
    const auto* uc = dynamic_cast<const MatrixTransform*>(d.layers()[0].qk_transform.get());
    ASSERT_TRUE(uc);
    ASSERT_EQ(uc->matrix().sizes(), at::IntArrayRef({4, 8, 8}));  // stories260K: 4 KV heads, head_dim 8
    EXPECT_FALSE(at::equal(uc->matrix()[0], uc->matrix()[1]));
    c10::NoGradGuard guard;
    const at::Tensor ids = story_ids(2, 64);
    const at::Tensor full = d.forward(ids);
    DecodeSession s(d);
    const double rel = max_rel(incremental_logits(s, ids, {20, 1}), full);
    EXPECT_LT(rel, 1e-4) << (mode == ExecutionMode::kPacked ? "packed" : "simulate");
  }
}

TEST_F(DecodePacked, GreedyGenerationIsDeterministic) {
  Decoder d = load_model_for_eval(checkpoint(), LoadOptions{});
  const std::vector<int64_t> prompt = {1, 403, 407, 261, 378};  // BOS + arbitrary ids
  GenerateOptions o;
  o.max_new_tokens = 24;
  const GenerateResult a = generate(d, prompt, o), b = generate(d, prompt, o);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.prompt_tokens, 5);
  EXPECT_EQ(a.decode_steps, static_cast<int64_t>(a.tokens.size()) - 1);
  EXPECT_EQ(a.cache.packed_layers, 5);
  EXPECT_GT(a.cache.stored, 0);
  EXPECT_LT(a.cache.stored, a.cache.fp32);
}

// ------------------------------------------------------------------ generation and sampling

TEST(Generate, GreedyIsDeterministicAndEqualsArgmaxOfTheFullForward) {
  Decoder d = Decoder::load(stories_dir());
  c10::NoGradGuard guard;
  const at::Tensor ids = story_ids(1, 12);
  const std::vector<int64_t> prompt(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + 12);
  GenerateOptions o;
  o.max_new_tokens = 40;
  std::vector<int64_t> streamed;
  const GenerateResult a = generate(d, prompt, o, [&](int64_t t) { streamed.push_back(t); });
  const GenerateResult b = generate(d, prompt, o);
  ASSERT_FALSE(a.tokens.empty());
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.tokens, streamed);
  // Teacher-forced check: every greedy token is the argmax of the full forward at its position.
  std::vector<int64_t> seq = prompt;
  seq.insert(seq.end(), a.tokens.begin(), a.tokens.end() - 1);
  const at::Tensor logits =
      d.forward(at::tensor(at::ArrayRef<int64_t>(seq), at::TensorOptions().dtype(at::kLong)).view({1, -1}));
  for (size_t i = 0; i < a.tokens.size(); ++i) {
    EXPECT_EQ(logits[0][static_cast<int64_t>(prompt.size() + i) - 1].argmax().item<int64_t>(), a.tokens[i]) << "token " << i;
  }
  // Stops at EOS when the model produces it; EOS is the last token.
  ASSERT_GT(a.tokens.size(), 3u);
  GenerateOptions e = o;
  e.eos_id = a.tokens[2];
  const GenerateResult c = generate(d, prompt, e);
  EXPECT_TRUE(c.stopped_at_eos);
  const auto first = std::find(a.tokens.begin(), a.tokens.end(), *e.eos_id);
  EXPECT_EQ(c.tokens, std::vector<int64_t>(a.tokens.begin(), first + 1));
  // Sampling with top_k = 1 is greedy; a seeded temperature run is reproducible.
  GenerateOptions k1 = o;
  k1.sampling.temperature = 0.7;
  k1.sampling.top_k = 1;
  EXPECT_EQ(generate(d, prompt, k1).tokens, a.tokens);
  GenerateOptions t = o;
  t.sampling.temperature = 1.0;
  t.sampling.seed = 11;
  EXPECT_EQ(generate(d, prompt, t).tokens, generate(d, prompt, t).tokens);
}

TEST(GenerateSampler, SeededTopKAndFrequencies) {
  const at::Tensor logits = at::log(at::tensor({0.1, 0.6, 0.05, 0.25}));
  // Greedy: argmax; ties go to the lowest id.
  TokenSampler greedy({});
  EXPECT_EQ(greedy.sample(logits), 1);
  EXPECT_EQ(greedy.sample(at::tensor({0.5f, 2.0f, 2.0f})), 1);
  // Seeded: the same seed draws the same sequence, another seed a different one.
  auto draws = [&](uint64_t seed, int64_t top_k, int n) {
    TokenSampler s({1.0, top_k, seed});
    std::vector<int64_t> out;
    for (int i = 0; i < n; ++i) out.push_back(s.sample(logits));
    return out;
  };
  EXPECT_EQ(draws(3, 0, 200), draws(3, 0, 200));
  EXPECT_NE(draws(3, 0, 200), draws(4, 0, 200));
  // Temperature 1 samples softmax(logits) = the probabilities above.
  const auto many = draws(7, 0, 40000);
  std::vector<double> freq(4, 0.0);
  for (int64_t t : many) freq[static_cast<size_t>(t)] += 1.0 / many.size();
  const double expected[] = {0.1, 0.6, 0.05, 0.25};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(freq[i], expected[i], 0.01) << "token " << i;
  // top_k = 2 keeps tokens 1 and 3 only, renormalized: 0.6 / 0.85 and 0.25 / 0.85.
  const auto top2 = draws(9, 2, 20000);
  int64_t ones = 0;
  for (int64_t t : top2) {
    ASSERT_TRUE(t == 1 || t == 3) << t;
    ones += t == 1;
  }
  EXPECT_NEAR(static_cast<double>(ones) / top2.size(), 0.6 / 0.85, 0.015);
}

TEST(Generate, MemoryFollowsTheGeneratedTokensNotMaxNewTokens) {
  // stories260K with a context of 2^24 positions (the largest config.json may state) and max_new_tokens
  // 2^23: reserving RoPE tables and KV caches for everything allowed needs over 20 GiB (bad_alloc, or the OOM killer); a generation
  // that stops at EOS after at most 3 tokens must allocate for those only.
  test::TempDir dir;
  for (const char* f : {"model.safetensors", "tokenizer.model"}) {
    std::filesystem::copy_file(std::filesystem::path(stories_dir()) / f, std::filesystem::path(dir.path()) / f);
  }
  nlohmann::json config = nlohmann::json::parse(test::read_file(stories_dir() + "/config.json"));
  config["max_position_embeddings"] = int64_t{1} << 24;
  test::write_file(dir.file("config.json"), config.dump());
  Decoder d = Decoder::load(dir.path());
  c10::NoGradGuard guard;
  ASSERT_EQ(d.config().max_position_embeddings, int64_t{1} << 24);
  const at::Tensor ids = story_ids(1, 12);
  const std::vector<int64_t> prompt(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + 12);
  GenerateOptions o;
  o.max_new_tokens = 3;
  const GenerateResult a = generate(d, prompt, o);
  ASSERT_EQ(a.tokens.size(), 3u);
  o.max_new_tokens = int64_t{1} << 23;
  o.eos_id = a.tokens[2];
  const GenerateResult b = generate(d, prompt, o);
  EXPECT_TRUE(b.stopped_at_eos);
  EXPECT_LE(b.tokens.size(), 3u);
  // A count whose position total overflows int64 is refused with the context named, not wrapped.
  o.max_new_tokens = std::numeric_limits<int64_t>::max();
  try {
    generate(d, prompt, o);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings is 16777216 (at most 16777205 new tokens"),
              std::string::npos)
        << e.what();
  }
}

// ------------------------------------------------------------------ errors

TEST(DecodeSession, ErrorsAreClear) {
  Decoder d = Decoder::load(stories_dir());
  c10::NoGradGuard guard;
  DecodeSession s(d);
  const auto opts = at::TensorOptions().dtype(at::kLong);
  EXPECT_THROW(s.step(at::zeros({1, 0}, opts)), ShapeError);
  EXPECT_THROW(s.step(at::zeros({4}, opts)), ShapeError);
  // An id outside the vocabulary leaves the session untouched.
  EXPECT_THROW(s.step(at::full({1, 3}, 512, opts)), ShapeError);
  EXPECT_EQ(s.position(), 0);
  // Positions: 510 + 3 > max_position_embeddings = 512 is refused with the limit named; the
  // session is unchanged and can still take the 2 positions left.
  ASSERT_EQ(s.max_positions(), 512);
  s.step(at::randint(3, 500, {1, 510}, opts));
  try {
    s.step(at::full({1, 3}, 5, opts));
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings (512)"), std::string::npos) << e.what();
  }
  EXPECT_EQ(s.position(), 510);
  EXPECT_EQ(s.step(at::full({1, 2}, 5, opts)).size(1), 2);
  EXPECT_EQ(s.position(), 512);
  // The batch size is fixed until reset().
  s.reset();
  s.step(at::full({2, 3}, 5, opts));
  EXPECT_THROW(s.step(at::full({1, 1}, 5, opts)), ShapeError);

  // generate(): empty prompt, too many positions, bad sampling options.
  GenerateOptions o;
  EXPECT_THROW(generate(d, {}, o), UsageError);
  o.max_new_tokens = 0;
  EXPECT_THROW(generate(d, {1, 2}, o), UsageError);
  o.max_new_tokens = 20;
  try {
    generate(d, std::vector<int64_t>(500, 5), o);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings is 512"), std::string::npos) << e.what();
  }
  o.max_new_tokens = 13;  // 500 + 13 - 1 = 512 positions: fits exactly
  EXPECT_EQ(generate(d, std::vector<int64_t>(500, 5), o).tokens.size(), 13u);
  EXPECT_THROW(TokenSampler({-1.0, 0, 0}), UsageError);
  EXPECT_THROW(TokenSampler({std::nan(""), 0, 0}), UsageError);
  EXPECT_THROW(TokenSampler({1.0, -2, 0}), UsageError);
  // --mode: bad names and --mode on a plain HF directory are usage errors.
  EXPECT_THROW(parse_execution_mode("fast"), UsageError);
  EXPECT_THROW(load_model_for_eval(stories_dir(), LoadOptions{}, ExecutionMode::kPacked), UsageError);
}

}  // namespace
}  // namespace resq
