// The HTML report of a quantization (include/resq/report/html_report.h): sections built from the
// quantize report, resq_config.json and eval results, charts from svg.h, one file, no script.
#include "resq/report/html_report.h"

#include <cmath>
#include <filesystem>

#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/json_fields.h"
#include "resq/common/log.h"
#include "resq/format/checkpoint.h"
#include "svg.h"

namespace resq {
using nlohmann::json;
using report::html_escape;
using report::format_number;

namespace {

const char* const kSites[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

// j[key] when j is an object holding it (else null): every section tolerates missing data.
const json& at_key(const json& j, const char* key) {
  static const json null_value;
  if (!j.is_object()) return null_value;
  const auto it = j.find(key);
  return it == j.end() ? null_value : *it;
}

double number_or_nan(const json& j) { return j.is_number() ? j.get<double>() : std::nan(""); }

std::string text_of(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_null()) return "";
  if (j.is_number_float()) return format_number(j.get<double>(), 6);
  return j.dump();
}

std::string mib(double bytes) { return strprintf("%.2f MiB", bytes / (1 << 20)); }

std::string absent(const std::string& what) { return "<p class=\"absent\">" + html_escape(what) + "</p>"; }

std::string table_row(const std::vector<std::string>& cells, bool header = false) {
  std::string s = "<tr>";
  for (const auto& c : cells) s += (header ? "<th>" : "<td>") + c + (header ? "</th>" : "</td>");
  return s + "</tr>";
}

// ---------------------------------------------------------------- sections

std::string summary_section(const ReportInputs& in, const json& config, const json& sizes) {
  const json& bits = at_key(in.quantize, "bits");
  const json& recipe = in.quantize.is_object() && in.quantize.contains("recipe") ? in.quantize["recipe"] : at_key(config, "recipe");
  std::string s = "<section id=\"summary\"><h2>Summary</h2><table class=\"kv\">";
  s += table_row({"recipe", html_escape(text_of(at_key(recipe, "name")))});
  s += table_row({"description", html_escape(text_of(at_key(recipe, "description")))});
  if (bits.is_object()) {
    s += table_row({"bits W / A / KV", html_escape(format_number(number_or_nan(bits["weights"])) + " / " +
                                                   format_number(number_or_nan(bits["activations"])) + " / " +
                                                   format_number(number_or_nan(bits["kv"])))});
  }
  const json& prov = at_key(config, "provenance");
  s += table_row({"source model", html_escape(text_of(at_key(prov.is_null() ? at_key(in.quantize, "provenance") : prov, "source_model")))});
  s += table_row({"checkpoint", html_escape(text_of(at_key(sizes, "dir")))});
  if (sizes.is_object()) {
    s += table_row({"size on disk", html_escape(mib(number_or_nan(sizes["file_bytes"])) + " (" +
                                                format_number(number_or_nan(sizes["compression_vs_bf16"]), 3) + "x smaller than bf16)")});
  }
  if (config.is_object()) {
    s += table_row({"format", html_escape(text_of(config["format"]) + " v" + text_of(config["format_version"]))});
    s += table_row({"8-bit subspace", html_escape("r = " + text_of(config["r"]) + " of the hidden size, r_h = " +
                                                  text_of(config["r_h"]) + " of the head dim")});
  }
  return s + "</table></section>";
}

std::string budget_section(const json& sizes) {
  std::string s = "<section id=\"budget\"><h2>Size budget</h2>";
  if (!sizes.is_object()) return s + absent("No checkpoint sizes in the inputs.") + "</section>";
  const double total = number_or_nan(sizes["file_bytes"]);
  std::vector<report::Bar> bars;
  const std::pair<const char*, const char*> parts[] = {{"packed_weight_bytes", "packed weights"},
                                                       {"packed_scale_bytes", "scales (+ perms)"},
                                                       {"dense_linear_bytes", "dense linears"},
                                                       {"global_bytes", "embed, lm_head, norms"}};
  size_t color = 0;
  for (const auto& [key, label] : parts) {
    const double v = number_or_nan(at_key(sizes, key));
    if (std::isnan(v)) continue;
    bars.push_back({label, v, mib(v) + strprintf(" (%.1f%%)", 100.0 * v / total), report::palette_color(color++)});
  }
  s += report::bar_chart(bars, "bytes on disk by kind (total " + mib(total) + ")", "budget");
  s += "<table class=\"kv\">";
  s += table_row({"bits per quantized weight (on disk)", html_escape(format_number(number_or_nan(sizes["bits_per_quantized_weight"]), 5))});
  if (sizes.contains("budget_bits_per_quantized_weight")) {
    s += table_row({"budget bits per quantized weight", html_escape(format_number(number_or_nan(sizes["budget_bits_per_quantized_weight"]), 5))});
  }
  s += table_row({"quantized weights", html_escape(text_of(sizes["quantized_weights"]))});
  return s + "</table></section>";
}

// Columns stored 8-bit of a site: "last" count, or count per group of `group` columns.
double high_columns(const json& site) {
  const json& high = at_key(site, "high");
  const double count = number_or_nan(at_key(high, "count"));
  if (text_of(at_key(high, "rule")) == "per_head") {
    return count * number_or_nan(at_key(site, "in_features")) / number_or_nan(at_key(high, "group"));
  }
  return count;
}

std::string sites_section(const json& config) {
  std::string s = "<section id=\"sites\"><h2>Bits per site</h2>";
  const json& sites = at_key(config, "sites");
  if (!sites.is_object()) return s + absent("No resq_config.json in the inputs.") + "</section>";
  std::string rows = table_row({"site", "out x in", "storage", "weight bits low/high", "8-bit columns",
                                "weight bits (effective)", "activation bits low/high", "act. clip"}, true);
  std::vector<report::Bar> bars;
  for (const char* name : kSites) {
    const json& site = at_key(sites, name);
    if (!site.is_object()) continue;
    const double K = number_or_nan(site["in_features"]);
    const double k8 = high_columns(site);
    const double lo = number_or_nan(site["weight_bits"]["low"]), hi = number_or_nan(site["weight_bits"]["high"]);
    const double eff = (lo * (K - k8) + hi * k8) / K;
    const json& act = site["activations"];
    const bool act_on = act.is_object() && act["enabled"].is_boolean() && act["enabled"].get<bool>();
    rows += table_row({name, html_escape(text_of(site["out_features"]) + " x " + text_of(site["in_features"])),
                       html_escape(text_of(site["storage"])), html_escape(format_number(lo) + " / " + format_number(hi)),
                       html_escape(format_number(k8, 6)), html_escape(format_number(eff, 4)),
                       act_on ? html_escape(text_of(act["bits_low"]) + " / " + text_of(act["bits_high"])) : "16 (off)",
                       act_on ? html_escape(text_of(act["clip_ratio"])) : "-"});
    bars.push_back({name, eff, format_number(eff, 4) + " bits", report::ramp_color(std::min(1.0, eff / 16.0))});
  }
  s += report::bar_chart(bars, "effective weight bits per site", "site-bits", 8.0);
  s += "<table>" + rows + "</table>";
  const json& kv = at_key(config, "kv_cache");
  if (kv.is_object()) {
    const bool on = kv["enabled"].is_boolean() && kv["enabled"].get<bool>();
    s += "<p>KV cache: " +
         (on ? html_escape(text_of(kv["bits_low"]) + "/" + text_of(kv["bits_high"]) + " bits (last " + text_of(kv["high_count"]) +
                           " channels of each head 8-bit)")
             : std::string("not quantized")) +
         "</p>";
  }
  return s + "</section>";
}

// Cumulative captured fraction at each rank of a descending spectrum.
std::vector<double> cumulative_fraction(const std::vector<double>& eig) {
  double total = 0;
  for (double v : eig) total += v;
  std::vector<double> out;
  double acc = 0;
  for (double v : eig) out.push_back(total > 0 ? (acc += v) / total : 0.0);
  return out;
}

std::vector<double> eigenvalues_of(const json& spectrum) {
  const json& e = at_key(spectrum, "eigenvalues");
  std::vector<double> v;
  if (e.is_array()) {
    for (const auto& x : e) v.push_back(number_or_nan(x));
  }
  return v;
}

// One subspace family (U_B and U_C per layer and kv head): every spectrum's cumulative
// fraction in one chart, coloured by layer, and the captured fraction per entry.
std::string family_block(const std::string& name, const json& entries, const std::string& what) {
  if (!entries.is_array() || entries.empty()) return absent(name + ": not used by this recipe.");
  std::vector<report::Series> cum;
  double rank = 0, sum = 0, lo = 1e300, hi = -1e300;
  int64_t layers = 0;
  for (const auto& e : entries) layers = std::max<int64_t>(layers, e.value("layer", int64_t{0}) + 1);
  for (const auto& e : entries) {
    const json& sp = at_key(e, "spectrum");
    const int64_t layer = e.value("layer", int64_t{0});
    std::string label = "layer " + std::to_string(layer);
    if (e.contains("kv_head")) label += " head " + text_of(e["kv_head"]);
    cum.push_back({label, cumulative_fraction(eigenvalues_of(sp)), report::ramp_color(layers > 1 ? layer / double(layers - 1) : 0.0)});
    rank = number_or_nan(at_key(sp, "rank"));
    const double c = number_or_nan(at_key(sp, "captured"));
    sum += c, lo = std::min(lo, c), hi = std::max(hi, c);
  }
  const double mean = sum / entries.size();
  report::LineChartOptions o;
  o.title = name + ": cumulative variance captured (" + what + ", " + std::to_string(entries.size()) + " subspaces)";
  o.x_label = "rank (eigen-directions, largest first)";
  o.y_label = "fraction of variance";
  o.y_min = 0.0;
  o.y_max = 1.0;
  o.marker_x = rank;
  o.marker_label = "8-bit rank " + format_number(rank);
  o.css_class = "spectrum cumulative";
  o.data_attributes = "data-subspace=\"" + name + "\" data-rank=\"" + format_number(rank, 6) + "\" data-captured-mean=\"" +
                      strprintf("%.6f", mean) + "\"";
  o.legend = false;
  std::string s = report::line_chart(cum, o);
  s += "<p>" + html_escape(name) + " variance captured at rank " + html_escape(format_number(rank)) + ": mean " +
       html_escape(strprintf("%.4f", mean)) + ", min " + html_escape(strprintf("%.4f", lo)) + ", max " +
       html_escape(strprintf("%.4f", hi)) + " (colour: layer, dark = first)</p>";
  return s;
}

std::string spectra_section(const json& quantize) {
  std::string s = "<section id=\"spectra\"><h2>PCA spectra and variance captured</h2>";
  const json& sp = at_key(quantize, "spectra");
  const json& ua = at_key(sp, "U_A");
  if (!ua.is_object()) {
    const bool has_report = quantize.is_object();
    return s + absent(has_report ? "No PCA in this recipe (rotation method is not resq): nothing to show."
                                 : "The eigenvalue spectra are in the quantize report only: give `resq quantize --json` "
                                   "output (or use `quantize --report`).") + "</section>";
  }
  const std::vector<double> eig = eigenvalues_of(ua);
  const double rank = number_or_nan(ua["rank"]);
  const double captured = number_or_nan(ua["captured"]);
  s += "<p>Each subspace's calibration covariance is eigendecomposed; the top-r eigen-directions (left of the dashed "
       "line) are kept in 8 bits, the rest in 4. The higher the captured fraction, the more of the signal the 8-bit "
       "part carries.</p>";
  report::LineChartOptions o;
  o.title = "U_A (residual stream): eigenvalues, largest first";
  o.x_label = "eigen-direction";
  o.y_label = "eigenvalue (log)";
  o.log_y = true;
  o.marker_x = rank + 0.5;
  o.marker_label = "top " + format_number(rank) + " in 8 bits";
  o.css_class = "spectrum eigenvalues";
  o.data_attributes = "data-subspace=\"U_A\" data-rank=\"" + format_number(rank, 6) + "\" data-captured=\"" +
                      strprintf("%.6f", captured) + "\"";
  s += report::line_chart({{"U_A", eig, report::palette_color(0)}}, o);
  o.title = "U_A: cumulative variance captured";
  o.y_label = "fraction of variance";
  o.log_y = false;
  o.y_min = 0.0;
  o.y_max = 1.0;
  o.marker_x = rank;
  o.marker_label = strprintf("rank %s: %.4f", format_number(rank).c_str(), captured);
  o.css_class = "spectrum cumulative";
  s += report::line_chart({{"U_A", cumulative_fraction(eig), report::palette_color(0)}}, o);
  s += "<p>U_A variance captured at rank " + html_escape(format_number(rank)) + ": " + html_escape(strprintf("%.4f", captured)) + "</p>";
  s += family_block("U_B", at_key(sp, "U_B"), "values, per layer and KV head");
  s += family_block("U_C", at_key(sp, "U_C"), "keys after RoPE, per layer and KV head");
  return s + "</section>";
}

std::string gptq_section(const json& quantize) {
  std::string s = "<section id=\"gptq\"><h2>Weight quantization error per layer and site</h2>";
  const json& errors = at_key(quantize, "weight_relative_error");
  if (!errors.is_array() || errors.empty()) {
    return s + absent(quantize.is_object() ? "No weight quantization in this recipe."
                                           : "The per-layer errors are in the quantize report only: give `resq quantize --json` output.") +
           "</section>";
  }
  std::vector<std::string> rows, cols(std::begin(kSites), std::end(kSites));
  std::vector<std::vector<double>> values;
  for (const auto& e : errors) {
    rows.push_back("layer " + text_of(at_key(e, "layer")));
    std::vector<double> r;
    for (const char* site : kSites) r.push_back(number_or_nan(at_key(e, site)));
    values.push_back(r);
  }
  const std::string method = text_of(at_key(at_key(at_key(quantize, "recipe"), "weights"), "method"));
  s += "<p>Relative Frobenius error ‖Ŵ − W‖ / ‖W‖ of each linear's quantized weights (" + html_escape(method) +
       ", after the rotations are fused).</p>";
  report::HeatmapOptions o;
  o.title = "relative weight error (" + method + ")";
  o.css_class = "gptq-error";
  o.value_label = "relative error";
  s += report::heatmap(rows, cols, values, o);
  return s + "</section>";
}

std::string json_table(const json& j) {
  if (!j.is_object() || j.empty()) return absent("none recorded");
  std::string s = "<table class=\"kv\">";
  for (auto it = j.begin(); it != j.end(); ++it) {
    s += table_row({html_escape(it.key()), "<code>" + html_escape(it->is_string() ? it->get<std::string>() : it->dump()) + "</code>"});
  }
  return s + "</table>";
}

std::string recipe_section(const json& quantize, const json& config) {
  const json& recipe = quantize.is_object() && quantize.contains("recipe") ? quantize["recipe"] : at_key(config, "recipe");
  const json& prov = quantize.is_object() && quantize.contains("provenance") ? quantize["provenance"] : at_key(config, "provenance");
  std::string s = "<section id=\"recipe\"><h2>Recipe and provenance</h2><h3>Recipe</h3>";
  s += recipe.is_object() ? "<pre>" + html_escape(recipe.dump(2)) + "</pre>" : absent("no recipe recorded");
  s += "<h3>Provenance</h3>" + json_table(prov);
  const json& stages = at_key(quantize, "stages");
  if (stages.is_object()) s += "<h3>Stages (seconds)</h3>" + json_table(stages);
  return s + "</section>";
}

std::string eval_section(const std::vector<json>& evals) {
  std::string s = "<section id=\"eval\"><h2>Evaluation</h2>";
  if (evals.empty()) return s + absent("No eval results given (`resq report ... --eval-json EVAL.json`).") + "</section>";
  std::string rows = table_row({"model", "mode", "data", "windows x seqlen", "ppl", "Δppl vs fp", "KL(fp‖model)", "top-1 agreement"}, true);
  std::vector<report::Bar> bars;
  for (const json& e : evals) {
    std::vector<json> models;
    if (e.contains("models") && e["models"].is_array()) {
      for (const auto& m : e["models"]) models.push_back(m);
    } else {
      models.push_back(e);
    }
    for (const json& m : models) {
      const json& cmp = at_key(m, "comparison");
      const double ppl = number_or_nan(at_key(m, "ppl"));
      rows += table_row({html_escape(text_of(at_key(m, "model"))), html_escape(text_of(at_key(m, "mode"))),
                         html_escape(text_of(at_key(e, "data"))),
                         html_escape(text_of(at_key(m, "num_windows")) + " x " + text_of(at_key(m, "seqlen"))),
                         html_escape(strprintf("%.4f ± %.4f", ppl, number_or_nan(at_key(m, "ppl_stderr")))),
                         cmp.is_object() ? html_escape(strprintf("%+.4f", number_or_nan(cmp["delta_ppl"]))) : "-",
                         cmp.is_object() ? html_escape(strprintf("%.6f ± %.6f", number_or_nan(cmp["kl"]), number_or_nan(cmp["kl_stderr"]))) : "-",
                         cmp.is_object() ? html_escape(strprintf("%.4f", number_or_nan(cmp["top1_agreement"]))) : "-"});
      bars.push_back({text_of(at_key(m, "model")).substr(0, 24), ppl, strprintf("ppl %.4f", ppl), report::palette_color(bars.size())});
    }
  }
  s += report::bar_chart(bars, "perplexity (lower is better)", "eval-ppl");
  return s + "<table>" + rows + "</table></section>";
}

const char* kStyle =
    "body{font-family:sans-serif;margin:24px;color:#222;max-width:1150px}h1{font-size:22px}h2{font-size:18px;"
    "border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}table{border-collapse:collapse;margin:8px 0}"
    "td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:left}th{background:#f0f0f0}"
    "table.kv td:first-child{color:#555}pre{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto}"
    ".absent{color:#888;font-style:italic}svg.chart{display:inline-block;vertical-align:top;margin:10px 16px 10px 0;font-family:sans-serif;font-size:11px}"
    "code{font-size:12px}";

}  // namespace

ReportInputs load_report_inputs(const std::string& path) {
  ReportInputs in;
  in.source = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    const format::PackedCheckpoint ck = format::PackedCheckpoint::open(path);
    in.checkpoint = ck.meta().to_json();
    in.sizes = ck.sizes().to_json();
    in.sizes["dir"] = path;
    return in;
  }
  json j = parse_json(read_file(path, "quantize report"), path);
  if (!j.is_object() || !j.contains("bits") || !j.contains("checkpoint")) {
    throw UsageError(path + ": not a `resq quantize --json` report (no \"bits\" and \"checkpoint\"); give that report or a "
                     "checkpoint directory");
  }
  in.quantize = std::move(j);
  return in;
}

