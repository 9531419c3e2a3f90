// Loading a byte-level BPE tokenizer: tokenizer.json (streamed by bpe_json_sax.cpp, the rest read
// with JsonFields) and tokenizer_config.json into BpeTokenizer::Impl, with HF's added-token id
// rules, normalizer, post-processor and decoder checks, and the BOS decision.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "bpe_impl.h"
#include "bpe_json_sax.h"
#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/json_fields.h"
#include "resq/text/bpe_tokenizer.h"

namespace resq {
namespace bpe_detail {

void unsupported_type(const JsonFields& in, const std::string& type, const char* supported) {
  throw UnsupportedError(in.where("type") + " '" + type + "' is not supported (supported: " +
                         supported + ")");
}

}  // namespace bpe_detail

namespace {

using json = nlohmann::json;
using Impl = BpeTokenizer::Impl;
using bpe_detail::AddedToken;
using bpe_detail::kHfJson;
using bpe_detail::kMaxTokenId;
using bpe_detail::TokenizerJsonReader;

// ---------------------------------------------------------------- normalizer, post-processor

void parse_normalizer(const JsonFields& in, std::vector<std::string>& forms) {
  const std::string type = in.string("type");
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    forms.push_back(type);
  } else if (type == "Sequence") {
    for (const JsonFields& step : in.objects("normalizers")) parse_normalizer(step, forms);
  } else {
    bpe_detail::unsupported_type(in, type, "NFC, NFD, NFKC, NFKD, Sequence");
  }
}

// The pieces of a TemplateProcessing's "single" template, in order: (is_sequence, special name).
// Pieces are {"SpecialToken": {"id": name}} / {"Sequence": {"id": "A"}}, or the string form
// "<bos> $A" (also "$A:0", "<bos>:0").
std::vector<std::pair<bool, std::string>> template_pieces(const JsonFields& in) {
  std::vector<std::pair<bool, std::string>> pieces;
  const json& single = in.value("single");
  if (single.is_string()) {
    std::istringstream words(single.get<std::string>());
    std::string word;
    while (words >> word) {
      // Drop a ":<type_id>" suffix.
      const size_t colon = word.rfind(':');
      const bool has_type = colon != std::string::npos && colon > 0 && colon + 1 < word.size() &&
                            std::all_of(word.begin() + static_cast<std::ptrdiff_t>(colon) + 1,
                                        word.end(), [](char c) { return c >= '0' && c <= '9'; });
      const std::string name = has_type ? word.substr(0, colon) : word;
      pieces.emplace_back(name[0] == '$', name);
    }
  } else if (single.is_array()) {
    for (const JsonFields& piece : in.objects("single")) {
      if (auto special = piece.optional_object("SpecialToken")) {
        pieces.emplace_back(false, special->string("id"));
      } else if (piece.has("Sequence")) {
        pieces.emplace_back(true, std::string());
      } else {
        piece.fail("must be {\"SpecialToken\": {\"id\": ...}} or {\"Sequence\": ...}, got " +
                   json_excerpt(piece.raw()));
      }
    }
  } else {
    in.fail("single", "must be an array or a string, got " + json_excerpt(single));
  }
  return pieces;
}

// Collects the ids a post-processor puts in front of a single sequence. Anything that adds
// tokens after the sequence, or that resq cannot describe as one BOS, is refused.
void parse_post_processor(const JsonFields& in, std::vector<int32_t>& prefix_ids) {
  const std::string type = in.string("type");
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    for (const JsonFields& step : in.objects("processors")) parse_post_processor(step, prefix_ids);
    return;
  }
  if (type != "TemplateProcessing") {
    bpe_detail::unsupported_type(in, type, "ByteLevel, TemplateProcessing, Sequence");
  }
  bool seen_sequence = false;
  for (const auto& [is_sequence, name] : template_pieces(in)) {
    if (is_sequence) {
      if (seen_sequence) throw UnsupportedError(in.where("single") + ": more than one sequence");
      seen_sequence = true;
      continue;
    }
    if (seen_sequence) {
      throw UnsupportedError(in.where("single") + ": special token '" + name +
                             "' after the sequence (e.g. EOS) is not supported: resq only "
                             "prepends a BOS");
    }
    const JsonFields specials = in.object("special_tokens");
    if (!specials.has(name)) specials.fail("has no entry for '" + name + "'");
    const JsonFields entry = specials.object(name);
    for (const json& id : entry.array("ids")) {
      if (!id.is_number_integer()) entry.fail("ids", "must hold integers, got " + json_excerpt(id));
      prefix_ids.push_back(id.get<int32_t>());
    }
  }
  if (!seen_sequence) in.fail("single", "has no $A sequence");
}

// ---------------------------------------------------------------- model

