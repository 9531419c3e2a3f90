// Evaluation/calibration text handling: WikiText-2 row joining, token windows, calibration sampling.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace resq {

class Tokenizer;

// Rebuilds the text that GPTQ/QuaRot/SpinQuant/ResQ evaluate from a canonical wiki.*.raw file:
// every line (keeping its '\n') is a dataset row, a whitespace-only line is the empty row, and the
// text is "\n\n".join(rows) — equal to HF datasets' wikitext-2-raw-v1 joined with "\n\n".
std::string wikitext_join(const std::string& raw_text);

// ids = [bos] + tokenizer.encode(text) when `add_bos` (BOS prepended once for the whole text).
std::vector<int32_t> tokenize_for_eval(const Tokenizer& tokenizer, const std::string& text, bool add_bos);

// Non-overlapping windows of seqlen tokens, tail dropped: window w = ids[w*seqlen, (w+1)*seqlen).
int64_t num_windows(int64_t num_ids, int64_t seqlen);

// `count` random windows of `seqlen` tokens (start offsets uniform in [0, n - seqlen], seeded,
// identical on every platform) for calibration. Returns the start offsets.
std::vector<int64_t> sample_calibration_offsets(int64_t num_ids, int64_t seqlen, int64_t count, uint64_t seed);

// FNV-1a 64-bit hash of bytes, as hex: recorded in reports to identify data files.
std::string fnv1a_hex(const std::string& bytes);

}  // namespace resq
