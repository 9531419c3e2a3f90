// libFuzzer harness: tokenizer.json + tokenizer_config.json + a text -> BpeTokenizer::from_json,
// then encode the text, decode the ids, and decode ids taken from the text's bytes (in and out of
// the vocabulary).
#include <memory>

#include "fuzz_util.h"
#include "resq/text/bpe_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace resq;
  const std::vector<std::string> s = fuzz::split_sections(data, size, 3);
  std::unique_ptr<BpeTokenizer> tok;
  fuzz::expect_only_resq_errors([&] { tok = BpeTokenizer::from_json(s[0], s[1], "fuzz"); });
  if (!tok) return 0;
  // Callers put bos_id() in front of every encoded text: it must be a token.
  if (tok->bos_id() && (*tok->bos_id() < 0 || *tok->bos_id() >= tok->vocab_size())) {
    fuzz::invariant_failed("bos id " + std::to_string(*tok->bos_id()) + " outside the vocabulary");
  }
  fuzz::expect_only_resq_errors([&] {
    const std::vector<int32_t> ids = tok->encode(s[2]);
    for (int32_t id : ids) {
      if (id < 0 || id >= tok->vocab_size()) fuzz::invariant_failed("encode gave id " + std::to_string(id));
    }
    (void)tok->decode(ids);
  });
  fuzz::expect_only_resq_errors([&] {
    std::vector<int32_t> ids;
    for (unsigned char c : s[2]) ids.push_back(static_cast<int32_t>(c) - 8);  // some negative
    (void)tok->decode(ids);
  });
  return 0;
}
