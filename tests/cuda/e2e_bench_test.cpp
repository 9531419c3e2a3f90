// Tests of the end-to-end generation benchmark (src/bench/e2e_bench.cpp): run_e2e_bench on the CPU
// for the tiny shape (both paths, finite logits, positive timings, greedy tokens equal to a
// DecodeSession + TokenSampler loop, and at batch 1 to resq::generate, on a model rebuilt from the
// same seed), make_bench_model, the option and
// no-device errors, and a short run on a device (skipped without one).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda/cuda_torch_test.h"
#include "resq/bench/e2e_bench.h"
#include "resq/bench/layer_bench.h"
#include "resq/common/error.h"
#include "resq/model/decoder.h"
#include "resq/model/synthetic.h"
#include "resq/runtime/generate.h"
#include "resq/runtime/packed_model.h"

namespace resq {
namespace {

E2eBenchOptions tiny_options(const std::string& device) {
  E2eBenchOptions o;
  o.models = {"tiny"};  // d 128, 8 x 16 heads, 4 kv, ffn 352, vocab 512
  o.layers = 2;
  o.prefill = 40;
  o.prompt = 9;
  o.new_tokens = 6;
  o.batches = {1, 3};
  o.warmup = 1;
  o.repeats = 2;
  o.seed = 5;
  o.device = device;
  o.record_tokens = true;
  return o;
}

// Greedy decoding of the prompts [B][P] through a fresh DecodeSession of `model` with TokenSampler
// (greedy: the first maximum of the float64 logits) choosing each row's token on the host: the
// reference the benchmark's device-side argmax loop must reproduce. -> tokens [B][new_tokens + 1].
std::vector<std::vector<int64_t>> reference_greedy(const Decoder& model, const std::vector<std::vector<int64_t>>& prompts,
                                                   int64_t new_tokens) {
  const int64_t B = static_cast<int64_t>(prompts.size()), P = static_cast<int64_t>(prompts[0].size());
  at::Tensor ids = at::empty({B, P}, at::TensorOptions().dtype(at::kLong));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < P; ++t) ids[b][t] = prompts[static_cast<size_t>(b)][static_cast<size_t>(t)];
  DecodeSession session(model);
  TokenSampler sampler(SamplingOptions{});
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(B));
  at::Tensor logits = session.step(ids).select(1, P - 1);  // [B, vocab]
  for (int64_t i = 0; i <= new_tokens; ++i) {
    at::Tensor next = at::empty({B, 1}, at::TensorOptions().dtype(at::kLong));
    for (int64_t b = 0; b < B; ++b) {
      const int64_t token = sampler.sample(logits[b]);
      out[static_cast<size_t>(b)].push_back(token);
      next[b][0] = token;
    }
    if (i < new_tokens) logits = session.step(next).select(1, 0);
  }
  return out;
}

// The benchmark's recorded tokens of one decode entry against reference_greedy on the same prompts;
// at batch 1 also against resq::generate (the `resq generate` loop).
void expect_tokens_match_reference(const Decoder& model, const nlohmann::json& decode, int64_t new_tokens,
                                   const std::string& what) {
  const auto prompts = decode["prompt_ids"].get<std::vector<std::vector<int64_t>>>();
  const auto tokens = decode["tokens"].get<std::vector<std::vector<int64_t>>>();
  ASSERT_EQ(prompts.size(), static_cast<size_t>(decode["batch"].get<int64_t>()));
  ASSERT_EQ(tokens.size(), prompts.size());
  for (const auto& row : tokens) ASSERT_EQ(static_cast<int64_t>(row.size()), new_tokens + 1);
  EXPECT_EQ(tokens, reference_greedy(model, prompts, new_tokens)) << what << ", batch " << prompts.size();
  if (prompts.size() == 1) {
    GenerateOptions g;
    g.max_new_tokens = new_tokens + 1;  // the prompt step's token + one per decode step
    EXPECT_EQ(tokens[0], generate(model, prompts[0], g).tokens) << what << ", generate()";
  }
}

