// End-to-end generation benchmark of `resq bench --e2e` (e2e_bench.h): whole random models built by
// build_bench_layer, bf16 vs resq packed, prefill and greedy decode tokens/s through DecodeSession.
#include "resq/bench/e2e_bench.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <thread>

#include "resq/bench/plain_layer.h"
#include "resq/common/error.h"
#include "resq/linalg/random.h"
#include "resq/model/decoder.h"
#include "resq/model/synthetic.h"
#include "resq/runtime/backend.h"
#include "resq/runtime/generate.h"

namespace resq {

Decoder make_bench_model(const ModelConfig& config, BenchLayerKind kind, uint64_t seed, const std::string& device,
                         const BenchBuildOptions& o, int threads) {
  const at::Device dev(device);
  (void)bench_layer_site_specs(config);  // shape errors before any allocation
  const at::ScalarType dtype = parse_compute_dtype(o.dtype);
  Decoder m(config, dtype, dev);
  const int64_t V = config.vocab_size, d = config.hidden_size;
  auto random_matrix = [&](const char* tag) {  // [V, d] N(0, 0.02^2) in the compute dtype on dev
    at::Generator gen = bench_generator(o.draw_device, Rng::derive_seed(seed, tag));
    return at::randn({V, d}, gen, at::TensorOptions().dtype(at::kFloat).device(at::Device(o.draw_device)))
        .mul_(0.02)
        .to(dev, dtype);
  };
  m.embed_weight = random_matrix("bench_model_embed");
  m.lm_head = std::make_shared<DenseLinear>(config.tie_word_embeddings ? m.embed_weight : random_matrix("bench_model_lm_head"),
                                            at::Tensor());
  m.final_norm_weight = at::ones({d}, at::TensorOptions().dtype(dtype).device(dev));

  // Layers are independent: `workers` threads take the next unbuilt layer. Each sets the device that
  // is current here (PackedCudaLinear uploads to the thread's current device) and its own no-grad
  // mode (thread-local).
  const int64_t L = config.num_layers;
  const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, L)));
  const int cuda_device = cuda_device_index(dev);  // -1 on the CPU
  std::atomic<int64_t> next{0};
  std::vector<std::exception_ptr> errors(static_cast<size_t>(workers));
  auto work = [&](int w) {
    try {
      c10::NoGradGuard no_grad;
      cuda_set_device(cuda_device);
      for (int64_t l = next++; l < L; l = next++) build_bench_layer(m, l, kind, seed, o);
    } catch (...) {
      errors[static_cast<size_t>(w)] = std::current_exception();
      next = L;  // the others stop after their current layer
    }
  };
  if (workers == 1) {
    work(0);
  } else {
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w) pool.emplace_back(work, w);
    for (auto& t : pool) t.join();
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  return m;
}

