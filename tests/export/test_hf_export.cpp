// `resq export --format hf-bf16|hf-f32` (src/export/hf_export.cpp): resq's own fp eval of the exported
// directory against the checkpoint's weight-only simulation, what the directory holds, refusals; and
// the quantization_config a packed checkpoint's config.json carries.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/quantized_stories.h"
#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/eval/perplexity.h"
#include "resq/export/hf_export.h"
#include "resq/format/checkpoint.h"
#include "resq/model/config.h"
#include "resq/model/decoder.h"
#include "resq/runtime/packed_model.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"

namespace resq {
namespace {

namespace fs = std::filesystem;

// ppl of a model on the first 6 windows of 128 tokens of TinyStories valid_head.txt.
double stories_ppl(Decoder& m, const std::string& tokenizer_dir) {
  auto tok = load_tokenizer(tokenizer_dir);
  const auto ids =
      tokenize_for_eval(*tok, test::read_file(test::shared_path("data/tinystories/valid_head.txt")), tok->adds_bos());
  PerplexityOptions po;
  po.seqlen = 128;
  po.max_windows = 6;
  po.progress = false;
  return evaluate_perplexity(m, ids, po).ppl;
}

class HfExport : public ::testing::Test {
 protected:
  // stories260K quantized weight-only (resq-w4a16: PCA rotations, online Hadamard before down_proj,
  // q/k rotation, GPTQ 4/8 weights) by the real pipeline.
  static std::string checkpoint() { return test::quantized_stories("resq-w4a16", 1, 8, 128); }
};

TEST_F(HfExport, Bf16ExportEvaluatesLikeTheWeightOnlySimulation) {
  test::TempDir dir;
  HfExportOptions o;
  o.checkpoint_dir = checkpoint();
  o.out_dir = dir.file("hf");
  const HfExportReport rep = export_hf(o);
  EXPECT_EQ(rep.dtype, "bfloat16");
  ASSERT_FALSE(rep.folded.empty());
  EXPECT_NE(rep.folded.front().find("U_D"), std::string::npos);
  ASSERT_EQ(rep.dropped.size(), 1u);  // U_C
  EXPECT_TRUE(rep.not_preserved.empty());  // weight-only recipe: nothing lost

  Decoder simulated = load_model_for_eval(o.checkpoint_dir, LoadOptions{}, ExecutionMode::kSimulateWeights);
  Decoder exported = Decoder::load(o.out_dir);  // a plain HF directory to resq's fp loader
  const double want = stories_ppl(simulated, o.checkpoint_dir);
  const double got = stories_ppl(exported, o.out_dir);
  EXPECT_NEAR(got, want, 1e-3 * want) << "bf16 export ppl " << got << " vs weight-only simulation " << want;
  // The quantization is really there: the fp model is measurably better.
  Decoder fp = Decoder::load(test::shared_path("models/stories260K"));
  EXPECT_GT(want, stories_ppl(fp, test::shared_path("models/stories260K")) * 1.01);
}

TEST_F(HfExport, F32ExportIsTheSimulationUpToFloatRounding) {
  // No output rounding: any error in the folds (U_D transposed, U_C dropped) would show here.
  test::TempDir dir;
  HfExportOptions o;
  o.checkpoint_dir = checkpoint();
  o.out_dir = dir.file("hf32");
  o.format = "hf-f32";
  EXPECT_EQ(export_hf(o).dtype, "float32");
  Decoder simulated = load_model_for_eval(o.checkpoint_dir, LoadOptions{}, ExecutionMode::kSimulateWeights);
  Decoder exported = Decoder::load(o.out_dir);
  const double want = stories_ppl(simulated, o.checkpoint_dir);
  EXPECT_NEAR(stories_ppl(exported, o.out_dir), want, 2e-5 * want);
}

TEST_F(HfExport, TheDirectoryIsAPlainHfModel) {
  test::TempDir dir;
  HfExportOptions o;
  o.checkpoint_dir = checkpoint();
  o.out_dir = dir.file("hf");
  const HfExportReport rep = export_hf(o);
  const auto entries = test::directory_entries(o.out_dir);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model"}) {
    EXPECT_NE(std::find(entries.begin(), entries.end(), f), entries.end()) << f;
  }
  EXPECT_FALSE(format::PackedCheckpoint::is_checkpoint_dir(o.out_dir));
  const nlohmann::json config = nlohmann::json::parse(test::read_file(o.out_dir + "/config.json"));
  EXPECT_FALSE(config.contains("quantization_config"));
  EXPECT_EQ(config["torch_dtype"], "bfloat16");
  EXPECT_EQ(config["tie_word_embeddings"], false);
  EXPECT_EQ(config["architectures"][0], "LlamaForCausalLM");
  // No tensor but the HF ones (resq.* online transforms are folded or dropped).
  EXPECT_EQ(test::read_file(o.out_dir + "/model.safetensors").find("resq."), std::string::npos);
  EXPECT_EQ(rep.tensors, 2 + 1 + 5 * (2 + 7));  // embed, lm_head, norm; per layer 2 norms + 7 linears
}

TEST_F(HfExport, Refusals) {
  test::TempDir dir;
  HfExportOptions o;
  o.checkpoint_dir = checkpoint();
  o.out_dir = dir.file("x");
  o.format = "gguf";
  EXPECT_NE(test::message_of<UsageError>([&] { export_hf(o); }).find("hf-bf16"), std::string::npos);
  EXPECT_FALSE(fs::exists(o.out_dir));
  o.format = "hf-bf16";
  o.checkpoint_dir = test::shared_path("models/stories260K");
  EXPECT_NE(test::message_of<UsageError>([&] { export_hf(o); }).find("not a resq packed checkpoint"), std::string::npos);
  o.checkpoint_dir = checkpoint();
  fs::create_directories(o.out_dir);
  EXPECT_NE(test::message_of<UsageError>([&] { export_hf(o); }).find("already exists"), std::string::npos);
}

TEST(PackedCheckpointConfig, CarriesQuantizationConfigAndStillLoads) {
  nlohmann::json report;
  const std::string dir = test::quantized_stories("resq-rtn", 1, 8, 128, &report);
  const nlohmann::json config = nlohmann::json::parse(test::read_file(dir + "/config.json"));
  ASSERT_TRUE(config.contains("quantization_config"));
  const nlohmann::json& q = config["quantization_config"];
  EXPECT_EQ(q["quant_method"], "resq");
  EXPECT_EQ(q["format"], "resq-packed");
  EXPECT_EQ(q["format_version"], 1);
  EXPECT_EQ(q["recipe"], "resq-rtn");
  EXPECT_EQ(q["bits"]["weights"]["bits_low"], 4);
  EXPECT_EQ(q["bits"]["weights"]["bits_high"], 8);
  EXPECT_EQ(q["bits"]["kv_cache"]["bits_low"], 4);
  // resq's own readers accept the key: the config parser and the whole checkpoint.
  EXPECT_EQ(parse_model_config(config, dir + "/config.json").num_layers, 5);
  EXPECT_NO_THROW(format::PackedCheckpoint::open(dir));
}

}  // namespace
}  // namespace resq
