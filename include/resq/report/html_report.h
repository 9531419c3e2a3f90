// `resq report`: one self-contained HTML file (inline SVG and CSS, no script, no network) showing what
// quantization did: PCA eigenvalue spectra and variance captured at the 8-bit rank per subspace,
// per-layer/per-site GPTQ error, bits per site and the size budget, recipe and provenance, and eval
// results when given. Torch-free; reads the JSON that `quantize --json`, resq_config.json and
// `eval --json` write.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace resq {

struct ReportInputs {
  // The `resq quantize --json` report (null when absent): spectra, weight_relative_error, bits,
  // checkpoint sizes, recipe, provenance, resq_config.
  nlohmann::json quantize;
  // resq_config.json of the checkpoint (null: taken from quantize["resq_config"] when there).
  nlohmann::json checkpoint;
  // Checkpoint sizes as quantize reports them under "checkpoint" (null: from quantize).
  nlohmann::json sizes;
  // `resq eval --json` results, one per file given (may be empty).
  std::vector<nlohmann::json> evals;
  std::string source;  // what the report was made from (shown in the header)
};

// A checkpoint directory (resq_config.json + sizes of its files; no spectra or GPTQ errors: those
// are in the quantize report only) or a `quantize --json` report file. Throws IoError/FormatError
// naming the path; UsageError when a JSON file is not a quantize report.
ReportInputs load_report_inputs(const std::string& checkpoint_or_json);

// The HTML text. Sections whose data is absent say so instead of being left out.
std::string render_report_html(const ReportInputs& inputs);

// render_report_html written to `path` atomically (temporary file, then rename).
void write_report_html(const std::string& path, const ReportInputs& inputs);

}  // namespace resq
