// Where the pipeline computes and its memory (pipeline_parts.h): the compute plan (device, generic
// torch paths, product precision), RSS / heap / device notes for the progress lines, glibc malloc
// tuning and the per-layer heap trim.
#include <malloc.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <limits>

#include <ATen/Context.h>

#include "pipeline_parts.h"
#include "resq/common/env.h"
#include "resq/common/error.h"
#include "resq/common/log.h"
#include "resq/model/device.h"

namespace resq::pipeline {

// ---------------------------------------------------------------------------- compute plan

const char* products_name(Products p) {
  switch (p) {
    case Products::kBf16: return "bf16";
    case Products::kTf32: return "tf32";
    default: return "fp32";
  }
}

ComputePlan make_compute_plan(const at::Device& device, int64_t hidden) {
  ComputePlan plan;
  plan.device = device;
  plan.generic = env_switch("RESQ_QUANTIZE_GENERIC", false) || !device.is_cpu();  // the switch is always validated
  // Calibration and GPTQ forward passes in reduced-precision products with float32 accumulation for
  // models with hidden size >= 1024, where those passes dominate the run (CPU bf16: ~5x faster than
  // float32, docs/PERF.md; CUDA TF32: tensor cores instead of the FP32 units); the weights themselves
  // (fusion, GPTQ, what is written) stay float32/float64 either way. Smaller models take seconds and
  // keep the float32 reference products.
  const bool reduced = hidden >= 1024;
  plan.products = !reduced ? Products::kFp32 : device.is_cpu() ? Products::kBf16 : Products::kTf32;
  if (const char* env = std::getenv("RESQ_QUANTIZE_PRODUCTS")) {
    const std::string v(env);
    if (v == "fp32") {
      plan.products = Products::kFp32;
    } else if (v == "bf16" && device.is_cpu()) {
      plan.products = Products::kBf16;
    } else if (v == "tf32" && device.is_cuda()) {
      plan.products = Products::kTf32;
    } else {
      throw UsageError("RESQ_QUANTIZE_PRODUCTS: expected fp32, or bf16 on the CPU, or tf32 on CUDA; got '" + v +
                       "' for --device " + device.str());
    }
  }
  if (plan.products == Products::kBf16 && plan.generic) plan.products = Products::kFp32;  // bf16 is oneDNN's, not generic
  return plan;
}

DeviceMemoryEstimate estimate_device_memory(const ModelConfig& c, int64_t nsamples, int64_t seqlen, int64_t chunk,
                                            const ComputePlan& plan, int64_t global_bytes_per_element) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  const double d = static_cast<double>(c.hidden_size), ffn = static_cast<double>(c.intermediate_size);
  const double q = static_cast<double>(c.q_size()), kv = static_cast<double>(c.kv_size());
  const double layer_params = d * q + 2 * d * kv + q * d + 3 * d * ffn;
  const double widest = std::max({d * ffn, d * q});
  const double k_max = std::max({d, q, ffn});
  DeviceMemoryEstimate e;
  e.hidden_gib = static_cast<double>(nsamples) * seqlen * d * 4 / kGiB;
  e.layer_gib = (layer_params * 4 + 2 * widest * 8) / kGiB;  // float32 layer + float64 fusion temporaries
  const double per_element = plan.products == Products::kTf32 ? 12.0 : 8.0;  // float64 sum (+ float32 partial)
  e.statistics_gib = (2 * d * d + q * q + ffn * ffn) * per_element / kGiB;  // q and gate (d), o (q), down (ffn)
  e.calibration_gram_gib = d * d * per_element / kGiB;
  // Factorization beside the Hessian (its own buffer serves as the workspace on its last use):
  // J H J, L and L⁻¹ in float64, then U in float32, and the W/Q/D copies.
  e.gptq_gib = (3 * k_max * k_max * 8 + k_max * k_max * 4 + 3 * widest * 4) / kGiB;
  e.activations_gib = static_cast<double>(chunk) * seqlen * std::max(d, ffn) * 4 * 5 / kGiB;  // ~5 live [chunk, T, ffn]
  e.globals_gib = 2.0 * static_cast<double>(c.vocab_size) * d * static_cast<double>(global_bytes_per_element) / kGiB;
  return e;
}

Tf32Scope::Tf32Scope(bool enable) : previous_(at::globalContext().allowTF32CuBLAS()), enabled_(enable) {
  if (enabled_) at::globalContext().setAllowTF32CuBLAS(true);
}

Tf32Scope::~Tf32Scope() {
  if (enabled_) at::globalContext().setAllowTF32CuBLAS(previous_);
}

// ---------------------------------------------------------------------------- memory

namespace {
at::Device g_note_device(at::kCPU);
}  // namespace

void set_memory_note_device(const at::Device& device) { g_note_device = device; }

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double peak_rss_gib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}

// Current resident set size in GiB (VmRSS of /proc/self/status; 0 where it cannot be read). Logged
// with every progress line so that the stage that sets the peak is visible.
namespace {
double current_rss_gib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / (1024.0 * 1024.0);
  }
  return 0.0;
}

}  // namespace

// detail: also glibc's heap size, the part of it in use, and mmap()ed blocks (fragmentation shows
// as a heap that grows while its in-use part does not).
std::string memory_note(bool detail) {
  std::string note = strprintf("RSS %.2f GiB (peak %.2f)", current_rss_gib(), peak_rss_gib());
  const std::string dev = device_memory_note(g_note_device);
  if (!dev.empty()) note += ", " + dev;
  if (detail) {
    const struct mallinfo2 mi = ::mallinfo2();
    note += strprintf(", heap %.2f GiB of which %.2f in use, mmap %.2f", mi.arena / 1073741824.0,
                      mi.uordblks / 1073741824.0, mi.hblkhd / 1073741824.0);
  }
  return note;
}

// End of a layer: hand the heap's free pages back to the OS. Without it the heap's resident size
// only grows (fragmentation: measured +0.15 GiB per layer at 1B scale, ~+0.9 GiB over 16 layers)
// because the pipeline disables glibc's automatic trimming (see quantize_model). Re-faulting the
// pages in the next layer costs ~1 s per layer (3.5 s per GiB on this VM).
void release_free_heap() { ::malloc_trim(0); }

// Keep every buffer up to 32 MiB (glibc's maximum) on the heap and never trim it: freshly mmap()ed
// buffers page-fault on first touch, which on this VM costs more than the arithmetic done in them
// (measured 30x on [2048, 8192] float32 temporaries). Big buffers (hidden states, Hessians) are
// allocated once and reused instead. Process-wide, which suits the CLI that runs this. The free
// heap is trimmed explicitly once per layer (release_free_heap).
void tune_malloc_for_pipeline() {
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
}

}  // namespace resq::pipeline