// model.type, model.vocab, model.merges and model.dropout: what this tokenizer can read.
void check_model(const JsonFields& model) {
  const json& m = model.raw();
  if (auto t = m.find("type"); t != m.end()) {
    if (!t->is_string() || *t != "BPE") {
      throw UnsupportedError(model.where("type") + " " + json_excerpt(*t) +
                             " is not supported by the BPE tokenizer (expected \"BPE\")");
    }
  }
  // The reader leaves an empty placeholder where it streamed the vocab and the merges.
  if (auto v = m.find("vocab"); v == m.end() || !v->is_object()) {
    throw ConfigError(model.where("vocab") + ": missing or not an object of token -> id");
  }
  if (auto v = m.find("merges"); v == m.end() || !v->is_array()) {
    throw ConfigError(model.where("merges") + ": missing or not an array");
  }
  if (const json* d = model.find("dropout")) {
    throw UnsupportedError(model.where("dropout") + " " + json_excerpt(*d) +
                           ": BPE dropout is random; only null is supported");
  }
}

// The model vocabulary (ids already validated by the reader) into token_text and vocab.
void load_vocab(TokenizerJsonReader& reader, const std::string& mw, Impl* impl) {
  if (!reader.has_vocab) throw ConfigError(mw + ".vocab: missing or not an object of token -> id");
  int64_t max_id = -1;
  for (const auto& entry : reader.vocab) max_id = std::max<int64_t>(max_id, entry.second);
  if (max_id < 0) throw ConfigError(mw + ".vocab is empty");
  {
    std::vector<std::string> texts(static_cast<size_t>(max_id + 1));
    std::vector<uint8_t> present(static_cast<size_t>(max_id + 1), 0);
    for (auto& [text, id_value] : reader.vocab) {
      const auto id = static_cast<size_t>(id_value);
      if (present[id]) {
        throw ConfigError(mw + ".vocab: id " + std::to_string(id) + " is given to both '" +
                          texts[id] + "' and '" + text + "'");
      }
      texts[id] = std::move(text);
      present[id] = 1;
    }
    impl->token_text = texts;
    impl->has_token = present;
    impl->vocab.build(std::move(texts), present);
  }
}

void read_model_options(const JsonFields& model, Impl* impl) {
  impl->ignore_merges = model.optional_boolean("ignore_merges").value_or(false);
  impl->byte_fallback = model.optional_boolean("byte_fallback").value_or(false);
  impl->fuse_unk = model.optional_boolean("fuse_unk").value_or(false);
  impl->continuing_subword_prefix = model.optional_string("continuing_subword_prefix").value_or("");
  impl->end_of_word_suffix = model.optional_string("end_of_word_suffix").value_or("");
  if (auto unk = model.optional_string("unk_token")) {
    const int32_t id = impl->vocab.find(*unk);
    if (id < 0) throw ConfigError(model.where("unk_token") + " '" + *unk + "' is not in model.vocab");
    impl->unk_id = id;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    impl->byte_fallback_ids[static_cast<size_t>(b)] = impl->vocab.find(name);
  }
}

// Merges: "a b" strings or ["a", "b"] pairs (split by the reader); rank = position.
void load_merges(const TokenizerJsonReader& reader, const std::string& mw, Impl* impl) {
  if (!reader.has_merges) throw ConfigError(mw + ".merges: missing or not an array");
  impl->merges.reserve(reader.merge_count());
  const size_t prefix_len = impl->continuing_subword_prefix.size();
  std::string joined;
  for (size_t i = 0; i < reader.merge_count(); ++i) {
    const std::string_view left = reader.merge_left(i), right = reader.merge_right(i);
    const auto where = [&] { return mw + ".merges[" + std::to_string(i) + "]"; };
    const int32_t l = impl->vocab.find(left);
    if (l < 0) {
      throw ConfigError(where() + ": token '" + std::string(left) + "' is not in model.vocab");
    }
    const int32_t r = impl->vocab.find(right);
    if (r < 0) {
      throw ConfigError(where() + ": token '" + std::string(right) + "' is not in model.vocab");
    }
    joined.assign(left);
    joined.append(right.substr(std::min(prefix_len, right.size())));
    const int32_t j = impl->vocab.find(joined);
    if (j < 0) throw ConfigError(where() + ": merged token '" + joined + "' is not in model.vocab");
    impl->merges.insert(l, r, static_cast<int32_t>(i), j);
  }
}

// ---------------------------------------------------------------- added tokens

