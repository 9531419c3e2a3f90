// CPU GEMM benchmark: packed W4A4+W8A8 (activation quantization included) vs libtorch matmul.
#include "resq/bench/cpu_gemm_bench.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "cpu/features.h"
#include "cpu/gemm.h"
#include "cpu/quantize.h"
#include "resq/common/error.h"

namespace resq {
namespace {

std::vector<LayerShape> all_shapes() {
  // {model, hidden, ffn, q_size, kv_size}
  struct M {
    const char* name;
    int64_t d, ffn, q, kv;
  };
  const M models[] = {{"llama-3.2-1b", 2048, 8192, 2048, 512},
                      {"llama-3-8b", 4096, 14336, 4096, 1024},
                      {"llama-2-7b", 4096, 11008, 4096, 4096},
                      {"qwen2.5-7b", 3584, 18944, 3584, 512}};
  std::vector<LayerShape> out;
  for (const auto& m : models) {
    out.push_back({m.name, "qkv", m.q + 2 * m.kv, m.d, m.d / 8});
    out.push_back({m.name, "o", m.d, m.q, m.q / 8});
    out.push_back({m.name, "gate_up", 2 * m.ffn, m.d, m.d / 8});
    out.push_back({m.name, "down", m.d, m.ffn, 0});
  }
  return out;
}

// Median wall time in microseconds of fn() over `repeats` calls after `warmup` calls.
template <typename Fn>
double median_us(int warmup, int repeats, Fn&& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    const auto a = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

std::vector<LayerShape> bench_layer_shapes(const std::vector<std::string>& models) {
  const auto shapes = all_shapes();
  if (models.empty()) return shapes;
  std::vector<LayerShape> out;
  for (const auto& name : models) {
    bool found = false;
    for (const auto& s : shapes) {
      if (s.model == name) {
        out.push_back(s);
        found = true;
      }
    }
    if (!found) {
      throw UsageError("--models: unknown model '" + name + "' (known: llama-3.2-1b, llama-3-8b, llama-2-7b, qwen2.5-7b)");
    }
  }
  return out;
}

nlohmann::json run_cpu_gemm_bench(const CpuBenchOptions& o, void (*on_row)(const nlohmann::json&)) {
  if (o.repeats < 1 || o.warmup < 0) throw UsageError("--repeats must be >= 1 and --warmup >= 0");
  for (int64_t m : o.ms) {
    if (m < 1) throw UsageError("--m values must be >= 1, got " + std::to_string(m));
  }
  const auto kernel = cpu::resolve_cpu_kernel(cpu::CpuKernel::kAuto);
  nlohmann::json result = {{"device", "cpu: " + cpu::cpu_features_string()},
                           {"threads", at::get_num_threads()},
                           {"build_type", RESQ_BUILD_TYPE},
                           {"kernel", cpu::cpu_kernel_name(kernel)},
                           {"warmup", o.warmup},
                           {"repeats", o.repeats},
                           {"rows", nlohmann::json::array()}};
  c10::NoGradGuard no_grad;
  std::mt19937 rng(static_cast<uint32_t>(o.seed));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const LayerShape& s : bench_layer_shapes(o.models)) {
    // Weights [N, K] float32 -> packed (RTN); the same float weights feed the libtorch baselines.
    at::Tensor w = at::randn({s.N, s.K}, at::TensorOptions().dtype(at::kFloat)).mul_(0.02);
    const format::PackedLinearDims dims{s.N, s.K - s.K8, s.K8};
    const format::PackedLinear packed = cpu::quantize_linear_rtn(w.data_ptr<float>(), nullptr, dims);
    at::Tensor w_bf16 = o.bf16_baseline ? w.to(at::kBFloat16) : at::Tensor();
    for (int64_t M : o.ms) {
      at::Tensor x = at::randn({M, s.K}, at::TensorOptions().dtype(at::kFloat));
      at::Tensor x_bf16 = o.bf16_baseline ? x.to(at::kBFloat16) : at::Tensor();
      std::vector<float> y(static_cast<size_t>(M * s.N));
      const double flops = 2.0 * static_cast<double>(M) * s.N * s.K;
      const double t_fp32 = median_us(o.warmup, o.repeats, [&] { at::Tensor r = at::matmul(x, w.t()); });
      auto row = [&](const std::string& backend, double us) {
        nlohmann::json r = {{"backend", backend}, {"model", s.model}, {"layer", s.layer}, {"M", M},
                            {"N", s.N}, {"K", s.K}, {"K8", s.K8}, {"us", us}, {"gops", flops / us * 1e-3},
                            {"speedup", t_fp32 / us}};
        result["rows"].push_back(r);
        if (on_row) on_row(r);
      };
      row("torch-fp32", t_fp32);
      if (o.bf16_baseline) {
        row("torch-bf16", median_us(o.warmup, o.repeats, [&] { at::Tensor r = at::matmul(x_bf16, w_bf16.t()); }));
      }
      // Ours: dynamic per-token activation quantization (fp32 -> packed 4/8) + integer GEMM + epilogue.
      const float* xp = x.data_ptr<float>();
      row(std::string("resq-w4a4w8a8-") + cpu::cpu_kernel_name(kernel), median_us(o.warmup, o.repeats, [&] {
            const cpu::QuantizedActivations q = cpu::quantize_activations(xp, M, dims.K4, dims.K8);
            cpu::gemm_w4a4_w8a8(q.view(), packed.view(), y.data(), kernel);
          }));
    }
  }
  return result;
}

}  // namespace resq
