// End-to-end generation benchmark of `resq bench --e2e`: every layer of a model shape built from
// random weights, once as a bf16 model and once as the resq packed model, then prefill tokens/s and
// greedy decode tokens/s through DecodeSession. Runs on cuda (the benchmark) or cpu (host tests).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "resq/bench/layer_bench.h"
#include "resq/model/config.h"

namespace resq {

class Decoder;

// A whole bench model of config (all config.num_layers layers) on `device`: layer l built by
// build_bench_layer(m, l, kind, seed, options) — seeded per layer, so a model's first layer is the
// layer of `resq bench --layer` when drawn on the same device — by `threads` workers (layers are
// independent; on cuda the CPU packing of the resq layers is the slow part), embed_tokens and
// lm_head N(0, 0.02^2) [vocab, d] drawn on options.draw_device from Rng::derive_seed(seed,
// "bench_model_embed" / "bench_model_lm_head") in the compute dtype (lm_head = embed_tokens when the
// config ties them), final norm weights 1. Both kinds get the same embeddings and lm_head.
// threads <= 0: 1. Errors as build_bench_layer.
Decoder make_bench_model(const ModelConfig& config, BenchLayerKind kind, uint64_t seed, const std::string& device,
                         const BenchBuildOptions& options = {}, int threads = 1);

struct E2eBenchOptions {
  std::vector<std::string> models;  // synthetic_shape_config names; empty = {"llama-3-8b"}
  int64_t layers = 0;               // > 0: this many layers instead of the shape's (quick runs)
  int64_t prefill = 2048;           // tokens of the prefill measurement: one sequence, one step()
  int64_t prompt = 128;             // prompt tokens of every sequence before the decode measurement
  int64_t new_tokens = 128;         // timed single-token decode steps
  std::vector<int64_t> batches = {1, 16};
  int warmup = 1;                   // untimed runs of each measurement
  int repeats = 3;                  // timed runs; the median is reported
  uint64_t seed = 0;
  std::string device = "cuda";      // "cuda" / "cuda:N" (the benchmark) or "cpu" (host tests)
  int build_threads = 0;            // layers built concurrently; 0 = min(16, cores) on cuda, 1 on cpu
  bool record_tokens = false;       // rows carry the prompts and greedy tokens of the decode runs
};

// For each model: make_bench_model(kBf16) (weights drawn on the device), timed, freed; then
// make_bench_model(kResqPacked) (PackedCudaLinear sites, PackedCudaKvCacheQuant K/V on cuda;
// PackedCpuLinear / PackedKvCacheQuant on cpu), timed. One DecodeSession per model, reset between
// runs, so the session chooses the KV cache for the layers' cache transforms.
//   - prefill: ids [1, prefill] (random, seeded) in one step(); tokens/s = prefill / median time.
//   - decode at batch B: step(prompt ids [B, prompt]) untimed, then new_tokens steps of ids [B, 1],
//     each fed the argmax of the previous logits (greedy, on the device); tokens/s = B * new_tokens
//     / median time of those steps.
// Wall time around the timed calls, synchronized with the device (cudaDeviceSynchronize) on cuda.
// Returns {"device", "sm", "clock_mhz", "mem_clock_mhz", "cuda_runtime", "libtorch", "build_type",
// "prefill", "prompt", "new_tokens", "batches", "warmup", "repeats", "seed", "weights",
// "rows": [{"model", "layers", "path" ("bf16" | "resq-packed"), "build_s", "prefill_tokens",
// "prompt_tokens", "new_tokens", "prefill_ms", "prefill_tok_s", "prefill_speedup_vs_bf16", "logits_finite", "kv_cache_bytes",
// "kv_packed_layers", "decode": [{"batch", "ms", "ms_per_step", "tok_s", "speedup_vs_bf16"
// (, "prompt_ids" [B][prompt], "tokens" [B][new_tokens + 1] with record_tokens: the first token
// comes from the prompt's logits)}]}]}; on_row gets each row when both paths of a model are done.
// Throws UsageError ("... no CUDA device ... use --cpu") for cuda without a CUDA build, a CUDA
// libtorch or an sm_80+ device, and for bad sizes (positions beyond max_position_embeddings).
nlohmann::json run_e2e_bench(const E2eBenchOptions& options, void (*on_row)(const nlohmann::json& row) = nullptr);

}  // namespace resq