namespace {

// Seconds of fn(), with the device drained before and after (kernels are asynchronous).
double timed_seconds(const at::Device& dev, const std::function<void()>& fn) {
  synchronize_device(dev);
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  synchronize_device(dev);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Random token ids [B, n] int64 (seeded on the CPU, so the same for every device and path) on dev.
at::Tensor random_ids(int64_t vocab, int64_t B, int64_t n, uint64_t seed, const at::Device& dev) {
  at::Generator gen = bench_generator("cpu", seed);
  return at::randint(vocab, {B, n}, gen, at::TensorOptions().dtype(at::kLong)).to(dev);
}

nlohmann::json tensor_rows(const at::Tensor& t) {  // [B, n] int64 -> [[...], ...]
  const at::Tensor c = t.to(at::kCPU).contiguous();
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t b = 0; b < c.size(0); ++b) {
    const int64_t* p = c.data_ptr<int64_t>() + b * c.size(1);
    rows.push_back(std::vector<int64_t>(p, p + c.size(1)));
  }
  return rows;
}

// Prefill and decode measurements of one built model (see run_e2e_bench).
nlohmann::json measure_model(const Decoder& m, const E2eBenchOptions& o, const std::string& model, const char* path,
                             double build_s) {
  const ModelConfig& c = m.config();
  const at::Device dev = m.device();
  const int runs = o.warmup + o.repeats;
  DecodeSession session(m);
  session.reserve(std::max(o.prefill, o.prompt + o.new_tokens));

  // ---- prefill: one sequence, one step()
  const at::Tensor prefill_ids = random_ids(c.vocab_size, 1, o.prefill, Rng::derive_seed(o.seed, "e2e_prefill"), dev);
  std::vector<double> times;
  at::Tensor logits;
  for (int r = 0; r < runs; ++r) {
    session.reset();
    logits = at::Tensor();  // [1, prefill, vocab] float32: free the last one before the next step
    const double t = timed_seconds(dev, [&] { logits = session.step(prefill_ids); });
    if (r >= o.warmup) times.push_back(t);
  }
  bool finite = at::isfinite(logits).all().item<bool>();
  logits = at::Tensor();
  const double prefill_s = median(times);
  nlohmann::json row = {{"model", model},
                        {"layers", c.num_layers},
                        {"path", path},
                        {"build_s", build_s},
                        {"prefill_tokens", o.prefill},
                        {"prompt_tokens", o.prompt},
                        {"new_tokens", o.new_tokens},
                        {"prefill_ms", prefill_s * 1e3},
                        {"prefill_tok_s", static_cast<double>(o.prefill) / prefill_s},
                        {"decode", nlohmann::json::array()}};

  // ---- decode: untimed prompt step, then new_tokens greedy single-token steps, timed together
  KvCacheBytes cache;
  for (int64_t B : o.batches) {
    const at::Tensor prompt_ids = random_ids(c.vocab_size, B, o.prompt, Rng::derive_seed(o.seed, "e2e_prompt", {B}), dev);
    times.clear();
    at::Tensor tokens;  // [B, new_tokens + 1] of the last run
    for (int r = 0; r < runs; ++r) {
      session.reset();
      at::Tensor next = session.step(prompt_ids).select(1, o.prompt - 1).argmax(-1, /*keepdim=*/true);  // [B, 1]
      std::vector<at::Tensor> produced{next};
      produced.reserve(static_cast<size_t>(o.new_tokens + 1));
      at::Tensor step_logits;  // [B, 1, vocab]
      const double t = timed_seconds(dev, [&] {
        for (int64_t i = 0; i < o.new_tokens; ++i) {
          step_logits = session.step(next);
          next = step_logits.select(1, 0).argmax(-1, /*keepdim=*/true);
          produced.push_back(next);
        }
      });
      if (r >= o.warmup) times.push_back(t);
      finite = finite && at::isfinite(step_logits).all().item<bool>();
      tokens = at::cat(produced, 1);
    }
    cache = session.cache_bytes();
    const double s = median(times);
    nlohmann::json e = {{"batch", B},
                        {"ms", s * 1e3},
                        {"ms_per_step", s * 1e3 / static_cast<double>(o.new_tokens)},
                        {"tok_s", static_cast<double>(B * o.new_tokens) / s}};
    if (o.record_tokens) {
      e["prompt_ids"] = tensor_rows(prompt_ids);
      e["tokens"] = tensor_rows(tokens);
    }
    row["decode"].push_back(e);
  }
  row["logits_finite"] = finite;
  row["kv_cache_bytes"] = cache.stored;  // after the last batch: prompt + new_tokens positions
  row["kv_packed_layers"] = cache.packed_layers;
  return row;
}

void check_options(const E2eBenchOptions& o) {
  if (o.prefill < 1) throw UsageError("resq bench: --e2e-prefill must be >= 1");
  if (o.prompt < 1) throw UsageError("resq bench: --e2e-prompt must be >= 1");
  if (o.new_tokens < 1) throw UsageError("resq bench: --e2e-new-tokens must be >= 1");
  if (o.layers < 0) throw UsageError("resq bench: --e2e-layers must be >= 0 (0 = the model's own count)");
  if (o.batches.empty()) throw UsageError("resq bench: --e2e-batches needs at least one batch size");
  for (int64_t b : o.batches) {
    if (b < 1) throw UsageError("resq bench: --e2e-batches values must be >= 1, got " + std::to_string(b));
  }
  if (o.repeats < 1 || o.warmup < 0) throw UsageError("resq bench: --repeats must be >= 1 and --warmup >= 0");
}

// Device facts for the report; throws UsageError when a cuda device cannot be used.
nlohmann::json device_info(const at::Device& dev) {
  nlohmann::json info = {{"device", "cpu"}};
  if (dev.is_cpu()) return info;
  if (!dev.is_cuda()) throw UsageError("resq bench --e2e: runs on cuda or cpu, not " + dev.str());
  const std::string why = packed_cuda_unavailable_reason();
  if (!why.empty()) {
    throw UsageError("resq bench --e2e: " + why + "; no CUDA device can be used; use --cpu for the CPU benchmark");
  }
  const CudaDeviceFacts f = cuda_device_facts(cuda_device_index(dev));
  info = {{"device", f.name},
          {"sm", f.sm()},
          {"clock_mhz", f.clock_mhz},
          {"mem_clock_mhz", f.mem_clock_mhz},
          {"memory_bytes", f.memory_bytes},
          {"cuda_runtime", f.cuda_runtime}};
  return info;
}

}  // namespace

