// SentencePiece tokenizer (tokenizer.model) through libsentencepiece, and the tokenizer picker.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/json_fields.h"
#include "resq/text/sentencepiece_shim.h"
#include "resq/text/tokenizer.h"

namespace resq {
namespace {

namespace fs = std::filesystem;

std::optional<nlohmann::json> read_json_if_exists(const std::string& path) {
  if (!fs::exists(path)) return std::nullopt;
  return parse_json(read_file(path), path);
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& dir) : processor_(dir + "/tokenizer.model") {
    // BOS: tokenizer_config.json add_bos_token (LlamaTokenizer defaults to true), id from the
    // SentencePiece model, cross-checked against config.json's bos_token_id when present.
    adds_bos_ = true;
    if (auto tc = read_json_if_exists(dir + "/tokenizer_config.json")) {
      if (tc->contains("add_bos_token") && (*tc)["add_bos_token"].is_boolean()) {
        adds_bos_ = (*tc)["add_bos_token"].get<bool>();
      }
    }
    const int bos = processor_.bos_id();
    if (bos >= 0) bos_id_ = bos;
    if (auto cfg = read_json_if_exists(dir + "/config.json")) {
      if (cfg->contains("bos_token_id") && (*cfg)["bos_token_id"].is_number_integer()) {
        const int64_t cfg_bos = (*cfg)["bos_token_id"].get<int64_t>();
        // A model without BOS takes config.json's id, which every encoded text then starts with.
        if (cfg_bos < 0 || cfg_bos >= processor_.piece_size()) {
          throw ConfigError(dir + "/config.json: bos_token_id " + std::to_string(cfg_bos) +
                            " is outside tokenizer.model's vocabulary [0, " +
                            std::to_string(processor_.piece_size()) + ")");
        }
        if (bos_id_ && *bos_id_ != cfg_bos) {
          throw ConfigError(dir + "/config.json: bos_token_id " + std::to_string(cfg_bos) +
                            " differs from tokenizer.model's BOS id " + std::to_string(*bos_id_));
        }
        bos_id_ = static_cast<int32_t>(cfg_bos);
      }
    }
    if (adds_bos_ && !bos_id_) {
      throw ConfigError(dir + ": add_bos_token is true but the tokenizer defines no BOS token");
    }
  }

  std::vector<int32_t> encode(const std::string& text) const override {
    const std::vector<int> ids = processor_.encode(text);
    return std::vector<int32_t>(ids.begin(), ids.end());
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::vector<int> pieces;
    pieces.reserve(ids.size());
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size()) {
        throw UsageError("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                         std::to_string(vocab_size()) + ")");
      }
      pieces.push_back(id);
    }
    return processor_.decode(pieces);
  }

  int32_t vocab_size() const override { return processor_.piece_size(); }
  std::optional<int32_t> bos_id() const override { return bos_id_; }
  bool adds_bos() const override { return adds_bos_; }
  std::string kind() const override { return "sentencepiece"; }

 private:
  spm::Model processor_;
  std::optional<int32_t> bos_id_;
  bool adds_bos_ = true;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& dir) {
  return std::make_unique<SentencePieceTokenizer>(dir);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  if (!fs::is_directory(dir)) throw IoError(dir + ": not a directory (expected a model or tokenizer directory)");
  const bool has_sentencepiece = fs::exists(dir + "/tokenizer.model");
  if (fs::exists(dir + "/tokenizer.json")) {
    try {
      return load_bpe_tokenizer(dir);
    } catch (const UnsupportedError&) {
      // Llama-2-style directories ship a Metaspace tokenizer.json next to tokenizer.model: the
      // SentencePiece model is the original and gives the same ids.
      if (!has_sentencepiece) throw;
    }
  }
  if (has_sentencepiece) return load_sentencepiece_tokenizer(dir);
  throw IoError(dir + ": no tokenizer.json or tokenizer.model found");
}

}  // namespace resq
