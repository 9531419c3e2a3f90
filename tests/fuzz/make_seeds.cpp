// Writes the seed corpora of the fuzz harnesses into OUT/<harness>/: small, valid inputs made with
// resq's own writers (safetensors files, a packed checkpoint, a trained SentencePiece model) and
// hand-written JSON in the shapes HF and resq write; with SHARED_DIR (../shared), cut-down copies of
// its real tokenizer.json files (scripts/fuzz.sh adds its small real files as they are).
// Usage: make_seeds OUT [SHARED_DIR]
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/model_shapes.h"
#include "fuzz_util.h"
#include "resq/common/file.h"
#include "resq/format/checkpoint.h"
#include "resq/io/safetensors.h"
#include "resq/quant/recipe.h"
#include "resq/text/sentencepiece_shim.h"

namespace resq::fuzz {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string out_root;
int written = 0;

void seed(const std::string& harness, const std::string& name, const std::string& bytes) {
  fs::create_directories(out_root + "/" + harness);
  std::ofstream(out_root + "/" + harness + "/" + name, std::ios::binary) << bytes;
  ++written;
}

// Splits a safetensors file into the harnesses' "header + mark + data" form.
std::string split_safetensors(const std::string& file) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(file[i]);
  return file.substr(8, n) + std::string(kSectionMark) + file.substr(8 + n);
}

// A safetensors file of `tensors` (made by write_safetensors), as bytes.
std::string safetensors_file(const std::string& scratch, const std::vector<TensorToWrite>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  const std::string path = scratch + "/t.safetensors";
  write_safetensors(path, tensors, metadata);
  return read_file(path);
}

json llama_config(int64_t hidden, int64_t ffn, int64_t layers, int64_t heads, int64_t kv_heads,
                  int64_t vocab) {
  ModelConfig c = test::llama_config({hidden, ffn, layers, heads, kv_heads, hidden / heads, vocab});
  c.max_position_embeddings = 64;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  return model_config_to_json(c);
}

void model_config_seeds() {
  seed("fuzz_model_config", "llama.json", llama_config(64, 172, 5, 8, 4, 512).dump(2));
  json qwen = llama_config(32, 48, 2, 4, 2, 100);
  qwen["model_type"] = "qwen2";
  qwen["use_sliding_window"] = true;
  qwen["sliding_window"] = 32;
  qwen["eos_token_id"] = json::array({2, 3});
  seed("fuzz_model_config", "qwen2.json", qwen.dump(2));
  json mistral = llama_config(32, 48, 2, 4, 1, 100);
  mistral["model_type"] = "mistral";
  mistral["sliding_window"] = nullptr;
  mistral["head_dim"] = 16;
  seed("fuzz_model_config", "mistral.json", mistral.dump());
  json llama3 = llama_config(64, 128, 2, 8, 2, 256);
  llama3["rope_scaling"] = {{"rope_type", "llama3"},          {"factor", 8.0},
                            {"low_freq_factor", 1.0},        {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 8192}};
  llama3["rope_theta"] = 500000.0;
  llama3["tie_word_embeddings"] = true;
  llama3["attention_bias"] = true;
  seed("fuzz_model_config", "llama3.json", llama3.dump(2));
}

void recipe_seeds() {
  Recipe r;
  r.name = "seed";
  seed("fuzz_recipe", "defaults.json", recipe_to_json(r).dump(2));
  seed("fuzz_recipe", "partial.json",
       R"({"name": "rtn", "weights": {"method": "rtn", "bits_low": 4, "clip_ratio": 0.9},)"
       R"( "kv": {"enabled": false}, "rotation": {"method": "quarot"}})");
}

void safetensors_seeds(const std::string& scratch) {
  const std::vector<float> f = {1.5f, -2.0f, 0.0f, 3.25f, 1e-3f, -7.0f};
  const std::vector<uint16_t> h = {0x3c00, 0xc000, 0x7bff, 0x0001};
  const std::vector<int8_t> i8 = {-8, 7, 0, 1, -1, 3};
  const std::vector<double> d = {0.5, -0.25};
  const std::vector<TensorToWrite> tensors = {
      {"model.embed_tokens.weight", DType::F32, {2, 3}, f.data(), f.size() * 4},
      {"bf16", DType::BF16, {4}, h.data(), 8},
      {"f16", DType::F16, {2, 2}, h.data(), 8},
      {"codes", DType::I8, {3, 2}, i8.data(), 6},
      {"scalar", DType::F64, {}, d.data(), 8},
      {"empty", DType::F32, {0, 4}, nullptr, 0}};
  const std::string file = safetensors_file(scratch, tensors, {{"format", "pt"}});
  seed("fuzz_safetensors", "mixed.txt", split_safetensors(file));
  seed("fuzz_safetensors", "mixed.safetensors", file);  // raw: the length prefix fuzzed too
  const std::string a = safetensors_file(scratch, {tensors[0], tensors[1]});
  const std::string b = safetensors_file(scratch, {tensors[3]});
  json index = {{"metadata", {{"total_size", 38}}},
                {"weight_map", {{"model.embed_tokens.weight", "a.safetensors"},
                                {"bf16", "a.safetensors"}, {"codes", "b.safetensors"}}}};
  seed("fuzz_safetensors_dir", "two_shards.txt",
       join_sections({index.dump(2), split_safetensors(a), split_safetensors(b)}));
}

