// `quantize --device`: the device-generic paths the CUDA pipeline takes (torch Gram GEMMs, eigh, the
// torch GPTQ, the torch online Hadamard), forced on the CPU with RESQ_QUANTIZE_GENERIC=1, against the
// CPU paths on stories260K; the same on CUDA where a device exists; and the device errors.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/eval/perplexity.h"
#include "resq/model/decoder.h"
#include "resq/model/device.h"
#include "resq/quant/pipeline.h"
#include "resq/quant/recipe.h"
#include "resq/runtime/packed_model.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"
#include "resq/model/synthetic.h"
#include "../src/quant/pipeline_parts.h"  // the pipeline's private compute plan and memory estimate

namespace resq {
namespace {

// Sets an environment variable for the scope (the pipeline reads RESQ_QUANTIZE_* when it starts).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) {
      ::setenv(name_, old_.c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

QuantizeOptions stories_options(const std::string& out, const std::string& recipe) {
  QuantizeOptions o;
  o.model_dir = test::shared_path("models/stories260K");
  o.out_dir = out;
  o.recipe = load_recipe(std::string(RESQ_SOURCE_DIR) + "/configs/" + recipe + ".json");
  o.calib_path = test::shared_path("data/tinystories/train_head.txt");
  o.nsamples = 32;
  o.seqlen = 256;
  o.seed = 3;
  o.device = "cpu";
  return o;
}

// Packed ppl on 40 windows of 256 tokens of TinyStories' validation text (in-domain) or, with
// wikitext, of WikiText-2's test text (the yardstick).
double packed_ppl(const std::string& dir, bool wikitext = false) {
  auto tok = load_tokenizer(dir);
  const std::string text =
      wikitext ? wikitext_join(test::read_file(test::shared_path("data/wikitext-2-raw/wiki.test.raw"))).substr(0, 200000)
               : test::read_file(test::shared_path("data/tinystories/valid_head.txt"));
  const auto ids = tokenize_for_eval(*tok, text, tok->adds_bos());
  PerplexityOptions po;
  po.seqlen = 256;
  po.max_windows = 40;
  po.progress = false;
  Decoder packed = load_model_for_eval(dir, LoadOptions{});
  return evaluate_perplexity(packed, ids, po).ppl;
}

// The two reports' per-layer, per-linear GPTQ relative errors agree within `tol` (relative), and the
// PCA captured variances within 1e-9: the same statistics, decompositions and rounding decisions up
// to floating-point summation order.
void expect_same_quantization(const nlohmann::json& a, const nlohmann::json& b, double tol) {
  ASSERT_EQ(a["weight_relative_error"].size(), b["weight_relative_error"].size());
  double worst = 0.0;
  for (size_t l = 0; l < a["weight_relative_error"].size(); ++l) {
    for (const char* k : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}) {
      const double x = a["weight_relative_error"][l][k].get<double>();
      const double y = b["weight_relative_error"][l][k].get<double>();
      ASSERT_GT(x, 0.0) << l << " " << k;
      worst = std::max(worst, std::abs(x - y) / x);
    }
  }
  std::printf("largest relative difference of a per-linear weight error: %.3g\n", worst);
  EXPECT_LT(worst, tol) << "largest relative difference of a per-linear weight error";
  for (const char* s : {"U_A_captured_variance_top_r", "U_B_captured_variance_top_r_mean", "U_C_captured_variance_top_r_mean"}) {
    EXPECT_NEAR(a["spectra"][s].get<double>(), b["spectra"][s].get<double>(), 1e-9) << s;
  }
}

// The packed ppl of checkpoints `a` and `b` agree within 0.5% on TinyStories and on WikiText-2.
void expect_same_ppl(const std::string& a, const std::string& b) {
  for (bool wikitext : {false, true}) {
    const double pa = packed_ppl(a, wikitext), pb = packed_ppl(b, wikitext);
    const char* text = wikitext ? "WikiText-2" : "TinyStories";
    std::printf("packed %s ppl: %s %.4f, %s %.4f\n", text, a.c_str(), pa, b.c_str(), pb);
    EXPECT_LT(std::abs(pb - pa) / pa, 0.005) << text << ": " << a << " " << pa << ", " << b << " " << pb;
  }
}

TEST(PipelineDevice, GenericPathsMatchTheCpuPathsOnStories260K) {
  test::TempDir dir;
  const nlohmann::json cpu = quantize_model(stories_options(dir.file("cpu"), "resq"));
  nlohmann::json generic;
  {
    ScopedEnv env("RESQ_QUANTIZE_GENERIC", "1");
    generic = quantize_model(stories_options(dir.file("generic"), "resq"));
  }
  EXPECT_FALSE(cpu["compute"]["generic_paths"].get<bool>());
  EXPECT_TRUE(generic["compute"]["generic_paths"].get<bool>());
  EXPECT_EQ(cpu["compute"]["device"].get<std::string>(), "cpu");
  EXPECT_EQ(generic["compute"]["products"].get<std::string>(), "fp32");
  EXPECT_TRUE(generic["compute"]["peak_device_gib"].is_null());
  expect_same_quantization(cpu, generic, 0.02);
  expect_same_ppl(dir.file("cpu"), dir.file("generic"));
}

TEST(PipelineDevice, CudaMatchesTheCpuPathOnStories260K) {
  if (!cuda_usable()) GTEST_SKIP() << "no CUDA device visible to this libtorch";
  test::TempDir dir;
  const nlohmann::json cpu = quantize_model(stories_options(dir.file("cpu"), "resq"));
  QuantizeOptions o = stories_options(dir.file("cuda"), "resq");
  o.device = "cuda";
  const nlohmann::json cuda = quantize_model(o);
  EXPECT_TRUE(cuda["compute"]["generic_paths"].get<bool>());
  EXPECT_TRUE(cuda["compute"]["peak_device_gib"].is_number());
  EXPECT_GT(cuda["stages"]["weight_quantization_peak_device_gib"].get<double>(), 0.0);
  expect_same_quantization(cpu, cuda, 0.02);
  expect_same_ppl(dir.file("cpu"), dir.file("cuda"));
}

// The learned-rotation step (autograd through the decoder) on the GPU: a short run of the shipped
// recipe: the rotations stay orthogonal and the checkpoint is finite.
TEST(PipelineDevice, LearnedRotationsRunOnCuda) {
  if (!cuda_usable()) GTEST_SKIP() << "no CUDA device visible to this libtorch";
  test::TempDir dir;
  QuantizeOptions o = stories_options(dir.file("learned"), "resq-learned");
  o.recipe.rotation.learn.steps = 4;
  o.recipe.rotation.learn.eval_every = 2;
  o.device = "cuda";
  const nlohmann::json r = quantize_model(o);
  ASSERT_TRUE(r.contains("learned_rotation"));
  EXPECT_LT(r["learned_rotation"]["orthogonality_error"].get<double>(), 1e-10);
  const double p = packed_ppl(dir.file("learned"));
  EXPECT_TRUE(std::isfinite(p) && p > 1.0 && p < 100.0) << p;
}

TEST(PipelineDevice, RtnAndQuarotRunOnTheGenericPaths) {
  test::TempDir dir;
  ScopedEnv env("RESQ_QUANTIZE_GENERIC", "1");
  for (const char* recipe : {"resq-rtn", "quarot"}) {
    const nlohmann::json r = quantize_model(stories_options(dir.file(recipe), recipe));
    EXPECT_TRUE(r["compute"]["generic_paths"].get<bool>()) << recipe;
    EXPECT_TRUE(is_quantized_model_dir(dir.file(recipe))) << recipe;
    const double p = packed_ppl(dir.file(recipe));
    EXPECT_TRUE(std::isfinite(p) && p > 1.0 && p < 100.0) << recipe << " " << p;
  }
}

TEST(PipelineDevice, DeviceErrorsNameTheFlagAndWriteNothing) {
  test::TempDir dir;
  QuantizeOptions o = stories_options(dir.file("out"), "resq-rtn");
  o.device = "tpu";
  EXPECT_THROW(quantize_model(o), UsageError);
  EXPECT_FALSE(std::filesystem::exists(dir.file("out")));
  if (!cuda_usable()) {
    o.device = "cuda";
    try {
      quantize_model(o);
      FAIL() << "quantize --device cuda ran without a device";
    } catch (const UnsupportedError& e) {
      EXPECT_NE(std::string(e.what()).find("--device cuda"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(std::filesystem::exists(dir.file("out")));
  }
  ScopedEnv env("RESQ_QUANTIZE_PRODUCTS", "tf32");  // TF32 is CUDA's
  o.device = "cpu";
  EXPECT_THROW(quantize_model(o), UsageError);
  EXPECT_FALSE(std::filesystem::exists(dir.file("out")));
}

// The compute plan: products by device and width, the environment overrides, and their errors.
TEST(PipelineDevice, ComputePlanPicksProductsByDeviceAndWidth) {
  using pipeline::Products;
  const at::Device cpu(at::kCPU), cuda(at::kCUDA, 0);  // cuda only as a value: nothing runs on it
  EXPECT_EQ(pipeline::make_compute_plan(cpu, 64).products, Products::kFp32);
  EXPECT_EQ(pipeline::make_compute_plan(cpu, 2048).products, Products::kBf16);
  EXPECT_FALSE(pipeline::make_compute_plan(cpu, 2048).generic);
  EXPECT_EQ(pipeline::make_compute_plan(cuda, 64).products, Products::kFp32);
  EXPECT_EQ(pipeline::make_compute_plan(cuda, 2048).products, Products::kTf32);
  EXPECT_TRUE(pipeline::make_compute_plan(cuda, 64).generic);
  {
    ScopedEnv env("RESQ_QUANTIZE_GENERIC", "1");
    const pipeline::ComputePlan p = pipeline::make_compute_plan(cpu, 2048);
    EXPECT_TRUE(p.generic);
    EXPECT_EQ(p.products, Products::kFp32);  // bf16 products are oneDNN's CPU path, not a generic one
  }
  {
    ScopedEnv env("RESQ_QUANTIZE_GENERIC", "yes");
    EXPECT_THROW(pipeline::make_compute_plan(cpu, 64), UsageError);
  }
  {
    ScopedEnv env("RESQ_QUANTIZE_PRODUCTS", "fp32");
    EXPECT_EQ(pipeline::make_compute_plan(cpu, 2048).products, Products::kFp32);
    EXPECT_EQ(pipeline::make_compute_plan(cuda, 2048).products, Products::kFp32);
  }
  {
    ScopedEnv env("RESQ_QUANTIZE_PRODUCTS", "bf16");
    EXPECT_EQ(pipeline::make_compute_plan(cpu, 64).products, Products::kBf16);
    EXPECT_THROW(pipeline::make_compute_plan(cuda, 64), UsageError);
  }
  {
    ScopedEnv env("RESQ_QUANTIZE_PRODUCTS", "tf32");
    EXPECT_EQ(pipeline::make_compute_plan(cuda, 64).products, Products::kTf32);
    try {
      pipeline::make_compute_plan(cpu, 64);
      FAIL() << "tf32 on the CPU";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("RESQ_QUANTIZE_PRODUCTS"), std::string::npos) << e.what();
    }
  }
  // Tf32Scope restores the previous setting.
  const bool before = at::globalContext().allowTF32CuBLAS();
  {
    const pipeline::Tf32Scope scope(true);
    EXPECT_TRUE(at::globalContext().allowTF32CuBLAS());
  }
  EXPECT_EQ(at::globalContext().allowTF32CuBLAS(), before);
}

// The device-memory estimate at the Llama-3-8B shape, 128 x 2048 tokens, TF32, 4 windows per call,
// bf16 embeddings, term by term from the shapes (d 4096, q 4096, kv 1024, ffn 14336, vocab 128256).
TEST(PipelineDevice, DeviceMemoryEstimateAtTheLlama3_8BShape) {
  const ModelConfig c = synthetic_shape_config("llama-3-8b");
  ASSERT_EQ(c.hidden_size, 4096);
  ASSERT_EQ(c.intermediate_size, 14336);
  pipeline::ComputePlan plan;
  plan.device = at::Device(at::kCUDA, 0);  // only read, never used
  plan.products = pipeline::Products::kTf32;
  const pipeline::DeviceMemoryEstimate e = pipeline::estimate_device_memory(c, 128, 2048, 4, plan, 2);
  const double G = 1024.0 * 1024.0 * 1024.0, d = 4096, f = 14336;
  EXPECT_DOUBLE_EQ(e.hidden_gib, 4.0);  // 128 * 2048 * 4096 float32
  EXPECT_DOUBLE_EQ(e.layer_gib, ((d * d * 2 + 2 * d * 1024 + 3 * d * f) * 4 + 2 * d * f * 8) / G);
  EXPECT_DOUBLE_EQ(e.statistics_gib, (3 * d * d + f * f) * 12 / G);
  EXPECT_DOUBLE_EQ(e.gptq_gib, (f * f * (3 * 8 + 4) + 3 * d * f * 4) / G);
  EXPECT_DOUBLE_EQ(e.activations_gib, 4.0 * 2048 * f * 4 * 5 / G);
  EXPECT_DOUBLE_EQ(e.globals_gib, 2.0 * 128256 * d * 2 / G);
  // The weight stage (Hessians + GPTQ of down_proj) sets the peak: ~14.6 GiB.
  EXPECT_DOUBLE_EQ(e.total_gib(), e.hidden_gib + e.layer_gib + e.statistics_gib + e.gptq_gib);
  std::printf("8B shape, 128 x 2048: estimated device peak %.2f GiB (GPTQ %.2f, statistics %.2f)\n", e.total_gib(),
              e.gptq_gib, e.statistics_gib);
  EXPECT_GT(e.total_gib(), 14.0);
  EXPECT_LT(e.total_gib(), 15.0);
}

}  // namespace
}  // namespace resq
