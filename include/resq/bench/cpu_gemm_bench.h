// CPU benchmark of the packed W4A4+W8A8 GEMM (kernels/cpu) against libtorch fp32/bf16 matmul at
// the linear-layer shapes of real models. Timings are medians over repeats after warm-up.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace resq {

struct LayerShape {
  std::string model;  // e.g. "llama-3-8b"
  std::string layer;  // "qkv", "o", "gate_up", "down"
  int64_t N = 0;      // output features
  int64_t K = 0;      // input features
  int64_t K8 = 0;     // 8-bit input columns (K/8; 0 for down_proj, all 4-bit as in ResQ)
};

// Shapes of Llama-2-7B, Llama-3-8B, Llama-3.2-1B and Qwen2.5-7B (qkv fused, o, gate+up fused, down).
// `models` filters by model name (empty = all); throws UsageError for an unknown name.
std::vector<LayerShape> bench_layer_shapes(const std::vector<std::string>& models);

struct CpuBenchOptions {
  std::vector<int64_t> ms = {1, 16, 512};
  std::vector<std::string> models;  // empty = all
  int warmup = 1;
  int repeats = 5;
  bool bf16_baseline = true;
  uint64_t seed = 0;
};

// Runs every (shape, M) and returns {"device", "threads", "build_type", "cpu_features", "kernel",
// "warmup", "repeats", "rows": [{"backend", "model", "layer", "M", "N", "K", "K8", "us", "gops",
// "speedup"}]} with speedup = libtorch fp32 time / this backend's time on the same shape.
// `on_row` (optional) is called with each row as it is measured (for live printing).
nlohmann::json run_cpu_gemm_bench(const CpuBenchOptions& options,
                                  void (*on_row)(const nlohmann::json& row) = nullptr);

}  // namespace resq
