// libFuzzer harness: a SentencePiece tokenizer directory — tokenizer.model, tokenizer_config.json,
// config.json, then a text -> load_tokenizer (the picker), encode, decode. libsentencepiece itself
// is not instrumented (it runs in its own link-map namespace, src/text/sentencepiece_shim.cpp), but
// a crash inside it still stops the run.
#include <memory>

#include "fuzz_util.h"
#include "resq/text/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace resq;
  static fuzz::ScratchDir dir;
  dir.clear();
  const std::vector<std::string> s = fuzz::split_sections(data, size, 4);
  dir.write("tokenizer.model", s[0]);
  if (!s[1].empty()) dir.write("tokenizer_config.json", s[1]);
  if (!s[2].empty()) dir.write("config.json", s[2]);
  std::unique_ptr<Tokenizer> tok;
  fuzz::expect_only_resq_errors([&] { tok = load_tokenizer(dir.path()); });
  if (!tok) return 0;
  // Callers put bos_id() in front of every encoded text: it must be a token.
  if (tok->bos_id() && (*tok->bos_id() < 0 || *tok->bos_id() >= tok->vocab_size())) {
    fuzz::invariant_failed("bos id " + std::to_string(*tok->bos_id()) + " outside the vocabulary");
  }
  fuzz::expect_only_resq_errors([&] {
    const std::vector<int32_t> ids = tok->encode(s[3]);
    (void)tok->decode(ids);
    std::vector<int32_t> raw;
    for (unsigned char c : s[3]) raw.push_back(static_cast<int32_t>(c) - 8);
    (void)tok->decode(raw);
  });
  return 0;
}
