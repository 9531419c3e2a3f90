// The HTML report (src/report): rendered from a hand-made quantize report whose figures are known,
// then parsed: the expected SVG elements and values, well-formed SVG, nothing that needs a script or
// the network, escaping, sections that say when their data is absent, and the atomic write.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/report/html_report.h"

namespace resq {
namespace {

using nlohmann::json;

json site(int64_t N, int64_t K, const json& high, bool act) {
  return {{"out_features", N}, {"in_features", K}, {"high", high}, {"bias", false}, {"storage", "packed"},
          {"weight_bits", {{"low", 4}, {"high", 8}}},
          {"activations", {{"enabled", act}, {"bits_low", 4}, {"bits_high", 8}, {"clip_ratio", 0.9}, {"high_count", 8}}}};
}

// A 2-layer model with hidden 64, head_dim 8, 1 KV head: every figure below is written by hand.
json quantize_report() {
  json last8 = {{"rule", "last"}, {"count", 8}};
  json sites = {{"q_proj", site(64, 64, last8, true)},
                {"k_proj", site(32, 64, last8, true)},
                {"v_proj", site(32, 64, last8, true)},
                {"o_proj", site(64, 64, {{"rule", "per_head"}, {"group", 8}, {"count", 1}}, true)},
                {"gate_proj", site(172, 64, last8, true)},
                {"up_proj", site(172, 64, last8, true)},
                {"down_proj", site(64, 172, {{"rule", "last"}, {"count", 0}}, true)}};
  json errors = json::array();
  for (int l = 0; l < 2; ++l) {
    errors.push_back({{"layer", l}, {"q_proj", 0.01 * (l + 1)}, {"k_proj", 0.02}, {"v_proj", 0.03}, {"o_proj", 0.04},
                      {"gate_proj", 0.05}, {"up_proj", 0.06}, {"down_proj", 0.125 + l}});
  }
  json ub = json::array();
  for (int l = 0; l < 2; ++l) {
    ub.push_back({{"layer", l}, {"kv_head", 0},
                  {"spectrum", {{"eigenvalues", {3.0, 1.0, 0.5, 0.5}}, {"rank", 1}, {"captured", 0.6}}}});
  }
  return {{"bits", {{"weights", 4.5}, {"activations", 4.5}, {"kv", 16.0}}},
          {"checkpoint", {{"dir", "/ck/stories-resq"}, {"file_bytes", 1048576}, {"packed_weight_bytes", 262144},
                          {"packed_scale_bytes", 65536}, {"dense_linear_bytes", 0}, {"global_bytes", 720896},
                          {"quantized_weights", 100000}, {"bits_per_quantized_weight", 5.25},
                          {"budget_bits_per_quantized_weight", 5.25}, {"compression_vs_bf16", 1.5}}},
          {"spectra", {{"U_A", {{"eigenvalues", {8.0, 4.0, 2.0, 1.0}}, {"rank", 1}, {"captured", 8.0 / 15.0}}},
                       {"U_B", ub}, {"U_C", json::array()}}},
          {"weight_relative_error", errors},
          {"recipe", {{"name", "resq"}, {"description", "test <b>recipe</b> & more"}, {"weights", {{"method", "gptq"}}}}},
          {"provenance", {{"source_model", "/models/stories260K"}, {"seed", 7}}},
          {"resq_config", {{"format", "resq-packed"}, {"format_version", 1}, {"r", 8}, {"r_h", 1}, {"sites", sites},
                           {"kv_cache", {{"enabled", false}, {"bits_low", 4}, {"bits_high", 8}, {"high_count", 1}}}}},
          {"stages", {{"total_seconds", 1.5}}}};
}

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

// The element <tag ...> (whole start tag) that contains `needle`.
std::string tag_with(const std::string& html, const std::string& needle) {
  const size_t p = html.find(needle);
  if (p == std::string::npos) return "";
  const size_t a = html.rfind('<', p), b = html.find('>', p);
  return html.substr(a, b - a + 1);
}

std::string attribute(const std::string& tag, const std::string& name) {
  const std::regex re(" " + name + "=\"([^\"]*)\"");
  std::smatch m;
  return std::regex_search(tag, m, re) ? m[1].str() : "<none>";
}

// Every <svg>...</svg> is well-formed XML as far as tags go: each start tag closed in order, or self-closed.
void expect_svg_well_formed(const std::string& html) {
  size_t pos = 0;
  int svgs = 0;
  while ((pos = html.find("<svg", pos)) != std::string::npos) {
    const size_t end = html.find("</svg>", pos);
    ASSERT_NE(end, std::string::npos) << "unclosed <svg> at " << pos;
    const std::string svg = html.substr(pos, end + 6 - pos);
    std::vector<std::string> stack;
    const std::regex tag_re("<(/?)([a-zA-Z]+)[^>]*?(/?)>");
    for (auto it = std::sregex_iterator(svg.begin(), svg.end(), tag_re); it != std::sregex_iterator(); ++it) {
      const auto& m = *it;
      if (m[3].str() == "/") continue;  // self-closing
      if (m[1].str().empty()) {
        stack.push_back(m[2].str());
      } else {
        ASSERT_FALSE(stack.empty()) << "</" << m[2] << "> without a start tag in svg #" << svgs;
        ASSERT_EQ(stack.back(), m[2].str()) << "misnested tags in svg #" << svgs;
        stack.pop_back();
      }
    }
    EXPECT_TRUE(stack.empty()) << "unclosed tags in svg #" << svgs;
    EXPECT_EQ(svg.find('&', 0) == std::string::npos || svg.find("& ") == std::string::npos, true) << "raw & in svg #" << svgs;
    ++svgs;
    pos = end;
  }
  EXPECT_GT(svgs, 0);
}

TEST(HtmlReport, ChartsCarryTheReportsFigures) {
  ReportInputs in;
  in.quantize = quantize_report();
  in.evals.push_back({{"ppl", 5.5}, {"ppl_stderr", 0.25}, {"model", "/ck/stories-resq"}, {"mode", "packed"},
                      {"num_windows", 4}, {"seqlen", 128}, {"data", "valid.txt"}});
  const std::string html = render_report_html(in);
  ASSERT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  // Self-contained: no script, no external resource.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
  EXPECT_EQ(html.find(" src="), std::string::npos);
  expect_svg_well_formed(html);
  EXPECT_EQ(count(html, "<svg"), count(html, "</svg>"));

  // U_A: 4 eigenvalues, rank 1, captured 8/15 = 0.533333; the marker drawn.
  const std::string ua = tag_with(html, "data-subspace=\"U_A\"");
  EXPECT_EQ(attribute(ua, "data-rank"), "1");
  EXPECT_EQ(attribute(ua, "data-captured"), "0.533333");
  EXPECT_NE(html.find("U_A variance captured at rank 1: 0.5333"), std::string::npos);
  EXPECT_GE(count(html, "data-points=\"4\""), 2 + 2);  // U_A eigenvalues + cumulative, 2 U_B curves
  EXPECT_GE(count(html, "class=\"marker\""), 3);
  // U_B: cumulative (3 + 1 + 0.5 + 0.5 = 5): the first point at 3/5.
  const std::string ub = tag_with(html, "data-subspace=\"U_B\"");
  EXPECT_EQ(attribute(ub, "data-captured-mean"), "0.600000");
  EXPECT_NE(html.find("U_C: not used by this recipe"), std::string::npos);

  // GPTQ heatmap: 2 layers x 7 sites, the values as given.
  EXPECT_EQ(count(html, "<rect class=\"cell\""), 14);
  EXPECT_EQ(attribute(tag_with(html, "data-row=\"1\" data-col=\"6\""), "data-value"), "1.125");
  EXPECT_EQ(attribute(tag_with(html, "data-row=\"1\" data-col=\"0\""), "data-value"), "0.02");

  // Bits per site: q_proj 4 x 56/64 + 8 x 8/64 = 4.5; o_proj 1 of every 8 columns = 8 of 64 -> 4.5;
  // down_proj no high columns -> 4.
  EXPECT_EQ(attribute(tag_with(html, "data-label=\"q_proj\" data-value"), "data-value"), "4.5");
  EXPECT_EQ(attribute(tag_with(html, "data-label=\"o_proj\" data-value"), "data-value"), "4.5");
  EXPECT_EQ(attribute(tag_with(html, "data-label=\"down_proj\" data-value"), "data-value"), "4");
  // Size budget bars in bytes.
  EXPECT_EQ(attribute(tag_with(html, "data-label=\"packed weights\""), "data-value"), "262144");
  EXPECT_NE(html.find("0.25 MiB (25.0%)"), std::string::npos);
  EXPECT_NE(html.find("5.25"), std::string::npos);
  // Recipe text is escaped, provenance and eval shown.
  EXPECT_NE(html.find("test &lt;b&gt;recipe&lt;/b&gt; &amp; more"), std::string::npos);
  EXPECT_EQ(html.find("<b>recipe</b>"), std::string::npos);
  EXPECT_NE(html.find("/models/stories260K"), std::string::npos);
  EXPECT_NE(html.find("5.5000 ± 0.2500"), std::string::npos);
  EXPECT_EQ(attribute(tag_with(html, "class=\"bar\" data-label=\"/ck/stories-resq\""), "data-value"), "5.5");
}

TEST(HtmlReport, ACheckpointAloneSaysWhatIsMissing) {
  ReportInputs in;
  in.checkpoint = quantize_report()["resq_config"];
  in.sizes = quantize_report()["checkpoint"];
  const std::string html = render_report_html(in);
  expect_svg_well_formed(html);
  EXPECT_NE(html.find("spectra are in the quantize report only"), std::string::npos);
  EXPECT_NE(html.find("errors are in the quantize report only"), std::string::npos);
  EXPECT_NE(html.find("No eval results given"), std::string::npos);
  EXPECT_EQ(count(html, "<rect class=\"cell\""), 0);
  EXPECT_EQ(attribute(tag_with(html, "data-label=\"k_proj\" data-value"), "data-value"), "4.5");
}

TEST(HtmlReport, WrittenAtomicallyAndInputsChecked) {
  test::TempDir dir;
  const std::string json_path = dir.file("q.json");
  test::write_file(json_path, quantize_report().dump());
  const ReportInputs in = load_report_inputs(json_path);
  write_report_html(dir.file("r.html"), in);
  EXPECT_EQ(test::directory_entries(dir.path()), (std::vector<std::string>{"q.json", "r.html"}));  // no temporary left
  EXPECT_EQ(test::read_file(dir.file("r.html")), render_report_html(in));
  test::write_file(dir.file("other.json"), R"({"ppl": 3})");
  EXPECT_NE(test::message_of<UsageError>([&] { load_report_inputs(dir.file("other.json")); }).find("not a `resq quantize --json` report"),
            std::string::npos);
  EXPECT_THROW(write_report_html(dir.file("no/such/dir/r.html"), in), IoError);
}

}  // namespace
}  // namespace resq