std::vector<AddedToken> read_added_tokens(const JsonFields& root) {
  std::vector<AddedToken> entries;
  if (!root.optional_array("added_tokens")) return entries;
  for (const JsonFields& entry : root.objects("added_tokens")) {
    entry.integer("id");  // required, but HF assigns the ids itself (see assign_added_ids)
    AddedToken token;
    token.content = entry.string("content");
    if (bpe_detail::find_invalid_utf8(token.content)) entry.fail("content", "is not valid UTF-8");
    token.special = entry.optional_boolean("special").value_or(false);
    token.single_word = entry.optional_boolean("single_word").value_or(false);
    token.lstrip = entry.optional_boolean("lstrip").value_or(false);
    token.rstrip = entry.optional_boolean("rstrip").value_or(false);
    token.normalized = entry.optional_boolean("normalized").value_or(!token.special);
    entries.push_back(std::move(token));
  }
  return entries;
}

// Ids are assigned the way HF's AddedVocabulary does, not taken from the file: a content already
// known keeps its id, a new one gets the next id past the model vocabulary (HF only warns when
// that differs from the "id" written in the file).
void assign_added_ids(const std::vector<AddedToken>& entries, const std::string& file, Impl* impl) {
  const auto vocab_count = static_cast<int64_t>(impl->vocab.size());
  int64_t max_added = -1;
  std::unordered_map<int32_t, AddedToken> by_id;  // HF added_tokens_map_r
  std::vector<AddedToken> special_list, plain_list;
  std::unordered_map<std::string, bool> special_seen;
  const auto same_token = [](const AddedToken& a, const AddedToken& b) {
    return a.content == b.content && a.special == b.special && a.single_word == b.single_word &&
           a.lstrip == b.lstrip && a.rstrip == b.rstrip && a.normalized == b.normalized;
  };
  for (const AddedToken& token : entries) {
    if (token.content.empty()) continue;
    if (token.special && !special_seen.count(token.content)) {
      special_seen[token.content] = true;
      special_list.push_back(token);
    }
    if (std::any_of(by_id.begin(), by_id.end(),
                    [&](const auto& kv) { return same_token(kv.second, token); })) {
      continue;
    }
    int64_t id;
    if (auto known = impl->added_ids.find(token.content); known != impl->added_ids.end()) {
      id = known->second;
    } else if (const int32_t v = impl->vocab.find(token.content); v >= 0) {
      id = v;
    } else if (max_added < 0) {
      id = vocab_count;
    } else {
      id = (max_added >= vocab_count || vocab_count == 0) ? max_added + 1 : vocab_count;
    }
    if (id > kMaxTokenId) throw ConfigError(file + ": added_tokens: too many tokens");
    max_added = std::max(max_added, id);
    impl->added_ids[token.content] = static_cast<int32_t>(id);
    by_id[static_cast<int32_t>(id)] = token;
    if (!special_seen.count(token.content)) plain_list.push_back(token);
  }
  if (max_added >= static_cast<int64_t>(impl->token_text.size())) {
    impl->token_text.resize(static_cast<size_t>(max_added + 1));
    impl->has_token.resize(static_cast<size_t>(max_added + 1), 0);
  }
  for (const auto& [id, token] : by_id) {
    impl->token_text[static_cast<size_t>(id)] = token.content;  // HF decodes added text first
    impl->has_token[static_cast<size_t>(id)] = 1;
  }
  // Matching order: special tokens, then the others; flags from the id's current entry.
  for (const std::vector<AddedToken>* list : {&special_list, &plain_list}) {
    for (const AddedToken& listed : *list) {
      const int32_t id = impl->added_ids.at(listed.content);
      AddedToken token = by_id.at(id);
      token.id = id;
      token.normalized = listed.normalized;  // HF partitions the tries by the listed entry
      impl->added.push_back(std::move(token));
    }
  }
}

// ---------------------------------------------------------------- BOS

// BOS: the post-processor template's prefix, overridden by tokenizer_config.json add_bos_token.
void resolve_bos(const std::string& config_json, const std::string& origin,
                 const std::string& file, const std::vector<int32_t>& prefix_ids, Impl* impl) {
  const std::string cfile = origin + "/tokenizer_config.json";
  std::optional<bool> config_add_bos;
  std::optional<std::string> config_bos_token;
  if (!config_json.empty()) {
    const json config_root = parse_json(config_json, cfile, JsonErrorKind::kFormat);
    if (!config_root.is_object()) throw FormatError(cfile + ": expected a JSON object");
    const JsonFields config(config_root, cfile, kHfJson);
    config_add_bos = config.optional_boolean("add_bos_token");
    if (config.optional_boolean("add_eos_token").value_or(false)) {
      throw UnsupportedError(cfile + ": add_eos_token = true is not supported (resq never "
                             "appends EOS to an encoded text)");
    }
    if (const json* b = config.find("bos_token")) {
      if (b->is_string()) {
        config_bos_token = b->get<std::string>();
      } else if (b->is_object() && b->contains("content") && (*b)["content"].is_string()) {
        config_bos_token = (*b)["content"].get<std::string>();
      } else {
        config.fail("bos_token", "must be a string, {\"content\": ...} or null, got " + json_excerpt(*b));
      }
    }
  }
  if (!prefix_ids.empty()) {
    impl->bos = prefix_ids[0];
  } else if (config_bos_token) {
    auto a = impl->added_ids.find(*config_bos_token);
    const int32_t v = impl->vocab.find(*config_bos_token);
    if (a != impl->added_ids.end()) {
      impl->bos = a->second;
    } else if (v >= 0) {
      impl->bos = v;
    } else {
      throw ConfigError(cfile + ": bos_token '" + *config_bos_token +
                        "' is not a token of " + file);
    }
  }
  impl->adds_bos = config_add_bos.value_or(!prefix_ids.empty());
  if (impl->adds_bos && !impl->bos) {
    throw ConfigError(cfile + ": add_bos_token is true but no BOS token "
                      "is defined (bos_token or a post_processor template)");
  }
  if (impl->bos && (*impl->bos < 0 || static_cast<size_t>(*impl->bos) >= impl->has_token.size() ||
                    !impl->has_token[static_cast<size_t>(*impl->bos)])) {
    throw ConfigError(file + ": BOS id " + std::to_string(*impl->bos) + " has no token");
  }
}

