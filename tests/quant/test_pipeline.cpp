// The quantization pipeline end to end: rotations are exact (rotated fp model == original logits),
// the fp recipe round-trips, quantized directories load for eval, and bad inputs fail clearly.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/format/checkpoint.h"
#include "resq/format/layout.h"
#include "resq/model/decoder.h"
#include "resq/model/synthetic.h"
#include "resq/quant/pipeline.h"
#include "resq/quant/recipe.h"
#include "resq/runtime/packed_model.h"

namespace resq {
namespace {

Recipe rotation_only(const std::string& method) {
  Recipe r;
  r.name = "rotation-only-" + method;
  r.rotation.method = method;
  r.rotation.high_fraction = method == "resq" ? 0.125 : 0.0;
  r.weights.method = "none";
  r.activations.enabled = false;
  r.kv.enabled = false;
  return r;
}

QuantizeOptions options_for(const std::string& model, const std::string& out, const Recipe& recipe, uint64_t seed) {
  QuantizeOptions o;
  o.model_dir = model;
  o.out_dir = out;
  o.recipe = recipe;
  o.calib_path = test::shared_path("data/tinystories/valid_head.txt");
  o.nsamples = 4;
  o.seqlen = 64;
  o.seed = seed;
  return o;
}

// Max |logits(quantized dir) - logits(original)| over a fixed token sequence, relative to max |logits|.
double relative_logit_change(const std::string& original, const std::string& quantized, int64_t vocab) {
  c10::NoGradGuard guard;
  std::vector<int64_t> ids;
  for (int64_t t = 0; t < 48; ++t) ids.push_back((t * 53 + 7) % vocab);
  at::Tensor x = at::tensor(at::ArrayRef<int64_t>(ids), at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
  LoadOptions lo;
  Decoder a = Decoder::load(original, lo);
  Decoder b = load_model_for_eval(quantized, lo);
  at::Tensor la = a.forward(x), lb = b.forward(x);
  return (la - lb).abs().max().item<double>() / std::max(1.0, la.abs().max().item<double>());
}

TEST(Pipeline, RotatedFpModelReproducesStories260KLogits) {
  const std::string model = test::shared_path("models/stories260K");
  for (const std::string method : {"resq", "quarot"}) {
    test::TempDir dir;
    const auto report = quantize_model(options_for(model, dir.file("out"), rotation_only(method), 11));
    EXPECT_TRUE(is_quantized_model_dir(dir.file("out")));
    EXPECT_LT(relative_logit_change(model, dir.file("out"), 512), 1e-4) << method;
    if (method == "resq") {
      const double captured = report["spectra"]["U_A_captured_variance_top_r"].get<double>();
      EXPECT_GT(captured, 0.125);  // PCA's top 1/8 holds more than 1/8 of the variance
      EXPECT_LE(captured, 1.0);
    }
  }
}

TEST(Pipeline, RotatedFpModelReproducesQwen2WithBiasesAndGqa) {
  test::TempDir dir;
  SyntheticModelOptions so;
  so.seed = 5;
  so.tokenizer_vocab = 200;
  so.weight_dtype = "float32";
  // hidden 64, 4 heads / 2 kv heads (head_dim 16 -> r_h = 2), q/k/v biases, FFN 160 = 32·5.
  write_synthetic_model(synthetic_shape_config("tiny-qwen2"), dir.file("model"), so);
  test::write_file(dir.file("calib.txt"), synthetic_text(9, 20000));
  for (const std::string method : {"resq", "quarot"}) {
    auto o = options_for(dir.file("model"), dir.file("out-" + method), rotation_only(method), 3);
    o.calib_path = dir.file("calib.txt");
    const auto report = quantize_model(o);
    // With one U_C per KV head, exact only when query head j takes KV head j / 2's.
    EXPECT_LT(relative_logit_change(dir.file("model"), dir.file("out-" + method), 300), 1e-4) << method;
    const auto ck = format::PackedCheckpoint::open(dir.file("out-" + method));
    EXPECT_EQ(format::qk_rotation_shape(ck.meta()), (std::vector<int64_t>{2, 16, 16}));
    for (int64_t l = 0; l < ck.meta().model.num_layers; ++l) {
      const at::Tensor u = at::tensor(ck.float_tensor(format::qk_rotation_tensor(l))).view({2, 16, 16}).to(at::kDouble);
      for (int64_t h = 0; h < 2; ++h) {
        EXPECT_LT((at::mm(u[h].t(), u[h]) - at::eye(16, at::kDouble)).abs().max().item<double>(), 1e-5) << method << " layer " << l;
      }
      // ResQ: each KV head the PCA basis of its own keys; QuaRot: one randomized Hadamard per layer.
      EXPECT_EQ(at::equal(u[0], u[1]), method == "quarot") << method << " layer " << l;
    }
    if (method == "resq") {
      const auto& spectra_c = report["spectra"]["U_C"];
      ASSERT_EQ(spectra_c.size(), static_cast<size_t>(2 * ck.meta().model.num_layers));
      EXPECT_EQ(spectra_c[1]["layer"], 0);
      EXPECT_EQ(spectra_c[1]["kv_head"], 1);
      // The two heads' keys differ: so do their spectra.
      EXPECT_NE(spectra_c[0]["spectrum"]["eigenvalues"], spectra_c[1]["spectrum"]["eigenvalues"]);
    }
  }
}

TEST(Pipeline, FpRecipeAndQuantizedRecipesLoad) {
  const std::string model = test::shared_path("models/stories260K");
  test::TempDir dir;
  const Recipe fp = load_recipe(std::string(RESQ_SOURCE_DIR) + "/configs/fp.json");
  quantize_model(options_for(model, dir.file("fp"), fp, 1));
  EXPECT_LT(relative_logit_change(model, dir.file("fp"), 512), 1e-5);

  // A quantized recipe changes the function (so the fake quantization is really installed), but
  // not absurdly: logits stay within a few units on this model.
  const Recipe rtn = load_recipe(std::string(RESQ_SOURCE_DIR) + "/configs/resq-rtn.json");
  const auto report = quantize_model(options_for(model, dir.file("rtn"), rtn, 1));
  const double change = relative_logit_change(model, dir.file("rtn"), 512);
  EXPECT_GT(change, 1e-3);
  EXPECT_LT(change, 1.0);
  EXPECT_EQ(report["weight_relative_error"].size(), 5u);
  EXPECT_DOUBLE_EQ(report["bits"]["weights"].get<double>(), 4.5);
  // Provenance recorded in the output.
  const auto q = nlohmann::json::parse(test::read_file(dir.file("rtn") + "/resq_config.json"));
  EXPECT_EQ(q["provenance"]["seed"].get<uint64_t>(), 1u);
  EXPECT_EQ(q["provenance"]["calibration"]["nsamples"].get<int64_t>(), 4);
  EXPECT_EQ(q["provenance"]["calibration"]["fnv1a"].get<std::string>().size(), 16u);
}

TEST(Pipeline, SeedsAreReproducible) {
  const std::string model = test::shared_path("models/stories260K");
  test::TempDir dir;
  const Recipe rtn = load_recipe(std::string(RESQ_SOURCE_DIR) + "/configs/resq-rtn.json");
  quantize_model(options_for(model, dir.file("a"), rtn, 7));
  quantize_model(options_for(model, dir.file("b"), rtn, 7));
  quantize_model(options_for(model, dir.file("c"), rtn, 8));
  const std::string a = test::read_file(dir.file("a") + "/model.safetensors");
  EXPECT_TRUE(a == test::read_file(dir.file("b") + "/model.safetensors"));
  EXPECT_FALSE(a == test::read_file(dir.file("c") + "/model.safetensors"));
}

TEST(Pipeline, Errors) {
  const std::string model = test::shared_path("models/stories260K");
  test::TempDir dir;
  const Recipe rtn = load_recipe(std::string(RESQ_SOURCE_DIR) + "/configs/resq-rtn.json");
  std::filesystem::create_directories(dir.file("exists"));
  EXPECT_THROW(quantize_model(options_for(model, dir.file("exists"), rtn, 1)), UsageError);
  auto o = options_for(model, dir.file("x"), rtn, 1);
  test::write_file(dir.file("short.txt"), "too short");
  o.calib_path = dir.file("short.txt");
  EXPECT_THROW(quantize_model(o), UsageError);
  EXPECT_FALSE(std::filesystem::exists(dir.file("x")));
  o.calib_path = dir.file("missing.txt");
  EXPECT_THROW(quantize_model(o), IoError);

  // A corrupted resq_config.json is rejected when loading.
  quantize_model(options_for(model, dir.file("ok"), rtn, 1));
  test::write_file(dir.file("ok") + "/resq_config.json", "{\"format\": \"resq-packed\", \"format_version\": 99}");
  EXPECT_THROW(load_model_for_eval(dir.file("ok"), LoadOptions{}), FormatError);
  test::write_file(dir.file("ok") + "/resq_config.json", "{ nope");
  EXPECT_THROW(load_model_for_eval(dir.file("ok"), LoadOptions{}), FormatError);
  // A packed checkpoint cannot be quantized again; --mode needs a packed checkpoint.
  EXPECT_THROW(load_model_for_eval(model, LoadOptions{}, ExecutionMode::kSimulate), UsageError);
}

}  // namespace
}  // namespace resq
