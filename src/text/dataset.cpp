// WikiText-2 joining rule, evaluation tokenization, windows and seeded calibration sampling.
#include "resq/text/dataset.h"

#include <cstdio>

#include "resq/common/error.h"
#include "resq/text/tokenizer.h"

namespace resq {

std::string wikitext_join(const std::string& raw) {
  std::vector<std::string> rows;
  size_t start = 0;
  while (start < raw.size()) {
    size_t end = raw.find('\n', start);
    std::string line = end == std::string::npos ? raw.substr(start) : raw.substr(start, end - start + 1);
    start = end == std::string::npos ? raw.size() : end + 1;
    bool blank = true;
    for (char ch : line) {
      if (!(ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v')) {
        blank = false;
        break;
      }
    }
    rows.push_back(blank ? std::string() : line);
  }
  std::string text;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i) text += "\n\n";
    text += rows[i];
  }
  return text;
}

std::vector<int32_t> tokenize_for_eval(const Tokenizer& tokenizer, const std::string& text, bool add_bos) {
  std::vector<int32_t> ids;
  if (add_bos) {
    if (!tokenizer.bos_id()) throw ConfigError("tokenizer has no BOS token but BOS was requested");
    ids.push_back(*tokenizer.bos_id());
  }
  const auto body = tokenizer.encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

int64_t num_windows(int64_t num_ids, int64_t seqlen) {
  if (seqlen < 2) throw UsageError("--seqlen must be >= 2, got " + std::to_string(seqlen));
  return num_ids / seqlen;
}

namespace {
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
}  // namespace

std::vector<int64_t> sample_calibration_offsets(int64_t num_ids, int64_t seqlen, int64_t count, uint64_t seed) {
  if (seqlen < 2) throw UsageError("--seqlen must be >= 2, got " + std::to_string(seqlen));
  if (count < 1) throw UsageError("--nsamples must be >= 1, got " + std::to_string(count));
  if (num_ids < seqlen) {
    throw UsageError("calibration text has " + std::to_string(num_ids) + " tokens, fewer than --seqlen " +
                     std::to_string(seqlen));
  }
  const uint64_t range = static_cast<uint64_t>(num_ids - seqlen + 1);
  uint64_t state = seed;
  std::vector<int64_t> offsets(count);
  for (auto& o : offsets) {
    // Rejection sampling for an unbiased, platform-independent draw in [0, range).
    const uint64_t limit = UINT64_MAX - UINT64_MAX % range;
    uint64_t r;
    do { r = splitmix64(state); } while (r >= limit);
    o = static_cast<int64_t>(r % range);
  }
  return offsets;
}

std::string fnv1a_hex(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace resq