std::unique_ptr<Impl> build_impl(const std::string& tokenizer_json, const std::string& config_json,
                                 const std::string& origin) {
  auto impl = std::make_unique<Impl>();
  const std::string file = origin + "/tokenizer.json";
  impl->origin = file;
  TokenizerJsonReader reader(file, tokenizer_json.size());
  sax_parse_json(tokenizer_json, file, reader, {JsonErrorKind::kFormat});
  if (!reader.root.is_object()) throw FormatError(file + ": expected a JSON object at the top level");
  const JsonFields root(reader.root, file, kHfJson);
  // Not root.find: a null version is as wrong as any other.
  if (auto v = reader.root.find("version"); v != reader.root.end() && !(v->is_string() && *v == "1.0")) {
    throw UnsupportedError(file + ": version " + json_excerpt(*v) + " (expected \"1.0\")");
  }

  const JsonFields model = root.object("model");
  check_model(model);
  const std::string mw = model.where();
  load_vocab(reader, mw, impl.get());
  assign_added_ids(read_added_tokens(root), file, impl.get());
  read_model_options(model, impl.get());
  load_merges(reader, mw, impl.get());

  if (auto n = root.optional_object("normalizer")) parse_normalizer(*n, impl->normalizers);
  if (auto p = root.optional_object("pre_tokenizer")) {
    bpe_detail::parse_pre_tokenizer(*p, impl->pre_tokenizers);
  }
  std::vector<int32_t> prefix_ids;
  if (auto p = root.optional_object("post_processor")) parse_post_processor(*p, prefix_ids);
  if (prefix_ids.size() > 1) {
    throw UnsupportedError(file + ": post_processor adds " + std::to_string(prefix_ids.size()) +
                           " tokens in front of the text; resq supports one BOS");
  }
  if (auto d = root.optional_object("decoder")) {
    const std::string type = d->string("type");
    if (type != "ByteLevel") bpe_detail::unsupported_type(*d, type, "ByteLevel, null");
    impl->byte_level_decoder = true;
  }

  // Added-token tries: non-normalized tokens match the raw text, normalized ones match the
  // normalized text (their content normalized too). Special tokens come first, as in HF.
  for (size_t i = 0; i < impl->added.size(); ++i) {
    const AddedToken& t = impl->added[i];
    if (t.normalized) {
      impl->normalized_trie.insert(impl->normalize(t.content), static_cast<int32_t>(i));
    } else {
      impl->raw_trie.insert(t.content, static_cast<int32_t>(i));
    }
  }


  resolve_bos(config_json, origin, file, prefix_ids, impl.get());
  return impl;
}

}  // namespace

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_json(const std::string& tokenizer_json,
                                                      const std::string& config_json,
                                                      const std::string& origin) {
  try {
    return std::unique_ptr<BpeTokenizer>(
        new BpeTokenizer(build_impl(tokenizer_json, config_json, origin)));
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong JSON type somewhere not checked explicitly.
    throw ConfigError(origin + "/tokenizer.json: unexpected content: " + e.what());
  }
}

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& dir) {
  const std::string json_path = dir + "/tokenizer.json";
  const std::string config_path = dir + "/tokenizer_config.json";
  const std::string tokenizer_json = read_file(json_path, "tokenizer file");
  std::error_code ec;  // an unreadable directory entry counts as no config file
  std::string config_json;
  if (std::filesystem::exists(config_path, ec)) config_json = read_file(config_path, "tokenizer config");
  return BpeTokenizer::from_json(tokenizer_json, config_json, dir);
}

}  // namespace resq
