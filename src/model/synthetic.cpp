// Random-init model directories for named shapes (make-model, demo, tests and benchmarks).
#include "resq/model/synthetic.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "resq/common/error.h"
#include "resq/common/log.h"
#include "resq/io/safetensors.h"
#include "resq/io/safetensors_writer.h"
#include "resq/text/sentencepiece_shim.h"

namespace resq {
namespace fs = std::filesystem;

namespace {

ModelConfig base_config(const std::string& type, int64_t d, int64_t ffn, int64_t layers, int64_t heads,
                        int64_t kv_heads, int64_t vocab, double theta, bool tied) {
  ModelConfig c;
  c.model_type = type;
  c.hidden_size = d;
  c.intermediate_size = ffn;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = d / heads;
  c.vocab_size = vocab;
  c.rope_theta = theta;
  c.tie_word_embeddings = tied;
  c.qkv_bias = type == "qwen2";
  c.rms_norm_eps = type == "qwen2" ? 1e-6 : 1e-5;
  c.max_position_embeddings = 4096;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  return c;
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

const char* const kWords[] = {
    "the", "a", "little", "big", "old", "happy", "small", "red", "blue", "green", "bright", "quiet",
    "cat", "dog", "bird", "girl", "boy", "tree", "house", "river", "ship", "city", "king", "garden",
    "saw", "found", "liked", "made", "took", "gave", "wanted", "heard", "built", "painted", "followed",
    "and", "but", "then", "because", "when", "after", "before", "while", "so", "with", "under", "near",
    "day", "night", "morning", "sun", "moon", "rain", "wind", "stone", "book", "song", "friend", "mother",
    "father", "teacher", "school", "road", "market", "forest", "mountain", "village", "window", "door",
    "ran", "walked", "jumped", "sang", "smiled", "cried", "laughed", "slept", "played", "looked", "said",
    "very", "slowly", "quickly", "together", "again", "always", "never", "soon", "later", "today",
    "one", "two", "three", "many", "some", "every", "other", "first", "last", "new", "long", "warm",
    "1912", "2024", "42", "7", "history", "war", "music", "science", "game", "team", "season", "album"};

}  // namespace

std::vector<std::string> synthetic_shape_names() {
  return {"tiny", "llama-3.2-1b", "llama-3-8b", "llama-2-7b", "qwen2.5-0.5b", "qwen2.5-7b",
          "tiny-qwen2", "tiny-gqa-tied", "tiny-llama3"};
}

ModelConfig synthetic_shape_config(const std::string& name) {
  ModelConfig c;
  if (name == "tiny") {
    c = base_config("llama", 128, 352, 4, 8, 4, 512, 10000.0, false);
    c.max_position_embeddings = 1024;
  } else if (name == "tiny-qwen2") {
    c = base_config("qwen2", 64, 160, 2, 4, 2, 300, 1e6, false);
  } else if (name == "tiny-gqa-tied") {
    c = base_config("llama", 64, 172, 2, 8, 2, 300, 10000.0, true);
  } else if (name == "tiny-llama3") {
    // Llama-3 vocabulary and RoPE scaling at toy width: pairs with ../shared/tokenizers/llama3.
    c = base_config("llama", 64, 192, 2, 4, 2, 128256, 500000.0, true);
    c.rope_scaling.type = RopeScaling::Type::kLlama3;
    c.rope_scaling.factor = 32.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.bos_token_id = 128000;
    c.eos_token_id = 128001;
  } else if (name == "llama-3.2-1b") {
    c = base_config("llama", 2048, 8192, 16, 32, 8, 128256, 500000.0, true);
    c.rope_scaling.type = RopeScaling::Type::kLlama3;
    c.rope_scaling.factor = 32.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.max_position_embeddings = 131072;
    c.bos_token_id = 128000;
    c.eos_token_id = 128001;
  } else if (name == "llama-3-8b") {
    c = base_config("llama", 4096, 14336, 32, 32, 8, 128256, 500000.0, false);
    c.max_position_embeddings = 8192;
    c.bos_token_id = 128000;
    c.eos_token_id = 128001;
  } else if (name == "llama-2-7b") {
    c = base_config("llama", 4096, 11008, 32, 32, 32, 32000, 10000.0, false);
  } else if (name == "qwen2.5-0.5b") {
    c = base_config("qwen2", 896, 4864, 24, 14, 2, 151936, 1e6, true);
    c.max_position_embeddings = 32768;
    c.bos_token_id.reset();
    c.eos_token_id = 151643;
  } else if (name == "qwen2.5-7b") {
    c = base_config("qwen2", 3584, 18944, 28, 28, 4, 152064, 1e6, false);
    c.max_position_embeddings = 32768;
    c.bos_token_id.reset();
    c.eos_token_id = 151643;
  } else {
    std::string names;
    for (const auto& n : synthetic_shape_names()) names += (names.empty() ? "" : ", ") + n;
    throw UsageError("--shape: unknown shape '" + name + "' (known: " + names + ")");
  }
  return c;
}

std::string synthetic_text(uint64_t seed, int64_t bytes) {
  constexpr size_t kNumWords = sizeof(kWords) / sizeof(kWords[0]);
  uint64_t state = seed * 0x2545F4914F6CDD1DULL + 17;
  std::string text;
  text.reserve(bytes + 64);
  while (static_cast<int64_t>(text.size()) < bytes) {
    const int64_t words = 4 + static_cast<int64_t>(splitmix64(state) % 10);
    for (int64_t w = 0; w < words; ++w) {
      std::string word = kWords[splitmix64(state) % kNumWords];
      if (w == 0) word[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
      text += word;
      text += w + 1 < words ? " " : (splitmix64(state) % 5 == 0 ? ".\n" : ". ");
    }
  }
  return text;
}

namespace {

void write_json(const fs::path& path, const nlohmann::json& j) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw IoError(path.string() + ": cannot write");
  out << j.dump(2) << "\n";
}

void train_sentencepiece(const fs::path& dir, int64_t vocab, uint64_t seed) {
  const fs::path corpus = dir / "tokenizer_corpus.txt";
  {
    std::ofstream out(corpus, std::ios::binary);
    out << synthetic_text(seed ^ 0x5eed, 400000);
  }
  const std::string args = "--input=" + corpus.string() + " --model_prefix=" + (dir / "tokenizer").string() +
                           " --vocab_size=" + std::to_string(vocab) +
                           " --model_type=bpe --character_coverage=1.0"
                           " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --hard_vocab_limit=false"
                           " --num_threads=1 --minloglevel=2";
  try {
    spm::train(args, static_cast<unsigned int>(seed % 1000003));
  } catch (...) {
    fs::remove(corpus);
    throw;
  }
  fs::remove(corpus);
  fs::remove(dir / "tokenizer.vocab");
  write_json(dir / "tokenizer_config.json",
             {{"tokenizer_class", "LlamaTokenizer"}, {"add_bos_token", true}, {"add_eos_token", false},
              {"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}});
}

}  // namespace

std::vector<int64_t> write_synthetic_model(const ModelConfig& config, const std::string& out_dir,
                                           const SyntheticModelOptions& options) {
  StagingDirectory staging(out_dir);  // renamed to out_dir when complete, removed otherwise
  const fs::path tmp_dir(staging.path());
  const ModelConfig& c = config;
  at::ScalarType dtype = at::kFloat;
  if (options.weight_dtype == "bfloat16") {
    dtype = at::kBFloat16;
  } else if (options.weight_dtype == "auto") {
    dtype = c.parameter_count() >= 100'000'000 ? at::kBFloat16 : at::kFloat;
  } else if (options.weight_dtype != "float32") {
    throw UsageError("--weight-dtype: expected auto, float32 or bfloat16, got '" + options.weight_dtype + "'");
  }
  if (options.num_outlier_channels < 0 || options.num_outlier_channels > c.hidden_size) {
    throw UsageError("--outliers must be in [0, hidden_size]");
  }

  auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  const double std_dev = 0.02;
  auto normal = [&](std::vector<int64_t> shape, double s) {
    return at::normal(0.0, s, shape, gen, at::TensorOptions().dtype(at::kFloat));
  };
  // Planted outliers: channel -> gain in [20, 100], applied to the rows of o_proj/down_proj that
  // write that channel, so from the first layer on the residual stream carries a few channels at
  // 20-100x the typical scale. The embedding is left alone: with tied embeddings, scaled columns
  // would also scale the logits (NLL in the hundreds).
  std::vector<int64_t> channels;
  std::vector<double> gains;
  {
    uint64_t state = options.seed ^ 0x071e5ULL;
    while (static_cast<int64_t>(channels.size()) < options.num_outlier_channels) {
      const int64_t ch = static_cast<int64_t>(splitmix64(state) % c.hidden_size);
      if (std::find(channels.begin(), channels.end(), ch) != channels.end()) continue;
      channels.push_back(ch);
      gains.push_back(20.0 + 80.0 * static_cast<double>(splitmix64(state) % 1000) / 999.0);
    }
  }
  auto plant_rows = [&](at::Tensor t) {
    for (size_t i = 0; i < channels.size(); ++i) t.select(0, channels[i]).mul_(gains[i]);
    return t;
  };

  // HF's serializer layout, as transformers' save_pretrained writes. Every shard but the last is
  // written with metadata {"format": "pt"} alone (the seed is set just before finish(), as it
  // always was: changing it would change make-model's bytes).
  ShardedSafetensorsWriter shards(tmp_dir.string(), options.max_shard_bytes, TensorOrder::kHuggingFace, {{"format", "pt"}});
  // t: a float32 / bfloat16 / float64 CPU tensor of any layout.
  auto add = [&shards](const std::string& name, const at::Tensor& tensor) {
    const at::Tensor t = tensor.cpu().contiguous();
    const auto type = t.scalar_type();
    if (type != at::kFloat && type != at::kBFloat16 && type != at::kDouble) {
      throw ShapeError("make-model: tensor '" + name + "' must be float32, bfloat16 or float64");
    }
    const DType stored = type == at::kBFloat16 ? DType::BF16 : type == at::kDouble ? DType::F64 : DType::F32;
    shards.add(name, stored, t.sizes().vec(), t.data_ptr(), static_cast<size_t>(t.numel() * t.element_size()));
  };
  const int64_t d = c.hidden_size, ffn = c.intermediate_size;
  add("model.embed_tokens.weight", normal({c.vocab_size, d}, std_dev).to(dtype));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    if (c.num_layers >= 8) log::info(strprintf("make-model: layer %" PRId64 "/%" PRId64, i + 1, c.num_layers));
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", (1.0 + normal({d}, 0.1)).to(dtype));
    add(p + "post_attention_layernorm.weight", (1.0 + normal({d}, 0.1)).to(dtype));
    add(p + "self_attn.q_proj.weight", normal({c.q_size(), d}, std_dev).to(dtype));
    add(p + "self_attn.k_proj.weight", normal({c.kv_size(), d}, std_dev).to(dtype));
    add(p + "self_attn.v_proj.weight", normal({c.kv_size(), d}, std_dev).to(dtype));
    if (c.qkv_bias) {
      add(p + "self_attn.q_proj.bias", normal({c.q_size()}, 0.1).to(dtype));
      add(p + "self_attn.k_proj.bias", normal({c.kv_size()}, 0.1).to(dtype));
      add(p + "self_attn.v_proj.bias", normal({c.kv_size()}, 0.1).to(dtype));
    }
    add(p + "self_attn.o_proj.weight", plant_rows(normal({d, c.q_size()}, std_dev)).to(dtype));
    if (c.o_bias) add(p + "self_attn.o_proj.bias", normal({d}, 0.02).to(dtype));
    add(p + "mlp.gate_proj.weight", normal({ffn, d}, std_dev).to(dtype));
    add(p + "mlp.up_proj.weight", normal({ffn, d}, std_dev).to(dtype));
    add(p + "mlp.down_proj.weight", plant_rows(normal({d, ffn}, std_dev)).to(dtype));
    if (c.mlp_bias) {
      add(p + "mlp.gate_proj.bias", normal({ffn}, 0.02).to(dtype));
      add(p + "mlp.up_proj.bias", normal({ffn}, 0.02).to(dtype));
      add(p + "mlp.down_proj.bias", normal({d}, 0.02).to(dtype));
    }
  }
  add("model.norm.weight", (1.0 + normal({d}, 0.1)).to(dtype));
  if (!c.tie_word_embeddings) add("lm_head.weight", normal({c.vocab_size, d}, std_dev).to(dtype));
  shards.set_metadata({{"format", "pt"}, {"resq_synthetic_seed", std::to_string(options.seed)}});
  shards.finish();

  ModelConfig saved = c;
  saved.torch_dtype = dtype == at::kBFloat16 ? "bfloat16" : "float32";
  write_json(tmp_dir / "config.json", model_config_to_json(saved));
  nlohmann::json gen_cfg = nlohmann::json::object();
  if (c.bos_token_id) gen_cfg["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_id) gen_cfg["eos_token_id"] = *c.eos_token_id;
  write_json(tmp_dir / "generation_config.json", gen_cfg);

  if (!options.tokenizer_dir.empty()) {
    bool copied = false;
    for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}) {
      const fs::path src = fs::path(options.tokenizer_dir) / f;
      if (fs::exists(src)) {
        fs::copy_file(src, tmp_dir / f);
        copied |= std::string(f) == "tokenizer.json" || std::string(f) == "tokenizer.model";
      }
    }
    if (!copied) throw IoError(options.tokenizer_dir + ": no tokenizer.json or tokenizer.model to copy");
  } else {
    const int64_t vocab = options.tokenizer_vocab > 0 ? options.tokenizer_vocab : std::min<int64_t>(c.vocab_size, 512);
    if (vocab > c.vocab_size) throw UsageError("--tokenizer-vocab exceeds the model's vocab_size");
    if (!c.bos_token_id || *c.bos_token_id != 1) {
      // The trained SentencePiece model puts BOS at id 1; keep config.json consistent with it.
      ModelConfig fixed = saved;
      fixed.bos_token_id = 1;
      fixed.eos_token_id = 2;
      write_json(tmp_dir / "config.json", model_config_to_json(fixed));
    }
    train_sentencepiece(tmp_dir, vocab, options.seed);
  }
  staging.commit();
  return channels;
}

}  // namespace resq