nlohmann::json run_e2e_bench(const E2eBenchOptions& o, void (*on_row)(const nlohmann::json& row)) {
  check_options(o);
  const at::Device dev(o.device);
  nlohmann::json result = device_info(dev);
  c10::NoGradGuard no_grad;
  const std::vector<std::string> models = o.models.empty() ? std::vector<std::string>{"llama-3-8b"} : o.models;
  // Random weights are drawn (and the resq layers RTN-quantized) on the benchmark's device: on cuda
  // that turns minutes of CPU randn/RTN for an 8B model into seconds; the CPU packing remains.
  BenchBuildOptions build;
  build.draw_device = o.device;
  const int threads = o.build_threads > 0 ? o.build_threads
                      : dev.is_cuda()     ? static_cast<int>(std::min(16u, std::max(1u, std::thread::hardware_concurrency())))
                                          : 1;
  result.update({{"libtorch", PlainTorchLayer::torch_version()},
                 {"build_type", RESQ_BUILD_TYPE},
                 {"prefill", o.prefill},
                 {"prompt", o.prompt},
                 {"new_tokens", o.new_tokens},
                 {"batches", o.batches},
                 {"warmup", o.warmup},
                 {"repeats", o.repeats},
                 {"seed", o.seed},
                 {"build_threads", threads},
                 {"weights", "random N(0, 0.02^2) per layer (seeded per layer, drawn on " + o.device +
                                 "); resq-packed: every layer RTN-quantized on its own weights (4-bit, last 1/8 of "
                                 "the columns 8-bit as configs/resq.json), random U_C, online Hadamard on down_proj"},
                 {"rows", nlohmann::json::array()}});
  for (const std::string& name : models) {
    ModelConfig c = synthetic_shape_config(name);  // UsageError for an unknown name
    if (o.layers > 0) c.num_layers = o.layers;
    const int64_t positions = std::max(o.prefill, o.prompt + o.new_tokens);
    if (positions > c.max_position_embeddings) {
      throw UsageError("resq bench --e2e: " + name + " has max_position_embeddings " + std::to_string(c.max_position_embeddings) +
                       "; --e2e-prefill " + std::to_string(o.prefill) + " / --e2e-prompt + --e2e-new-tokens " +
                       std::to_string(o.prompt + o.new_tokens) + " do not fit");
    }
    nlohmann::json rows[2];
    const BenchLayerKind kinds[2] = {BenchLayerKind::kBf16, BenchLayerKind::kResqPacked};
    const char* paths[2] = {"bf16", "resq-packed"};
    for (int i = 0; i < 2; ++i) {
      // One model on the device at a time: the bf16 one is freed before the packed one is built.
      double build_s = 0.0;
      std::unique_ptr<Decoder> m;
      build_s = timed_seconds(dev, [&] { m = std::make_unique<Decoder>(make_bench_model(c, kinds[i], o.seed, o.device, build, threads)); });
      rows[i] = measure_model(*m, o, name, paths[i], build_s);
    }
    const double bf16_prefill = rows[0]["prefill_tok_s"].get<double>();
    for (auto& r : rows) {
      r["prefill_speedup_vs_bf16"] = r["prefill_tok_s"].get<double>() / bf16_prefill;
      for (size_t j = 0; j < r["decode"].size(); ++j) {
        r["decode"][j]["speedup_vs_bf16"] = r["decode"][j]["tok_s"].get<double>() / rows[0]["decode"][j]["tok_s"].get<double>();
      }
      result["rows"].push_back(r);
      if (on_row) on_row(r);
    }
  }
  return result;
}

}  // namespace resq