std::string render_report_html(const ReportInputs& in) {
  const json& config = in.checkpoint.is_object() ? in.checkpoint : at_key(in.quantize, "resq_config");
  const json& sizes = in.sizes.is_object() ? in.sizes : at_key(in.quantize, "checkpoint");
  const json& recipe = in.quantize.is_object() && in.quantize.contains("recipe") ? in.quantize["recipe"] : at_key(config, "recipe");
  const std::string title = "resq report: " + text_of(at_key(recipe, "name")) + " — " + text_of(at_key(sizes, "dir"));
  std::string s = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + html_escape(title) +
                  "</title><style>" + kStyle + "</style></head><body>\n";
  s += "<h1>" + html_escape(title) + "</h1><p>Made by resq " + html_escape(RESQ_VERSION) + " from " + html_escape(in.source) +
       ". Self-contained: no script, no network.</p>\n";
  s += summary_section(in, config, sizes) + "\n";
  s += eval_section(in.evals) + "\n";
  s += spectra_section(in.quantize) + "\n";
  s += gptq_section(in.quantize) + "\n";
  s += sites_section(config) + "\n";
  s += budget_section(sizes) + "\n";
  s += recipe_section(in.quantize, config) + "\n";
  return s + "</body></html>\n";
}

void write_report_html(const std::string& path, const ReportInputs& in) {
  write_file_atomically(path, render_report_html(in), "HTML report");
}

}  // namespace resq