TEST(E2eBench, CpuTinyBothPathsMatchGenerate) {
  c10::NoGradGuard no_grad;
  const E2eBenchOptions o = tiny_options("cpu");
  std::vector<std::string> seen;
  static std::vector<std::string>* rows_seen = nullptr;
  rows_seen = &seen;
  const nlohmann::json r = run_e2e_bench(o, [](const nlohmann::json& row) { rows_seen->push_back(row["path"]); });
  EXPECT_EQ(seen, (std::vector<std::string>{"bf16", "resq-packed"}));
  EXPECT_EQ(r["device"], "cpu");
  EXPECT_FALSE(r["libtorch"].get<std::string>().empty());
  ASSERT_EQ(r["rows"].size(), 2u);

  ModelConfig c = synthetic_shape_config("tiny");
  c.num_layers = 2;
  const BenchLayerKind kinds[2] = {BenchLayerKind::kBf16, BenchLayerKind::kResqPacked};
  for (int i = 0; i < 2; ++i) {
    const auto& row = r["rows"][static_cast<size_t>(i)];
    SCOPED_TRACE(row["path"].get<std::string>());
    EXPECT_EQ(row["layers"], 2);
    EXPECT_TRUE(row["logits_finite"].get<bool>());
    EXPECT_GT(row["prefill_tok_s"].get<double>(), 0.0);
    EXPECT_GT(row["prefill_ms"].get<double>(), 0.0);
    EXPECT_GE(row["build_s"].get<double>(), 0.0);
    EXPECT_GT(row["kv_cache_bytes"].get<int64_t>(), 0);
    // On the CPU the packed layers' K/V transform is PackedKvCacheQuant: the session stores packed rows.
    EXPECT_EQ(row["kv_packed_layers"].get<int64_t>(), i == 0 ? 0 : 2);
    ASSERT_EQ(row["decode"].size(), 2u);
    for (const auto& d : row["decode"]) {
      EXPECT_GT(d["tok_s"].get<double>(), 0.0);
      EXPECT_GT(d["ms_per_step"].get<double>(), 0.0);
      EXPECT_GT(d["speedup_vs_bf16"].get<double>(), 0.0);
      for (const auto& seq : d["tokens"]) {
        for (int64_t t : seq.get<std::vector<int64_t>>()) {
          EXPECT_GE(t, 0);
          EXPECT_LT(t, c.vocab_size);
        }
      }
    }
    // The model rebuilt from the same seed gives the same greedy tokens through generate().
    BenchBuildOptions build;
    build.draw_device = "cpu";
    const Decoder model = make_bench_model(c, kinds[i], o.seed, "cpu", build, 1);
    for (const auto& d : row["decode"]) expect_tokens_match_reference(model, d, o.new_tokens, row["path"]);
  }
  EXPECT_DOUBLE_EQ(r["rows"][0]["prefill_speedup_vs_bf16"].get<double>(), 1.0);
  // Different weights, different tokens: the packed model is not the bf16 one.
  EXPECT_NE(r["rows"][0]["decode"][0]["tokens"], r["rows"][1]["decode"][0]["tokens"]);
}

