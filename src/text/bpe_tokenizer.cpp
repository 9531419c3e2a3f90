// Placeholder until the byte-level BPE tokenizer lands (issue: byte-level BPE tokenizer).
#include "resq/common/error.h"
#include "resq/text/tokenizer.h"

namespace resq {

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::string& dir) {
  throw UnsupportedError(dir + "/tokenizer.json: byte-level BPE tokenizers are not yet supported");
}

}  // namespace resq