// A tiny checkpoint written by CheckpointWriter, as its three files.
void checkpoint_seeds(const std::string& scratch) {
  ModelConfig c = test::llama_config({/*hidden*/ 16, /*ffn*/ 24, /*layers*/ 1, /*heads*/ 2, /*kv_heads*/ 1,
                                      /*head_dim*/ 8, /*vocab*/ 8});
  c.max_position_embeddings = 64;
  format::CheckpointMeta m;
  m.model = c;
  m.r = 2;
  m.r_h = 1;
  for (format::SiteKind kind : format::kAllSites) {
    format::SiteSpec s;
    s.kind = kind;
    std::tie(s.N, s.K) = format::site_dims(c, kind);
    if (kind == format::SiteKind::kO) {
      s.high_rule = format::HighRule::kPerHead;
      s.high_group = c.head_dim;
      s.high_count = 1;
    } else {
      s.high_count = kind == format::SiteKind::kDown ? 0 : 2;
    }
    s.activations = {true, 4, 8, 1.0, s.high_count};
    if (kind == format::SiteKind::kUp) s.storage = format::LinearStorage::kDense;
    m.sites[kind] = s;
  }
  m.kv = {true, 4, 8, 1.0, 0.95};
  m.online.qk_rotation = true;
  m.online.down_hadamard = true;
  m.online.hadamard_n = 24;
  m.online.hadamard_pow2 = 8;
  m.online.hadamard_block = 3;
  m.online.hadamard_construction = "seed";
  m.recipe = {{"name", "seed"}};
  m.provenance = {{"tool", "make_seeds"}};

  const std::string dir = scratch + "/ck";
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0.01f, 1.0f);
  auto floats = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = u(rng);
    return v;
  };
  {
    format::CheckpointWriter w(dir);
    const auto embed = floats(c.vocab_size * c.hidden_size);
    w.add_f32("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, embed.data());
    w.add_f32("lm_head.weight", {c.vocab_size, c.hidden_size}, embed.data());
    const std::vector<float> ones(16, 1.0f);
    w.add_f32("model.norm.weight", {16}, ones.data());
    std::vector<float> signs(24);
    for (size_t i = 0; i < signs.size(); ++i) signs[i] = (i % 3) ? 1.0f : -1.0f;
    w.add_f32("resq.down_hadamard.signs", {24}, signs.data());
    const std::vector<double> block = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    w.add("resq.down_hadamard.block", DType::F64, {3, 3}, block.data(), block.size() * 8);
    w.add_f32("model.layers.0.input_layernorm.weight", {16}, ones.data());
    w.add_f32("model.layers.0.post_attention_layernorm.weight", {16}, ones.data());
    const auto uc = floats(64);
    w.add_f32("resq.layers.0.qk_rotation", {1, 8, 8}, uc.data());  // [Hkv, hd, hd]
    for (const auto& [kind, s] : m.sites) {
      if (s.storage == format::LinearStorage::kDense) {
        const auto dense = floats(s.N * s.K);
        w.add_dense_linear(0, s, DType::F32, dense.data(), nullptr);
        continue;
      }
      std::vector<int8_t> q(static_cast<size_t>(s.N * s.K));
      for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<int8_t>(static_cast<int>(rng() % 16) - 8);
      const auto s4 = floats(s.N), s8 = floats(s.N);
      const std::vector<int32_t> order = s.packed_column_order();
      format::PackOptions o;
      o.column_order = order.data();
      o.bits_low = s.weight_bits_low;
      o.bits_high = s.weight_bits_high;
      w.add_packed_linear(0, s, format::pack_linear(q.data(), s4.data(), s8.data(), nullptr, {s.N, s.K4(), s.K8()}, o));
    }
    w.commit(m, model_config_to_json(c).dump(2), {});
  }
  const std::string config = read_file(dir + "/config.json");
  const std::string meta = read_file(dir + "/" + format::kCheckpointConfigFile);
  const std::string tensors = read_file(dir + "/model.safetensors");
  seed("fuzz_checkpoint", "tiny.txt", join_sections({config, meta, split_safetensors(tensors)}));
  seed("fuzz_checkpoint_meta", "tiny.txt", join_sections({config, meta}));
  fs::remove_all(dir);
}

