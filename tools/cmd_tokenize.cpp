// `resq tokenize`: text -> ids (or ids -> text with --decode), for debugging tokenization.
#include <cstdio>
#include <memory>
#include <sstream>

#include "common.h"
#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"

namespace resq::tools {
namespace {

struct TokenizeOptions {
  CommonOptions common;
  std::string text;
  std::string file;
  std::string decode;
  bool bos = false;
  bool json = false;
  bool text_given = false;
};

void run_tokenize(const TokenizeOptions& o) {
  apply_runtime_options(o.common);
  auto tokenizer = load_tokenizer(o.common.model);
  const int sources = (o.text_given ? 1 : 0) + (o.file.empty() ? 0 : 1) + (o.decode.empty() ? 0 : 1);
  if (sources != 1) throw UsageError("resq tokenize: give exactly one of --text STR, --file F or --decode \"IDS\"");
  if (!o.decode.empty()) {
    std::vector<int32_t> ids;
    std::istringstream in(o.decode);
    std::string tok;
    while (in >> tok) {
      if (!tok.empty() && tok.back() == ',') tok.pop_back();
      try {
        size_t used = 0;
        long long v = std::stoll(tok, &used);
        if (used != tok.size()) throw std::invalid_argument(tok);
        ids.push_back(static_cast<int32_t>(v));
      } catch (const std::exception&) {
        throw UsageError("--decode: '" + tok + "' is not an integer token id");
      }
    }
    const std::string text = tokenizer->decode(ids);
    if (o.json) {
      std::printf("%s\n", nlohmann::json({{"text", text}}).dump().c_str());
    } else {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::printf("\n");
    }
    return;
  }
  const std::string text = o.file.empty() ? o.text : read_file(o.file, "--file text file");
  const auto ids = tokenize_for_eval(*tokenizer, text, o.bos);
  if (o.json) {
    std::printf("%s\n", nlohmann::json({{"ids", ids}}).dump().c_str());
  } else {
    for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
    std::printf("\n");
  }
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  auto* cmd = app.add_subcommand("tokenize", "text -> token ids (or --decode ids -> text)");
  add_model_option(cmd, o->common);
  cmd->add_option("--text", o->text, "text to tokenize")->each([o](const std::string&) { o->text_given = true; });
  cmd->add_option("--file", o->file, "file whose bytes are tokenized verbatim");
  cmd->add_option("--decode", o->decode, "space-separated ids to decode");
  cmd->add_flag("--bos", o->bos, "prepend BOS (default: no special token added)");
  cmd->add_flag("--json", o->json, "print {\"ids\": [...]} (or {\"text\": ...} with --decode)");
  cmd->add_option("--log-level", o->common.log_level, "log level")->capture_default_str();
  cmd->footer("Example:\n  resq tokenize --model models/Llama-3.2-1B --text \"Hello world\" --bos");
  cmd->callback([o] { run_tokenize(*o); });
}

}  // namespace resq::tools
