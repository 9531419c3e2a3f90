// `resq report`: the self-contained HTML report of a quantization, from a quantize --json report or a
// packed checkpoint directory, with eval results when given.
#include <cstdio>
#include <memory>

#include "common.h"
#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/json_fields.h"
#include "resq/common/log.h"
#include "resq/report/html_report.h"

namespace resq::tools {
namespace {

struct ReportOptions {
  std::string input;
  std::string out;
  std::vector<std::string> eval_json;
  std::string log_level = "info";
};

void run_report(const ReportOptions& o) {
  log::set_level(o.log_level);
  check_output_file_writable(o.out, "--out");
  ReportInputs in = load_report_inputs(o.input);
  for (const std::string& path : o.eval_json) {
    nlohmann::json e = parse_json(read_file(path, "eval report"), path);
    if (!e.is_object() || !e.contains("ppl")) {
      throw UsageError("--eval-json " + path + ": not a `resq eval --json` report (no \"ppl\")");
    }
    in.evals.push_back(std::move(e));
  }
  write_report_html(o.out, in);
  std::printf("wrote %s\n", o.out.c_str());
}

}  // namespace

void register_report(CLI::App& app) {
  auto o = std::make_shared<ReportOptions>();
  auto* cmd = app.add_subcommand("report", "write a self-contained HTML report (spectra, GPTQ errors, bits, eval) of a quantization");
  cmd->add_option("input", o->input, "a `resq quantize --json` report (everything) or a packed checkpoint directory (bits and sizes)")
      ->required();
  cmd->add_option("--out", o->out, "HTML file to write")->required();
  cmd->add_option("--eval-json", o->eval_json, "`resq eval --json` results to include (repeatable)");
  cmd->add_option("--log-level", o->log_level, "log level")->capture_default_str();
  cmd->footer("Example:\n  resq quantize --model models/stories260K --config resq --calib valid.txt --out st-resq --json st-resq.json\n"
              "  resq eval --model st-resq --kl-base models/stories260K --data valid.txt --json st-eval.json\n"
              "  resq report st-resq.json --eval-json st-eval.json --out st-resq.html");
  cmd->callback([o] { run_report(*o); });
}

}  // namespace resq::tools