// make_bench_model: every layer built and seeded per layer, the same layers with 1 or 3 build
// threads, layer 0 = make_bench_layer's layer, globals shared by both kinds.
TEST(E2eBench, MakeBenchModelSeedsPerLayer) {
  c10::NoGradGuard no_grad;
  ModelConfig c = synthetic_shape_config("tiny");
  c.num_layers = 3;
  Decoder a = make_bench_model(c, BenchLayerKind::kResqPacked, 9, "cpu", {}, 1);
  const Decoder b = make_bench_model(c, BenchLayerKind::kResqPacked, 9, "cpu", {}, 3);
  const Decoder f = make_bench_model(c, BenchLayerKind::kBf16, 9, "cpu", {}, 2);
  const Decoder one = make_bench_layer(c, BenchLayerKind::kResqPacked, 9, "cpu");
  ASSERT_EQ(a.layers().size(), 3u);
  for (const auto& L : a.layers()) EXPECT_TRUE(L.loaded());
  EXPECT_TRUE(at::equal(a.embed_weight, f.embed_weight));
  EXPECT_EQ(a.embed_weight.scalar_type(), at::kBFloat16);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const at::Tensor x = at::randn({1, 12, c.hidden_size}, gen, at::TensorOptions().dtype(at::kFloat)).to(at::kBFloat16);
  const RopeTables rope = a.rope_tables(12);
  const at::Tensor y0 = a.run_layer(0, x, rope), y1 = a.run_layer(1, x, rope);
  EXPECT_TRUE(at::equal(y0, one.run_layer(0, x, one.rope_tables(12))));  // layer 0 = the --layer layer
  EXPECT_FALSE(at::equal(y0, y1));                                       // layers differ
  for (int64_t l = 0; l < 3; ++l) EXPECT_TRUE(at::equal(a.run_layer(l, x, rope), b.run_layer(l, x, rope)));
  const at::Tensor ids = at::randint(c.vocab_size, {1, 8}, gen, at::TensorOptions().dtype(at::kLong));
  EXPECT_TRUE(at::isfinite(a.forward(ids)).all().item<bool>());
}

TEST(E2eBench, OptionErrors) {
  E2eBenchOptions o = tiny_options("cpu");
  o.prefill = 2000;  // tiny has max_position_embeddings 1024
  EXPECT_THROW(run_e2e_bench(o), UsageError);
  o = tiny_options("cpu");
  o.batches = {};
  EXPECT_THROW(run_e2e_bench(o), UsageError);
  o = tiny_options("cpu");
  o.new_tokens = 0;
  EXPECT_THROW(run_e2e_bench(o), UsageError);
  o = tiny_options("cpu");
  o.models = {"gpt5"};
  EXPECT_THROW(run_e2e_bench(o), UsageError);
}

TEST(E2eBench, NoUsableDeviceIsAUsageError) {
  if (packed_cuda_unavailable_reason().empty()) GTEST_SKIP() << "a usable CUDA device is present";
  try {
    run_e2e_bench(tiny_options("cuda"));
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("no CUDA device"), std::string::npos) << what;
    EXPECT_NE(what.find("use --cpu"), std::string::npos) << what;
  }
}

using E2eBenchDeviceTest = test::CudaTorchTest;

// The same tiny run on the device: weights drawn and RTN-quantized there, PackedCudaLinear and
// PackedCudaKvCacheQuant (a fake quant, so the session keeps a bf16 cache: no packed layers). Tokens
// are compared with generate() only for the first one (cuBLAS and the CPU-free argmax may break
// near-ties differently from the float64 sampler after that).
TEST_F(E2eBenchDeviceTest, TinyRunsOnDevice) {
  c10::NoGradGuard no_grad;
  E2eBenchOptions o = tiny_options("cuda");
  const nlohmann::json r = run_e2e_bench(o);
  ASSERT_EQ(r["rows"].size(), 2u);
  EXPECT_NE(r["device"], "cpu");
  ModelConfig c = synthetic_shape_config("tiny");
  c.num_layers = 2;
  BenchBuildOptions build;
  build.draw_device = "cuda";
  const Decoder packed = make_bench_model(c, BenchLayerKind::kResqPacked, o.seed, "cuda", build, 2);
  EXPECT_EQ(packed.layers()[1].o->implementation(), "packed-cuda");
  for (const auto& row : r["rows"]) {
    EXPECT_TRUE(row["logits_finite"].get<bool>());
    EXPECT_GT(row["prefill_tok_s"].get<double>(), 0.0);
    for (const auto& d : row["decode"]) EXPECT_GT(d["tok_s"].get<double>(), 0.0);
  }
  const auto& d = r["rows"][1]["decode"][0];
  GenerateOptions g;
  g.max_new_tokens = 1;
  const GenerateResult ref = generate(packed, d["prompt_ids"][0].get<std::vector<int64_t>>(), g);
  EXPECT_EQ(d["tokens"][0][0].get<int64_t>(), ref.tokens[0]);
}

}  // namespace
}  // namespace resq
