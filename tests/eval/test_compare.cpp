// compare_to_reference / window_divergence (src/eval/perplexity.cpp): KL and top-1 agreement against
// values computed here from the definition, a model against itself, and consistency with
// evaluate_perplexity on the same windows.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "common/quantized_stories.h"
#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/eval/divergence.h"
#include "resq/eval/perplexity.h"
#include "resq/model/decoder.h"
#include "resq/runtime/packed_model.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"

namespace resq {
namespace {

// KL(softmax(a) || softmax(b)) in long double, straight from the definition.
long double kl_definition(const std::vector<double>& a, const std::vector<double>& b) {
  long double za = 0, zb = 0;
  for (double v : a) za += std::exp(static_cast<long double>(v));
  for (double v : b) zb += std::exp(static_cast<long double>(v));
  long double kl = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const long double p = std::exp(static_cast<long double>(a[i])) / za;
    const long double q = std::exp(static_cast<long double>(b[i])) / zb;
    kl += p * std::log(p / q);
  }
  return kl;
}

size_t argmax(const std::vector<double>& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i] > v[best]) best = i;
  }
  return best;
}

TEST(WindowDivergence, MatchesTheDefinitionOnASmallCase) {
  const int64_t B = 2, T = 3, V = 5;
  std::mt19937 rng(7);
  std::normal_distribution<double> normal(0.0, 2.0);
  // Values a float32 model could give (rounded to float first), so the expectation below uses
  // exactly the logits the function sees.
  std::vector<double> ref(B * T * V), cand(B * T * V);
  for (auto& v : ref) v = static_cast<float>(normal(rng));
  for (size_t i = 0; i < cand.size(); ++i) cand[i] = static_cast<float>(ref[i] + 0.7 * normal(rng));
  // Position (0, 1): the argmaxes differ for certain; position (1, 2): the same softmax (shifted logits).
  const int64_t p01 = (0 * T + 1) * V, p12 = (1 * T + 2) * V;
  cand[p01 + argmax({ref.begin() + p01, ref.begin() + p01 + V})] -= 50.0;
  for (int64_t v = 0; v < V; ++v) cand[p12 + v] = ref[p12 + v] + 2.0;
  for (auto& v : cand) v = static_cast<float>(v);

  std::vector<double> want_kl(B, 0.0), want_top1(B, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const auto off = (b * T + t) * V;
      const std::vector<double> x(ref.begin() + off, ref.begin() + off + V), y(cand.begin() + off, cand.begin() + off + V);
      want_kl[b] += static_cast<double>(kl_definition(x, y)) / T;
      want_top1[b] += (argmax(x) == argmax(y) ? 1.0 : 0.0) / T;
    }
  }
  const at::Tensor r = at::from_blob(ref.data(), {B, T, V}, at::kDouble).to(at::kFloat);  // [B, T, V]
  const at::Tensor c = at::from_blob(cand.data(), {B, T, V}, at::kDouble).to(at::kFloat);
  const std::vector<WindowDivergence> got = window_divergence(r, c);
  ASSERT_EQ(got.size(), 2u);
  for (int64_t b = 0; b < B; ++b) {
    EXPECT_NEAR(got[b].kl, want_kl[b], 1e-12 * std::max(1.0, want_kl[b])) << "window " << b;
    EXPECT_DOUBLE_EQ(got[b].top1, want_top1[b]) << "window " << b;
  }
  EXPECT_GT(want_kl[0], 0.1);          // the case is not trivially zero
  EXPECT_LE(want_top1[0], 2.0 / 3.0);  // position (0, 1) disagrees
  // Against itself: exactly 0 and full agreement.
  for (const WindowDivergence& d : window_divergence(r, r)) {
    EXPECT_EQ(d.kl, 0.0);
    EXPECT_EQ(d.top1, 1.0);
  }
  EXPECT_THROW(window_divergence(r, c.narrow(1, 0, 2)), ShapeError);
}

std::vector<int32_t> stories_ids(const std::string& model_dir) {
  auto tok = load_tokenizer(model_dir);
  return tokenize_for_eval(*tok, test::read_file(test::shared_path("data/tinystories/valid_head.txt")), tok->adds_bos());
}

TEST(CompareToReference, AModelAgainstItselfHasZeroKlAndFullAgreement) {
  const std::string dir = test::shared_path("models/stories260K");
  Decoder a = Decoder::load(dir);
  Decoder b = Decoder::load(dir);
  const auto ids = stories_ids(dir);
  PerplexityOptions po;
  po.seqlen = 64;
  po.max_windows = 5;
  po.batch = 2;  // a ragged last batch
  po.progress = false;
  const ComparisonResult r = compare_to_reference(a, b, ids, po);
  EXPECT_EQ(r.kl_mean, 0.0);
  EXPECT_EQ(r.kl_stderr, 0.0);
  EXPECT_EQ(r.top1_agreement, 1.0);
  EXPECT_EQ(r.window_kl.size(), 5u);
  EXPECT_EQ(r.num_positions, 5 * 64);
  EXPECT_EQ(r.reference.ppl, r.candidate.ppl);
  // The streamed NLLs are evaluate_perplexity's on the same windows.
  const PerplexityResult p = evaluate_perplexity(a, ids, po);
  ASSERT_EQ(p.window_nll.size(), r.reference.window_nll.size());
  for (size_t i = 0; i < p.window_nll.size(); ++i) EXPECT_NEAR(p.window_nll[i], r.reference.window_nll[i], 1e-12);
}

TEST(CompareToReference, AQuantizedModelDivergesAndItsPplMatchesAPlainEval) {
  const std::string fp_dir = test::shared_path("models/stories260K");
  const std::string q_dir = test::quantized_stories("resq-rtn");
  Decoder fp = Decoder::load(fp_dir);
  Decoder q = load_model_for_eval(q_dir, LoadOptions{}, ExecutionMode::kSimulate);
  const auto ids = stories_ids(fp_dir);
  PerplexityOptions po;
  po.seqlen = 128;
  po.max_windows = 4;
  po.progress = false;
  const ComparisonResult r = compare_to_reference(fp, q, ids, po);
  EXPECT_GT(r.kl_mean, 1e-4);
  EXPECT_GT(r.kl_stderr, 0.0);
  EXPECT_LT(r.top1_agreement, 1.0);
  EXPECT_GT(r.top1_agreement, 0.3);
  // The window means and their standard error, recomputed here.
  double sum = 0;
  for (double v : r.window_kl) sum += v;
  const double mean = sum / r.window_kl.size();
  double ss = 0;
  for (double v : r.window_kl) ss += (v - mean) * (v - mean);
  EXPECT_NEAR(r.kl_mean, mean, 1e-15);
  EXPECT_NEAR(r.kl_stderr, std::sqrt(ss / (r.window_kl.size() - 1)) / std::sqrt(double(r.window_kl.size())), 1e-15);
  const PerplexityResult pq = evaluate_perplexity(q, ids, po);
  const PerplexityResult pf = evaluate_perplexity(fp, ids, po);
  EXPECT_NEAR(r.candidate.ppl, pq.ppl, 1e-9 * pq.ppl);
  EXPECT_NEAR(r.reference.ppl, pf.ppl, 1e-9 * pf.ppl);
}

}  // namespace
}  // namespace resq