json tokenizer_json(bool byte_level) {
  // Byte-level BPE over a few tokens: "Ġ" is the byte-level space.
  const std::vector<std::string> tokens = {"a", "b", "c", "d", "\xC4\xA0", "ab", "cd", "abcd", "\xC4\xA0" "a", "<s>"};
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  json t = {{"version", "1.0"},
            {"truncation", nullptr},
            {"padding", nullptr},
            {"added_tokens",
             json::array({{{"id", 9}, {"content", "<s>"}, {"single_word", false}, {"lstrip", false},
                           {"rstrip", false}, {"normalized", false}, {"special", true}}})},
            {"normalizer", nullptr},
            {"pre_tokenizer", nullptr},
            {"post_processor", nullptr},
            {"decoder", nullptr},
            {"model",
             {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
              {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
              {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
              {"vocab", vocab},
              {"merges", json::array({"a b", "c d", json::array({"ab", "cd"}), "\xC4\xA0 a"})}}}};
  if (byte_level) {
    t["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                          {"use_regex", true}};
    t["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                    {"use_regex", true}};
    t["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array()},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", json::array({9})}, {"tokens", json::array({"<s>"})}}}}}};
    t["normalizer"] = {{"type", "NFC"}};
  }
  return t;
}

void tokenizer_seeds() {
  seed("fuzz_tokenizer_json", "plain.txt", join_sections({tokenizer_json(false).dump(), "", "abcdab"}));
  seed("fuzz_tokenizer_json", "byte_level.txt",
       join_sections({tokenizer_json(true).dump(2), R"({"add_bos_token": true, "bos_token": "<s>"})",
                      "ab cd abcd<s> a\xC3\xA9"}));
}

void sentencepiece_seeds(const std::string& scratch) {
  const std::string text_path = scratch + "/spm.txt";
  {
    std::ofstream text(text_path);
    for (int i = 0; i < 200; ++i) text << "the cat sat on the mat " << i % 7 << " and ran away\n";
  }
  const std::string prefix = scratch + "/spm";
  spm::train("--input=" + text_path + " --model_prefix=" + prefix +
                 " --vocab_size=40 --model_type=bpe --character_coverage=1.0 --minloglevel=2"
                 " --normalization_rule_name=identity",
             1);
  const std::string model = read_file(prefix + ".model");
  seed("fuzz_sentencepiece", "bpe.txt",
       join_sections({model, R"({"add_bos_token": true})", R"({"bos_token_id": 1})", "the cat ran"}));
  seed("fuzz_sentencepiece", "bare.txt", join_sections({model, "", "", "mat sat"}));
}

// Real tokenizers cut down: the first `keep` ids of each shared tokenizer.json's vocabulary, the
// merges among them and everything else as written (normalizer, pre-tokenizer regexes, decoder,
// added tokens), so that seeds stay small (a full vocabulary is megabytes).
void shared_tokenizer_seeds(const std::string& shared) {
  const std::string root = shared + "/tokenizers";
  if (!fs::is_directory(root)) return;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    const std::string path = entry.path().string() + "/tokenizer.json";
    if (!fs::exists(path)) continue;
    json t = json::parse(read_file(path));
    const int64_t keep = 300;
    json vocab = json::object();
    for (auto it = t["model"]["vocab"].begin(); it != t["model"]["vocab"].end(); ++it) {
      if (it->get<int64_t>() < keep) vocab[it.key()] = *it;
    }
    json merges = json::array();
    for (const json& m : t["model"]["merges"]) {
      std::string left, right;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        left = s.substr(0, s.find(' '));
        right = s.substr(s.find(' ') + 1);
      } else {
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      }
      if (vocab.contains(left) && vocab.contains(right) && vocab.contains(left + right)) merges.push_back(m);
    }
    t["model"]["vocab"] = vocab;
    t["model"]["merges"] = merges;
    json& added = t["added_tokens"];
    if (added.is_array() && added.size() > 4) added.erase(added.begin() + 4, added.end());
    std::string config;
    if (fs::exists(entry.path().string() + "/tokenizer_config.json")) {
      json c = json::parse(read_file(entry.path().string() + "/tokenizer_config.json"));
      c.erase("added_tokens_decoder");  // thousands of entries in llama3's
      config = c.dump(2);
    }
    seed("fuzz_tokenizer_json", "shared-" + name + ".txt",
         join_sections({t.dump(), config, "Hello world, it's 2024!\n  \u00e9t\u00e9 <|endoftext|>"}));
  }
}

}  // namespace
}  // namespace resq::fuzz

int main(int argc, char** argv) {
  using namespace resq::fuzz;
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: make_seeds OUT [SHARED_DIR]\n");
    return 2;
  }
  out_root = argv[1];
  const std::string scratch = out_root + "/.scratch";
  fs::create_directories(scratch);
  try {
    model_config_seeds();
    recipe_seeds();
    safetensors_seeds(scratch);
    checkpoint_seeds(scratch);
    tokenizer_seeds();
    sentencepiece_seeds(scratch);
    if (argc == 3) shared_tokenizer_seeds(argv[2]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
  }
  fs::remove_all(scratch);
  std::printf("make_seeds: %d seeds in %s\n", written, out_root.c_str());
  return 0;
}
