// Decoder forward pass: stories260K against the independent float64 fixture, random-init Qwen2
// (biases) and GQA/tied models against a naive float64 reference, and decoder plumbing.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/test_util.h"
#include "model/reference_forward.h"
#include "resq/common/error.h"
#include "resq/eval/perplexity.h"
#include "resq/io/safetensors.h"
#include "resq/model/decoder.h"
#include "resq/model/synthetic.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"

namespace resq {
namespace {

nlohmann::json wikitext_fixture() {
  return nlohmann::json::parse(test::read_file(test::shared_path("fixtures/stories260K.wikitext2-test.json")));
}

at::Tensor ids_tensor(const std::vector<int64_t>& ids) {
  return at::tensor(at::ArrayRef<int64_t>(ids), at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
}

TEST(Decoder, Stories260KLogitsMatchFixture) {
  const auto fixture = wikitext_fixture();
  const auto ids = fixture["first_64_ids"].get<std::vector<int64_t>>();
  Decoder decoder = Decoder::load(test::shared_path("models/stories260K"));
  c10::NoGradGuard guard;
  at::Tensor logits = decoder.forward(ids_tensor(ids)).squeeze(0);  // [64, 512]
  ASSERT_EQ(logits.size(0), 64);
  ASSERT_EQ(logits.size(1), 512);
  int rows_checked = 0;
  for (const auto& [key, row] : fixture["first_64_logits"].items()) {
    const int64_t r = std::stoll(key.substr(4));  // "row_N"
    const auto expected = row.get<std::vector<double>>();
    for (size_t v = 0; v < expected.size(); ++v) {
      ASSERT_NEAR(logits[r][v].item<float>(), expected[v], 1e-4) << key << " vocab " << v;
    }
    ++rows_checked;
  }
  EXPECT_GE(rows_checked, 3);
  const auto argmax = fixture["first_64_argmax"].get<std::vector<int64_t>>();
  at::Tensor am = logits.argmax(-1);
  for (size_t t = 0; t < argmax.size(); ++t) EXPECT_EQ(am[t].item<int64_t>(), argmax[t]) << "position " << t;
}

TEST(Decoder, Stories260KFirstWindowNllMatchFixture) {
  const auto fixture = wikitext_fixture();
  auto tokenizer = load_tokenizer(test::shared_path("models/stories260K"));
  const std::string text = test::read_file(test::shared_path("data/wikitext-2-raw/test.hf_join.txt"));
  const auto ids = tokenize_for_eval(*tokenizer, text, true);
  Decoder decoder = Decoder::load(test::shared_path("models/stories260K"));
  PerplexityOptions options;
  options.seqlen = fixture["seqlen"].get<int64_t>();
  options.max_windows = 24;
  options.batch = 5;  // ragged last batch on purpose
  options.progress = false;
  const PerplexityResult r = evaluate_perplexity(decoder, ids, options);
  const auto expected = fixture["window_nll"].get<std::vector<double>>();
  ASSERT_EQ(r.window_nll.size(), 24u);
  for (size_t w = 0; w < r.window_nll.size(); ++w) {
    EXPECT_NEAR(r.window_nll[w], expected[w], 1e-5 * expected[w]) << "window " << w;
  }
  EXPECT_EQ(r.num_predictions, 24 * (options.seqlen - 1));
}

TEST(Decoder, Float64MatchesFixtureTightly) {
  const auto fixture = wikitext_fixture();
  const auto ids = fixture["first_64_ids"].get<std::vector<int64_t>>();
  LoadOptions lo;
  lo.dtype = "float64";
  Decoder decoder = Decoder::load(test::shared_path("models/stories260K"), lo);
  c10::NoGradGuard guard;
  at::Tensor logits = decoder.forward(ids_tensor(ids)).squeeze(0);
  const auto expected = fixture["first_64_logits"]["row_63"].get<std::vector<double>>();
  for (size_t v = 0; v < expected.size(); ++v) ASSERT_NEAR(logits[63][v].item<double>(), expected[v], 1e-9);
}

// Random-init models of other families against the naive float64 reference.
void check_against_reference(const std::string& shape, uint64_t seed) {
  test::TempDir dir;
  const std::string model_dir = dir.file("model");
  SyntheticModelOptions so;
  so.seed = seed;
  so.weight_dtype = "float32";
  so.tokenizer_vocab = 200;
  const ModelConfig config = synthetic_shape_config(shape);
  write_synthetic_model(config, model_dir, so);

  LoadOptions lo;
  lo.dtype = "float64";
  Decoder decoder = Decoder::load(model_dir, lo);
  std::vector<int64_t> ids;
  for (int64_t t = 0; t < 19; ++t) ids.push_back((t * 37 + 11) % config.vocab_size);
  c10::NoGradGuard guard;
  at::Tensor logits = decoder.forward(ids_tensor(ids)).squeeze(0);

  TensorStore store = TensorStore::open_model_dir(model_dir);
  test::ReferenceModel reference(decoder.config(), store);
  const auto expected = reference.forward(ids);
  double max_err = 0, max_abs = 0;
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t v = 0; v < config.vocab_size; ++v) {
      max_err = std::max(max_err, std::abs(logits[t][v].item<double>() - expected[t][v]));
      max_abs = std::max(max_abs, std::abs(expected[t][v]));
    }
  EXPECT_GT(max_abs, 1e-3) << "degenerate logits";
  EXPECT_LT(max_err, 1e-9 * std::max(1.0, max_abs)) << shape;

  // float32 agrees to float precision, and lazy loading gives bit-identical results.
  LoadOptions lazy;
  lazy.load_layers = false;
  Decoder eager = Decoder::load(model_dir);
  Decoder lazy_decoder = Decoder::load(model_dir, lazy);
  at::Tensor a = eager.forward(ids_tensor(ids));
  at::Tensor b = lazy_decoder.forward(ids_tensor(ids));
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_LT((a.squeeze(0).to(at::kDouble) - logits).abs().max().item<double>(), 1e-4 * std::max(1.0, max_abs));
}

TEST(Decoder, Qwen2WithBiasesMatchesReference) { check_against_reference("tiny-qwen2", 3); }
TEST(Decoder, GqaTiedMatchesReference) { check_against_reference("tiny-gqa-tied", 4); }

TEST(Decoder, BatchedWindowsEqualSingleWindows) {
  Decoder decoder = Decoder::load(test::shared_path("models/stories260K"));
  c10::NoGradGuard guard;
  at::Tensor ids = at::randint(0, 512, {3, 40}, at::TensorOptions().dtype(at::kLong));
  at::Tensor batched = decoder.forward(ids);
  for (int64_t b = 0; b < 3; ++b) {
    at::Tensor single = decoder.forward(ids.narrow(0, b, 1));
    // Different GEMM shapes sum in different orders: equal to float32 rounding, not bitwise.
    const float scale = std::max(1.0f, batched[b].abs().max().item<float>());
    EXPECT_LT((single.squeeze(0) - batched[b]).abs().max().item<float>(), 1e-5 * scale);
  }
}

class CountingObserver : public ForwardObserver {
 public:
  void on_linear_input(const LinearSite& site, const at::Tensor& x) override {
    ++linear_calls;
    if (site.kind == LinearKind::kDown) last_down_features = x.size(-1);
    if (site.kind == LinearKind::kLmHead) saw_lm_head = true;
  }
  void on_keys(int64_t layer, const at::Tensor& k) override { key_shape = k.sizes().vec(); }
  void on_values(int64_t layer, const at::Tensor& v) override { ++value_calls; }
  int linear_calls = 0, value_calls = 0;
  int64_t last_down_features = 0;
  bool saw_lm_head = false;
  std::vector<int64_t> key_shape;
};

TEST(Decoder, ObserverSeesEveryLinearInput) {
  Decoder decoder = Decoder::load(test::shared_path("models/stories260K"));
  CountingObserver obs;
  c10::NoGradGuard guard;
  decoder.forward(at::zeros({2, 7}, at::TensorOptions().dtype(at::kLong)), &obs);
  EXPECT_EQ(obs.linear_calls, 5 * 7 + 1);  // 7 linears per layer + lm_head
  EXPECT_EQ(obs.value_calls, 5);
  EXPECT_EQ(obs.last_down_features, 172);
  EXPECT_TRUE(obs.saw_lm_head);
  EXPECT_EQ(obs.key_shape, (std::vector<int64_t>{2, 4, 7, 8}));
}

// A transform that negates: applied to q and k it must leave the logits unchanged (q·kᵀ invariant);
// applied before down_proj it must change them.
class Negate : public TensorTransform {
 public:
  at::Tensor apply(const at::Tensor& x) const override { return -x; }
};

TEST(Decoder, OnlineTransformsAreApplied) {
  Decoder decoder = Decoder::load(test::shared_path("models/stories260K"));
  c10::NoGradGuard guard;
  at::Tensor ids = at::randint(0, 512, {1, 16}, at::TensorOptions().dtype(at::kLong));
  at::Tensor base = decoder.forward(ids);
  for (auto& layer : decoder.layers()) layer.qk_transform = std::make_shared<Negate>();
  EXPECT_LT((decoder.forward(ids) - base).abs().max().item<float>(), 1e-5);
  decoder.layers()[0].down_input_transform = std::make_shared<Negate>();
  EXPECT_GT((decoder.forward(ids) - base).abs().max().item<float>(), 1e-3);
}

TEST(Decoder, LoadErrorsNameTheTensor) {
  test::TempDir dir;
  const std::string model_dir = dir.file("model");
  SyntheticModelOptions so;
  so.tokenizer_vocab = 200;
  write_synthetic_model(synthetic_shape_config("tiny-gqa-tied"), model_dir, so);
  // Rewrite the weights without one required tensor.
  {
    TensorStore store = TensorStore::open_model_dir(model_dir);
    std::vector<TensorToWrite> tensors;
    for (const auto& name : store.names()) {
      if (name == "model.layers.1.mlp.up_proj.weight") continue;
      const auto& v = store.get(name);
      tensors.push_back({name, v.dtype, v.shape, v.data, v.nbytes});
    }
    write_safetensors(dir.file("model.safetensors"), tensors);
  }
  std::filesystem::rename(dir.file("model.safetensors"), model_dir + "/model.safetensors");
  try {
    Decoder::load(model_dir);
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Decoder::load(dir.file("nowhere")), IoError);
  LoadOptions bad;
  bad.dtype = "int8";
  EXPECT_THROW(Decoder::load(test::shared_path("models/stories260K"), bad), UsageError);
}

TEST(Decoder, RejectsOutOfVocabIds) {
  Decoder decoder = Decoder::load(test::shared_path("models/stories260K"));
  c10::NoGradGuard guard;
  EXPECT_THROW(decoder.forward(at::full({1, 4}, 512, at::TensorOptions().dtype(at::kLong))), ShapeError);
}

TEST(Decoder, Llama3RopeScalingChangesOnlyLowFrequencies) {
  ModelConfig c = synthetic_shape_config("tiny-gqa-tied");
  Decoder plain(c, at::kDouble, at::Device(at::kCPU));
  c.rope_scaling.type = RopeScaling::Type::kLlama3;
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 32;
  Decoder scaled(c, at::kDouble, at::Device(at::kCPU));
  const RopeTables a = plain.rope_tables(64), b = scaled.rope_tables(64);
  // head_dim 8: inv_freq = theta^(-i/4), i=0..3 -> wavelengths 2π·{1, 10, 100, 1000}.
  // high_freq_wavelen = 32/4 = 8, low_freq_wavelen = 32: i=0 (6.28) unchanged; i=1 (62.8) and
  // i=2, i=3 are > 32 -> divided by 8.
  const int64_t t = 50;
  EXPECT_DOUBLE_EQ(a.cos[t][0].item<double>(), b.cos[t][0].item<double>());
  const double inv1 = std::pow(10000.0, -2.0 / 8.0);
  EXPECT_NEAR(b.cos[t][1].item<double>(), std::cos(t * inv1 / 8.0), 1e-12);
  EXPECT_NEAR(b.sin[t][5].item<double>(), std::sin(t * inv1 / 8.0), 1e-12);
}

}  // namespace
}  // namespace resq
