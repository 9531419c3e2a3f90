// `resq bench`: GEMM benchmarks. `--cpu`: the packed W4A4+W8A8 CPU kernels vs libtorch matmul.
// Default (GPU): the CUDA W4A4+W8A8 kernels vs cuBLASLt bf16 and int8, then one decoder layer's
// prefill (plain-libtorch bf16 layer vs resq's bf16 and packed layers; `--layer` runs only that),
// then whole-model prefill/decode tokens/s (bf16 vs resq packed; `--e2e` runs only that). Needs a
// CUDA build and a device; otherwise a clear error with exit code 2 that points at --cpu.
#include <ATen/Parallel.h>

#include <cstdio>
#include <memory>

#include "common.h"
#include "resq/bench/cpu_gemm_bench.h"
#include "resq/bench/e2e_bench.h"
#include "resq/bench/layer_bench.h"
#include "resq/common/error.h"
#include "resq/cuda/bench.h"

namespace resq::tools {
namespace {

struct BenchOptions {
  CommonOptions common;
  bool cpu = false;
  CpuBenchOptions bench;
  bool no_bf16 = false;
  bool no_int8 = false;
  bool no_flush_l2 = false;
  bool layer_only = false;     // --layer: only the decoder-layer prefill measurement
  int64_t layer_seqlen = 2048;
  bool e2e_only = false;       // --e2e: only the whole-model prefill/decode measurement
  E2eBenchOptions e2e;
  // Set when the flag was given (the GPU benchmark has its own defaults otherwise).
  CLI::Option* m_opt = nullptr;
  CLI::Option* warmup_opt = nullptr;
  CLI::Option* repeats_opt = nullptr;
};

void print_row(const nlohmann::json& r) {
  std::printf("%-13s %-8s %5lld %6lld %6lld | %-22s | %12.1f | %8.1f | %7.2fx\n", r["model"].get<std::string>().c_str(),
              r["layer"].get<std::string>().c_str(), static_cast<long long>(r["M"].get<int64_t>()),
              static_cast<long long>(r["N"].get<int64_t>()), static_cast<long long>(r["K"].get<int64_t>()),
              r["backend"].get<std::string>().c_str(), r["us"].get<double>(), r["gops"].get<double>(),
              r["speedup"].get<double>());
  std::fflush(stdout);
}

struct GpuHeader {
  int warmup = 0;
  int repeats = 0;
  bool flush_l2 = false;
  bool printed = false;
} gpu_header;

void print_gpu_row(const nlohmann::json& r) {
  if (!gpu_header.printed) {
    std::printf("resq bench (GPU) | build %s | warm-up %d, median of %d repeats%s\n", RESQ_BUILD_TYPE,
                gpu_header.warmup, gpu_header.repeats, gpu_header.flush_l2 ? ", L2 flushed before every timed call" : "");
    std::printf("(resq-gemm: pre-quantized activations; resq-quant+gemm: bf16 input quantized on the fly; "
                "bf16 output; speedups = cuBLASLt time / time)\n");
    std::printf("(path: decode = the M <= 16 GEMV, decode-fused = with the activation quantizer inside, tile = the "
                "tile GEMM; %% copy = GB/s over the device-to-device copy's %.0f GB/s)\n",
                r.value("copy_gbps", 0.0));
    std::printf("%-13s %-8s %5s %6s %6s | %-20s | %-12s | %10s | %8s | %8s | %6s | %7s | %7s\n", "model", "layer", "M",
                "N", "K", "backend", "path", "us", "TFLOP/s", "GB/s", "% copy", "vs bf16", "vs int8");
    gpu_header.printed = true;
  }
  auto ratio = [](double v) {
    char buf[32];
    if (v > 0) {
      std::snprintf(buf, sizeof(buf), "%6.2fx", v);
    } else {
      std::snprintf(buf, sizeof(buf), "%7s", "n/a");
    }
    return std::string(buf);
  };
  std::printf("%-13s %-8s %5lld %6lld %6lld | %-20s | %-12s | %10.1f | %8.2f | %8.1f | %5.0f%% | %s | %s\n",
              r["model"].get<std::string>().c_str(), r["layer"].get<std::string>().c_str(),
              static_cast<long long>(r["M"].get<int64_t>()), static_cast<long long>(r["N"].get<int64_t>()),
              static_cast<long long>(r["K"].get<int64_t>()), r["backend"].get<std::string>().c_str(),
              r.value("path", std::string()).c_str(), r["us"].get<double>(), r["tflops"].get<double>(),
              r["gbps"].get<double>(), r.value("pct_of_copy", 0.0),
              ratio(r["speedup_vs_bf16"].get<double>()).c_str(), ratio(r["speedup_vs_int8"].get<double>()).c_str());
  std::fflush(stdout);
}

void print_layer_row(const nlohmann::json& r) {
  static bool header = false;
  if (!header) {
    std::printf("decoder-layer prefill (x [1, seqlen, d] bf16; warm-up %d, median of %d; plain-torch: at::linear + "
                "SDPA layer (libtorch %s, attention %s); resq: Decoder::run_layer; speedups = plain-torch us / us; "
                "linears = the seven linears alone at M = seqlen, resq: quantize + GEMM)\n",
                gpu_header.warmup, gpu_header.repeats, r["libtorch"].get<std::string>().c_str(),
                r["plain_attention"].get<std::string>().c_str());
    std::printf("%-13s | %6s | %14s | %12s | %14s | %10s | %12s | %16s | %16s\n", "model", "seqlen", "plain-torch us",
                "resq bf16 us", "resq packed us", "bf16/plain", "packed/plain", "bf16 linears us", "resq linears us");
    header = true;
  }
  std::printf("%-13s | %6lld | %14.1f | %12.1f | %14.1f | %9.2fx | %11.2fx | %16.1f | %16.1f\n",
              r["model"].get<std::string>().c_str(), static_cast<long long>(r["seqlen"].get<int64_t>()),
              r["plain_us"].get<double>(), r["bf16_us"].get<double>(), r["resq_us"].get<double>(),
              r["bf16_vs_plain"].get<double>(), r["packed_vs_plain"].get<double>(), r["bf16_linears_us"].get<double>(),
              r["resq_linears_us"].get<double>());
  std::fflush(stdout);
}

// The e2e table: one line per (model, path); decode columns follow --e2e-batches.
void print_e2e_row(const nlohmann::json& r) {
  static bool header = false;
  const auto& decode = r["decode"];
  if (!header) {
    std::printf("end-to-end (DecodeSession; prefill: one sequence of %lld tokens in one step; decode: greedy "
                "single-token steps after a %lld-token prompt; median wall time, device-synchronized)\n",
                static_cast<long long>(r["prefill_tokens"].get<int64_t>()),
                static_cast<long long>(r["prompt_tokens"].get<int64_t>()));
    std::printf("%-13s | %6s | %-11s | %13s", "model", "layers", "path", "prefill tok/s");
    for (const auto& d : decode) {
      const std::string title = "decode tok/s b=" + std::to_string(d["batch"].get<int64_t>());
      std::printf(" | %17s", title.c_str());
    }
    std::printf(" | speedup vs bf16 (prefill");
    for (const auto& d : decode) std::printf(" / b=%lld", static_cast<long long>(d["batch"].get<int64_t>()));
    std::printf(")\n");
    header = true;
  }
  std::printf("%-13s | %6lld | %-11s | %13.1f", r["model"].get<std::string>().c_str(),
              static_cast<long long>(r["layers"].get<int64_t>()), r["path"].get<std::string>().c_str(),
              r["prefill_tok_s"].get<double>());
  for (const auto& d : decode) std::printf(" | %17.1f", d["tok_s"].get<double>());
  std::printf(" | %.2fx", r["prefill_speedup_vs_bf16"].get<double>());
  for (const auto& d : decode) std::printf(" / %.2fx", d["speedup_vs_bf16"].get<double>());
  std::printf("\n");
  std::fflush(stdout);
}

// The decoder-layer prefill table; its rows go into `result` as "layer_prefill".
void run_layer_bench(const BenchOptions& o, int warmup, int repeats, nlohmann::json& result) {
  LayerBenchOptions l;
  l.models = o.bench.models;
  l.seqlen = o.layer_seqlen;
  l.warmup = warmup;
  l.repeats = repeats;
  l.seed = o.common.seed;
  const nlohmann::json layer = run_layer_prefill_bench(l, &print_layer_row);
  for (const char* key : {"device", "sm", "build_type"}) {
    if (!result.contains(key)) result[key] = layer[key];
  }
  result["libtorch"] = layer["libtorch"];
  result["layer_seqlen"] = layer["seqlen"];
  result["layer_plain_attention"] = layer["plain_attention"];
  result["layer_prefill"] = layer["layer_prefill"];
}

// The end-to-end table; its report goes into `result` as "e2e". Warm-up / repeats: the flags when
// given, else 1 / 3 (a run is a whole prefill or 128 decode steps of a full model, not one call).
void run_e2e(BenchOptions& o, nlohmann::json& result) {
  E2eBenchOptions e = o.e2e;
  e.models = o.bench.models;
  e.seed = o.common.seed;
  e.device = "cuda";
  if (o.warmup_opt->count() > 0) e.warmup = o.bench.warmup;
  if (o.repeats_opt->count() > 0) e.repeats = o.bench.repeats;
  const nlohmann::json r = run_e2e_bench(e, &print_e2e_row);
  std::printf("(e2e: warm-up %d, median of %d runs; weights: %s; model build s:", r["warmup"].get<int>(),
              r["repeats"].get<int>(), r["weights"].get<std::string>().c_str());
  for (const auto& row : r["rows"]) {
    std::printf(" %s %s %.1f;", row["model"].get<std::string>().c_str(), row["path"].get<std::string>().c_str(),
                row["build_s"].get<double>());
  }
  std::printf(")\n");
  for (const char* key : {"device", "sm", "build_type", "libtorch"}) {
    if (!result.contains(key)) result[key] = r[key];
  }
  result["e2e"] = r;
}

void run_gpu_bench(BenchOptions& o) {
  CudaBenchOptions b;
  if (o.m_opt->count() > 0) b.ms = o.bench.ms;
  if (o.warmup_opt->count() > 0) b.warmup = o.bench.warmup;
  if (o.repeats_opt->count() > 0) b.repeats = o.bench.repeats;
  b.models = o.bench.models;
  b.seed = o.common.seed;
  b.int8_baseline = !o.no_int8;
  b.flush_l2 = !o.no_flush_l2;
  // Column titles come with the first row, so that a missing device fails before any output.
  gpu_header = {b.warmup, b.repeats, b.flush_l2, false};
  // The report is written after every section, so a later section that fails (or is killed by a
  // caller's timeout) leaves the earlier ones on disk.
  auto save = [&](const nlohmann::json& result) {
    if (!o.common.json_out.empty()) write_json_file(o.common.json_out, result);
  };
  if (o.layer_only || o.e2e_only) {
    nlohmann::json result = nlohmann::json::object();
    if (o.layer_only) {
      run_layer_bench(o, b.warmup, b.repeats, result);
      save(result);
    }
    if (o.e2e_only) {
      run_e2e(o, result);
      save(result);
    }
    std::printf("device: %s (%s), libtorch %s, build %s\n", result["device"].get<std::string>().c_str(),
                result["sm"].get<std::string>().c_str(), result["libtorch"].get<std::string>().c_str(), RESQ_BUILD_TYPE);
    return;
  }
  nlohmann::json result = run_cuda_gemm_bench(b, &print_gpu_row);
  std::printf("device: %s (%s, %d SMs, %d MHz, memory %d MHz, L2 %d bytes), CUDA runtime %d, kernel path: %s; "
              "%s; device-to-device copy %.0f GB/s\n",
              result["device"].get<std::string>().c_str(), result["sm"].get<std::string>().c_str(),
              result["sm_count"].get<int>(), result["clock_mhz"].get<int>(), result["mem_clock_mhz"].get<int>(),
              result["l2_bytes"].get<int>(), result["cuda_runtime"].get<int>(),
              result["gemm_path"].get<std::string>().c_str(), result.value("decode_path", std::string()).c_str(),
              result.value("copy_gbps", 0.0));
  save(result);
  run_layer_bench(o, b.warmup, b.repeats, result);
  save(result);
  run_e2e(o, result);
  save(result);
}

void run_bench(BenchOptions& o) {
  apply_runtime_options(o.common);
  if (o.cpu && (o.layer_only || o.e2e_only)) {
    throw UsageError(std::string("resq bench: ") + (o.layer_only ? "--layer" : "--e2e") +
                     " is a GPU measurement; it cannot be combined with --cpu");
  }
  if (!o.cpu) {
    run_gpu_bench(o);
    return;
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
  auto* cmd = app.add_subcommand(
      "bench", "GEMM benchmarks (default: CUDA kernels vs cuBLASLt; --cpu: packed integer kernels vs libtorch)");
  cmd->add_flag("--cpu", o->cpu, "benchmark the CPU kernels");
  o->m_opt = cmd->add_option("--m", o->bench.ms, "token counts M (GPU default: 1 16 128 2048 4096)")
                 ->capture_default_str();
  cmd->add_option("--models", o->bench.models,
                  "llama-3.2-1b, llama-3-8b, llama-2-7b, qwen2.5-7b (default: all; --layer / --e2e: llama-3-8b)");
  o->warmup_opt = cmd->add_option("--warmup", o->bench.warmup, "warm-up calls (GPU default: 3; --e2e: 1)")->capture_default_str();
  o->repeats_opt =
      cmd->add_option("--repeats", o->bench.repeats, "timed calls, median reported (GPU default: 20; --e2e: 3)")
          ->capture_default_str();
  cmd->add_flag("--no-bf16", o->no_bf16, "skip the libtorch bf16 baseline (--cpu)");
  cmd->add_flag("--no-int8", o->no_int8, "skip the cuBLASLt int8 baseline (GPU)");
  cmd->add_flag("--no-flush-l2", o->no_flush_l2, "do not flush L2 between timed calls (GPU)");
  cmd->add_flag("--layer", o->layer_only,
                "GPU: only the decoder-layer prefill measurement (plain-libtorch bf16 layer vs resq bf16 and "
                "resq packed layers; --models default llama-3-8b)");
  cmd->add_option("--layer-seqlen", o->layer_seqlen, "tokens of the decoder-layer prefill (GPU)")->capture_default_str();
  cmd->add_flag("--e2e", o->e2e_only,
                "GPU: only the end-to-end measurement (whole random model, bf16 vs resq packed: prefill and "
                "greedy decode tokens/s; --models default llama-3-8b)");
  cmd->add_option("--e2e-layers", o->e2e.layers, "layers of the e2e models (0 = the shape's own count)")
      ->capture_default_str();
  cmd->add_option("--e2e-prefill", o->e2e.prefill, "tokens of the e2e prefill (one sequence)")->capture_default_str();
  cmd->add_option("--e2e-prompt", o->e2e.prompt, "prompt tokens before the e2e decode steps")->capture_default_str();
  cmd->add_option("--e2e-new-tokens", o->e2e.new_tokens, "timed greedy decode steps (e2e)")->capture_default_str();
  cmd->add_option("--e2e-batches", o->e2e.batches, "decode batch sizes (e2e)")->capture_default_str();
  add_seed_option(cmd, o->common, 0);
  cmd->add_option("--threads", o->common.threads, "threads (0 = all cores)");
  cmd->add_option("--log-level", o->common.log_level, "log level")->capture_default_str();
  add_json_option(cmd, o->common);
  cmd->footer("Example:\n  resq bench --cpu --models llama-3.2-1b --json bench.json");
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace resq::tools
