// Options shared by every subcommand (declared once here) and small helpers for the tools.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace resq::tools {

struct CommonOptions {
  std::string model;             // --model DIR
  std::string device = "cpu";    // --device cpu|cuda
  std::string dtype = "float32"; // --dtype float32|bfloat16|float64
  int threads = 0;               // --threads (0 = all cores)
  uint64_t seed = 0;             // --seed
  std::string log_level = "info";// --log-level
  std::string json_out;          // --json FILE
};

// Each adds the named shared options to a subcommand.
void add_model_option(CLI::App* cmd, CommonOptions& o, bool required = true);
// --device (parsed by resolve_device, resq/model/device.h), default `default_device`.
void add_device_option(CLI::App* cmd, CommonOptions& o, const std::string& default_device);
void add_runtime_options(CLI::App* cmd, CommonOptions& o);  // --device --dtype --threads --log-level
void add_seed_option(CLI::App* cmd, CommonOptions& o, uint64_t default_seed);
void add_json_option(CLI::App* cmd, CommonOptions& o);

// Applies --threads and --log-level and checks that --json can be written (call first thing in a
// subcommand: every usage error is found before any work).
void apply_runtime_options(const CommonOptions& o);

// Writes JSON to `path` atomically and durably (common/file.h write_file_atomically). Throws IoError.
void write_json_file(const std::string& path, const nlohmann::json& value);

// Registration of each subcommand (one file each under tools/).
void register_eval(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_make_model(CLI::App& app);
void register_demo(CLI::App& app);
void register_quantize(CLI::App& app);
void register_bench(CLI::App& app);
void register_inspect(CLI::App& app);
void register_generate(CLI::App& app);
void register_report(CLI::App& app);
void register_export(CLI::App& app);

// Version banner for `resq --version`.
std::string version_text();

}  // namespace resq::tools
