// `resq bench`: GEMM benchmarks. `--cpu`: the packed W4A4+W8A8 CPU kernels vs libtorch matmul.
// (The CUDA benchmark against cuBLAS comes with the CUDA kernels.)
#include <ATen/Parallel.h>

#include <cstdio>
#include <memory>

#include "common.h"
#include "resq/bench/cpu_gemm_bench.h"
#include "resq/common/error.h"

namespace resq::tools {
namespace {

struct BenchOptions {
  CommonOptions common;
  bool cpu = false;
  CpuBenchOptions bench;
  bool no_bf16 = false;
};

void print_row(const nlohmann::json& r) {
  std::printf("%-13s %-8s %5lld %6lld %6lld | %-22s | %12.1f | %8.1f | %7.2fx\n", r["model"].get<std::string>().c_str(),
              r["layer"].get<std::string>().c_str(), static_cast<long long>(r["M"].get<int64_t>()),
              static_cast<long long>(r["N"].get<int64_t>()), static_cast<long long>(r["K"].get<int64_t>()),
              r["backend"].get<std::string>().c_str(), r["us"].get<double>(), r["gops"].get<double>(),
              r["speedup"].get<double>());
  std::fflush(stdout);
}

void run_bench(BenchOptions& o) {
  apply_runtime_options(o.common);
  if (!o.cpu) {
    throw UsageError("resq bench: the CUDA benchmark needs the CUDA kernels, which are not built yet; use --cpu");
  }
  o.bench.bf16_baseline = !o.no_bf16;
  o.bench.seed = o.common.seed;
  std::printf("resq bench --cpu | build %s | %d threads | warm-up %d, median of %d repeats\n", RESQ_BUILD_TYPE,
              at::get_num_threads(), o.bench.warmup, o.bench.repeats);
  std::printf("(resq timings include the per-token activation quantization; speedup = libtorch fp32 time / time)\n");
  std::printf("%-13s %-8s %5s %6s %6s | %-22s | %12s | %8s | %s\n", "model", "layer", "M", "N", "K", "backend", "us",
              "GOP/s", "speedup");
  const nlohmann::json result = run_cpu_gemm_bench(o.bench, &print_row);
  std::printf("device: %s, kernel %s\n", result["device"].get<std::string>().c_str(),
              result["kernel"].get<std::string>().c_str());
  if (!o.common.json_out.empty()) write_json_file(o.common.json_out, result);
}

}  // namespace

void register_bench(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  auto* cmd = app.add_subcommand("bench", "GEMM benchmarks (--cpu: packed integer kernels vs libtorch)");
  cmd->add_flag("--cpu", o->cpu, "benchmark the CPU kernels");
  cmd->add_option("--m", o->bench.ms, "token counts M")->capture_default_str();
  cmd->add_option("--models", o->bench.models, "llama-3.2-1b, llama-3-8b, llama-2-7b, qwen2.5-7b (default: all)");
  cmd->add_option("--warmup", o->bench.warmup, "warm-up calls")->capture_default_str();
  cmd->add_option("--repeats", o->bench.repeats, "timed calls (median reported)")->capture_default_str();
  cmd->add_flag("--no-bf16", o->no_bf16, "skip the libtorch bf16 baseline");
  add_seed_option(cmd, o->common, 0);
  cmd->add_option("--threads", o->common.threads, "threads (0 = all cores)");
  cmd->add_option("--log-level", o->common.log_level, "log level")->capture_default_str();
  add_json_option(cmd, o->common);
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace resq::tools
