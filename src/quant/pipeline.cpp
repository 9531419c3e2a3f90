// The ResQ quantization pipeline: prepare -> calibrate -> PCA/rotations -> fuse -> quantize weights
// (GPTQ/RTN) -> write the packed checkpoint (resq/format/checkpoint.h) -> read it back and report.
// The stages live in pipeline_{memory,calibration,rotations,output}.cpp (pipeline_parts.h); this file
// runs them, with the one layer loop both passes over the model use.
#include "resq/quant/pipeline.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cinttypes>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <vector>

#include "learned_rotation.h"
#include "pipeline_parts.h"
#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/interrupt.h"
#include "resq/common/log.h"
#include "resq/format/checkpoint.h"
#include "resq/format/layout.h"
#include "resq/io/tensor_checks.h"
#include "resq/model/device.h"
#include "resq/quant/quantizers.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"

namespace resq {
namespace fs = std::filesystem;
using namespace pipeline;

namespace {

// Runs layer l over the hidden states [N, L, d] in chunks of `chunk` windows (bounding the per-call
// activations), reporting to `obs`. propagate: windows are independent, so each chunk's output
// overwrites its own input in place: one [N, L, d] buffer instead of two (512 MiB at 32 x 2048 x
// 2048 float32).
void run_layer_chunks(Decoder& m, int64_t l, at::Tensor& hidden, const RopeTables& rope, int64_t chunk, ForwardObserver* obs,
                      bool propagate, const ComputePlan& plan) {
  const Tf32Scope tf32(plan.products == Products::kTf32);  // the forward products and the Gram sums
  const int64_t N = hidden.size(0);
  for (int64_t s = 0; s < N; s += chunk) {
    at::Tensor part = hidden.narrow(0, s, std::min(chunk, N - s));
    if (propagate) {
      part.copy_(m.run_layer(l, part, rope, obs));
    } else {
      m.run_layer(l, part, rope, obs);
    }
  }
}

// Where the pipeline is, for error messages (an out-of-memory error names the stage and layer).
thread_local std::string g_where = "start";

// The one layer loop: for each layer, load it, fold its norms (prepare_layer), run body(l), unload
// it, trim the heap and log progress (tok/s when tokens_per_layer > 0).
template <typename Fn>
void for_each_layer(Decoder& m, const std::string& stage, int64_t tokens_per_layer, Fn&& body) {
  const int64_t layers = m.config().num_layers;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t l = 0; l < layers; ++l) {
    throw_if_interrupted();  // Ctrl-C: unwinding removes the checkpoint's temporary directory
    g_where = strprintf("%s, layer %" PRId64 "/%" PRId64, stage.c_str(), l + 1, layers);
    m.load_layer(l);
    prepare_layer(m.layers()[l], m.dtype());
    body(l);
    m.unload_layer(l);
    release_free_heap();
    const double elapsed = seconds_since(start);
    const std::string rate = tokens_per_layer > 0 ? strprintf(" | %.0f tok/s", (l + 1) * tokens_per_layer / std::max(elapsed, 1e-9)) : "";
    log::info(strprintf("%s: layer %" PRId64 "/%" PRId64 "%s | ETA %.0f s | %s", stage.c_str(), l + 1, layers, rate.c_str(),
                        elapsed / (l + 1) * (layers - l - 1), memory_note().c_str()));
  }
}

// Quantizes dense linears that read the same input (one Hessian, one column mask): installs the
// dequantized weights (later layers' GPTQ inputs propagate through them) and returns the integer
// results for the checkpoint, one per linear; rel_err[i] receives ||Ŵ - W|| / ||W|| of linear i.
// Several linears are quantized as ONE weight of their stacked rows: GPTQ and RTN treat rows
// independently (per-row scales, the column loop and the lazy updates act row by row), so the
// result is that of separate calls, with one column loop instead of several (on a GPU the loop's
// kernel launches, not its arithmetic, are the cost: q/k/v and gate/up share theirs).
// hessian_last_use: the Hessian buffer may serve as GPTQ's factorization workspace (see
// gptq_quantize_weight) because no later linear reads it.
// generic: GPTQ by the device-generic torch path even on CPU tensors (ComputePlan::generic).
std::vector<QuantizedWeight> quantize_linears(const std::vector<std::shared_ptr<Linear>*>& lins, const at::Tensor& mask,
                                              const WeightRecipe& w, const at::Tensor& hessian, bool hessian_last_use,
                                              at::ScalarType dt, bool generic, std::vector<double>* rel_err) {
  std::vector<at::Tensor> originals;
  std::vector<int64_t> rows;
  for (auto* lin : lins) {
    originals.push_back(dense(*lin, "quantize").weight().to(at::kFloat));
    rows.push_back(originals.back().size(0));
  }
  const at::Tensor original = originals.size() == 1 ? originals[0] : at::cat(originals, 0);  // [sum N, K]
  QuantizedWeight q;
  if (w.method == "gptq") {
    // Device tensors reach the torch path through gptq_quantize_weight's dispatch anyway; a generic
    // plan on the CPU asks for it by name.
    const auto gptq = generic ? detail::gptq_quantize_weight_torch : gptq_quantize_weight;
    q = gptq(original, hessian, mask, w.bits_low, w.bits_high, w.percdamp, w.blocksize, w.clip_ratio, w.mse_clip,
             hessian_last_use);
  } else {
    q = rtn_quantize_weight(original, mask, w.bits_low, w.bits_high, w.clip_ratio, w.mse_clip);
  }
  std::vector<QuantizedWeight> out;
  rel_err->clear();
  int64_t r0 = 0;
  for (size_t i = 0; i < lins.size(); ++i) {
    QuantizedWeight part = q;
    part.dequant = q.dequant.narrow(0, r0, rows[i]);
    part.q = q.q.narrow(0, r0, rows[i]).contiguous();
    part.scale_low = q.scale_low.narrow(0, r0, rows[i]).contiguous();
    part.scale_high = q.scale_high.narrow(0, r0, rows[i]).contiguous();
    r0 += rows[i];
    rel_err->push_back((part.dequant - originals[i]).norm().item<double>() /
                       std::max(originals[i].norm().item<double>(), 1e-30));
    *lins[i] = std::make_shared<DenseLinear>(part.dequant.to(dt).contiguous(), dense(*lins[i], "quantize").bias());
    part.dequant = at::Tensor();  // the linear holds it
    out.push_back(std::move(part));
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------- public

namespace {

nlohmann::json quantize_model_impl(const QuantizeOptions& o, const at::Device& device) {
  const auto t_start = std::chrono::steady_clock::now();
  const Recipe& recipe = o.recipe;
  std::error_code ec;
  if (fs::exists(o.out_dir, ec)) throw UsageError("--out: '" + o.out_dir + "' already exists; choose a new directory");
  if (format::PackedCheckpoint::is_checkpoint_dir(o.model_dir)) {
    throw UsageError("--model: '" + o.model_dir + "' is already a resq packed checkpoint");
  }
  nlohmann::json report;
  nlohmann::json stages = nlohmann::json::object();
  // Each stage's seconds and the process's peak RSS when it ends (monotonic: the first stage whose
  // peak reaches the final one is where the peak happened).
  auto end_stage = [&stages, &device](const std::string& name, std::chrono::steady_clock::time_point since) {
    stages[name + "_seconds"] = seconds_since(since);
    stages[name + "_peak_rss_gib"] = peak_rss_gib();
    const DeviceMemory dm = device_memory(device);
    if (dm.known) stages[name + "_peak_device_gib"] = dm.peak_used_gib;
    log::info(strprintf("quantize: %s done in %.1f s | %s", name.c_str(), seconds_since(since), memory_note().c_str()));
  };
  c10::NoGradGuard no_grad;
  tune_malloc_for_pipeline();

  // 1. Load the global tensors (layers are loaded one at a time below: memory stays bounded by
  //    embeddings + lm_head + one layer + the calibration hidden states) and prepare them.
  auto t = std::chrono::steady_clock::now();
  g_where = "load";
  LoadOptions lo;
  lo.device = device.str();
  lo.dtype = "float32";
  lo.load_layers = false;
  lo.keep_global_dtype = true;  // embed/lm_head stay bf16 for a bf16 checkpoint (no float32 copies)
  Decoder m = Decoder::load(o.model_dir, lo);
  // Every source tensor finite, checked once in place before any work: a NaN weight would otherwise
  // quantize "fine" (RTN) into a checkpoint of garbage.
  require_finite(TensorStore::open_model_dir(o.model_dir), "refusing to quantize a model with non-finite weights");
  if (log::enabled(log::Level::debug)) log::debug("quantize: globals loaded | " + memory_note());
  const ComputePlan plan = make_compute_plan(device, m.config().hidden_size);
  if (plan.products == Products::kBf16) m.set_matmul_dtype(at::kBFloat16);
  log::info(strprintf("quantize: device %s, forward products %s%s%s", device_description(device).c_str(),
                      products_name(plan.products), plan.products == Products::kFp32 ? "" : " (float32 accumulation)",
                      plan.generic ? ", device-generic paths (torch GEMMs, eigh, GPTQ)" : ""));
  const ModelConfig& c = m.config();
  // Which columns are 8-bit at every site, and the subspace sizes r, r_h the rotations keep apart.
  const format::ModelLayout layout = format::model_layout(c, recipe_layout_params(recipe));
  prepare_globals(m, recipe);
  end_stage("load_prepare", t);

  // 2. Calibration data (tokenized like eval: BOS once, then random windows).
  t = std::chrono::steady_clock::now();
  auto tokenizer = load_tokenizer(o.model_dir);
  std::string text = read_file(o.calib_path, o.calib_wikitext2 ? "--calib-wikitext2 text file" : "--calib text file");
  const std::string text_hash = fnv1a_hex(text);
  if (o.calib_wikitext2) text = wikitext_join(text);
  const auto ids = tokenize_for_eval(*tokenizer, text, tokenizer->adds_bos());
  const auto offsets = sample_calibration_offsets(static_cast<int64_t>(ids.size()), o.seqlen, o.nsamples, o.seed);
  at::Tensor calib = at::empty({o.nsamples, o.seqlen}, at::TensorOptions().dtype(at::kLong));
  int64_t* cp = calib.data_ptr<int64_t>();
  for (int64_t s = 0; s < o.nsamples; ++s)
    for (int64_t j = 0; j < o.seqlen; ++j) cp[s * o.seqlen + j] = ids[offsets[s] + j];
  const RopeTables rope = m.rope_tables(o.seqlen);
  // Windows per run_layer call: bounds the per-call activations ([chunk, T, ffn] and friends): 64 MiB
  // per activation on the CPU (cache-sized work, no page faults), 512 MiB on a GPU (GEMMs of 8k+ rows
  // at the 8B shape, ~2 GiB of live activations: docs/PERF.md).
  const int64_t chunk_bytes = device.is_cpu() ? (int64_t{64} << 20) : (int64_t{512} << 20);
  const int64_t chunk = std::max<int64_t>(1, chunk_bytes / (4 * o.seqlen * std::max(c.intermediate_size, c.hidden_size)));
  nlohmann::json device_estimate;
  if (device.is_cuda()) {
    // Said before the work, so a run that cannot fit is known in seconds rather than at the OOM.
    const DeviceMemoryEstimate e = estimate_device_memory(c, o.nsamples, o.seqlen, chunk, plan, m.embed_weight.element_size());
    const DeviceMemory dm = device_memory(device);
    device_estimate = {{"total_gib", e.total_gib()}, {"hidden_states_gib", e.hidden_gib}, {"layer_gib", e.layer_gib},
                       {"statistics_gib", e.statistics_gib}, {"gptq_gib", e.gptq_gib},
                       {"activations_gib", e.activations_gib}, {"globals_gib", e.globals_gib}};
    const std::string msg = strprintf(
        "quantize: device memory estimate %.1f GiB (hidden states %.1f, layer %.1f, statistics %.1f, GPTQ %.1f, "
        "activations %.1f, embeddings + lm_head %.1f)%s",
        e.total_gib(), e.hidden_gib, e.layer_gib, e.statistics_gib, e.gptq_gib, e.activations_gib, e.globals_gib,
        dm.known ? strprintf("; %.1f of %.1f GiB in use now", dm.used_gib, dm.total_gib).c_str() : "");
    if (dm.known && e.total_gib() > dm.total_gib - dm.used_gib) {
      log::warn(msg + ": it may not fit (fewer --nsamples, or --device cpu)");
    } else {
      log::info(msg);
    }
  }

  std::unique_ptr<CovarianceObserver> cov;
  if (recipe.rotation.method == "resq") {
    cov = std::make_unique<CovarianceObserver>(c, plan);
    at::Tensor h = m.embed(calib);
    for_each_layer(m, "calibrate", o.nsamples * o.seqlen,
                   [&](int64_t l) { run_layer_chunks(m, l, h, rope, chunk, cov.get(), /*propagate=*/true, plan); });
    cov->finish();
  }
  end_stage("calibration", t);

  // 3. PCA + rotations; U_A into the embeddings and lm_head.
  t = std::chrono::steady_clock::now();
  g_where = "rotations (PCA, fusion into the embeddings and lm_head)";
  Rotations R = build_rotations(m, recipe, cov.get(), o.seed, layout.r, layout.r_h, plan);
  cov.reset();
  if (recipe.rotation.learn.enabled) report["learned_rotation"] = learn_rotations(m, recipe, layout, calib, o.seed, R);
  fuse_globals(m, R);
  end_stage("rotation", t);
  report["spectra"] = R.spectra;

  // 4. Layer by layer: load, prepare, fuse, quantize weights (GPTQ Hessians from inputs produced by
  //    the already-quantized earlier layers), write, unload.
  t = std::chrono::steady_clock::now();
  nlohmann::json layer_errors = nlohmann::json::array();
  const auto& w = recipe.weights;
  const at::ScalarType dt = m.dtype();
  std::map<LinearKind, QuantizedWeight> layer_quantized;  // the current layer's integer weights
  auto quantize_layer = [&](int64_t l, const std::map<LinearKind, at::Tensor>& H) {
    DecoderLayer& L = m.layers()[l];
    auto hess = [&](LinearKind k) { auto it = H.find(k); return it == H.end() ? at::Tensor() : it->second; };
    nlohmann::json e;
    e["layer"] = l;
    // Linears that read one input share its Hessian (q_proj's serves k and v, gate_proj's up) and
    // column mask; the device-generic path quantizes each such group as one stacked weight (see
    // quantize_linears), the CPU path one linear at a time (its results are the reference).
    auto group = [&](std::vector<std::pair<LinearKind, std::shared_ptr<Linear>*>> members) {
      const LinearKind hessian_of = members.front().first;
      std::vector<at::Tensor> masks;
      bool same_mask = true;
      for (const auto& [kind, lin] : members) {
        masks.push_back(site_weight_high_mask(layout.sites.at(static_cast<format::SiteKind>(kind))));
        same_mask = same_mask && at::equal(masks.back(), masks.front());
      }
      const size_t batch = plan.generic && same_mask ? members.size() : 1;
      for (size_t i0 = 0; i0 < members.size(); i0 += batch) {
        std::vector<std::shared_ptr<Linear>*> lins;
        for (size_t i = i0; i < i0 + batch; ++i) lins.push_back(members[i].second);
        const bool last_use = i0 + batch == members.size();
        std::vector<double> errs;
        auto qs = quantize_linears(lins, masks[i0], w, hess(hessian_of), last_use, dt, plan.generic, &errs);
        for (size_t i = 0; i < batch; ++i) {
          const LinearKind kind = members[i0 + i].first;
          layer_quantized[kind] = std::move(qs[i]);
          e[linear_kind_name(kind)] = errs[i];
        }
        if (log::enabled(log::Level::debug)) {
          log::debug(strprintf("weights: layer %" PRId64 " %s%s quantized | %s", l, linear_kind_name(members[i0].first),
                               batch > 1 ? " (+ the linears sharing its input)" : "", memory_note(true).c_str()));
        }
      }
    };
    group({{LinearKind::kQ, &L.q}, {LinearKind::kK, &L.k}, {LinearKind::kV, &L.v}});
    group({{LinearKind::kO, &L.o}});
    group({{LinearKind::kGate, &L.gate}, {LinearKind::kUp, &L.up}});
    group({{LinearKind::kDown, &L.down}});
    layer_errors.push_back(e);
  };
  format::CheckpointMeta meta = checkpoint_meta(c, recipe, layout, R, choose_globals_dtype(o.globals_dtype, c));
  nlohmann::json provenance;
  nlohmann::json checksums = nlohmann::json::object();
  {
    format::CheckpointWriter writer(o.out_dir);  // temporary directory, renamed on commit
    at::Tensor h;
    if (w.method == "gptq") h = m.embed(calib);
    // The globals go to disk now and leave memory: only the layers are needed from here on.
    write_globals(writer, m, meta);
    m.embed_weight = at::Tensor();
    m.lm_head.reset();
    HessianObserver hessian_obs(plan);  // reused by every layer (buffers kept)
    for_each_layer(m, "weights (" + w.method + ")", w.method == "gptq" ? o.nsamples * o.seqlen : 0, [&](int64_t l) {
      fuse_layer(m, l, R, plan.generic);
      layer_quantized.clear();
      if (w.method == "gptq") {
        hessian_obs.reset();
        run_layer_chunks(m, l, h, rope, chunk, &hessian_obs, /*propagate=*/false, plan);
        quantize_layer(l, hessian_obs.finish());
        // The quantized layer's outputs are the next layer's GPTQ inputs.
        run_layer_chunks(m, l, h, rope, chunk, nullptr, /*propagate=*/true, plan);
      } else if (w.method == "rtn") {
        quantize_layer(l, {});
      }
      checksums.update(write_layer_tensors(writer, m, l, R, meta, layer_quantized));
      layer_quantized.clear();
    });
    // The hidden states (512 MiB at 32 x 2048) and the Hessian buffers (~600 MiB) are not needed
    // while the global tensors are written.
    h = at::Tensor();
    hessian_obs = HessianObserver(plan);
    end_stage("weight_quantization", t);
    report["weight_relative_error"] = layer_errors;

    // 5. Global tensors, config, provenance; then the directory is renamed into place.
    t = std::chrono::steady_clock::now();
    g_where = "write";
    provenance = {{"tool", std::string("resq ") + RESQ_VERSION},
                  {"source_model", o.model_dir},
                  {"recipe_file", o.recipe_path},
                  {"seed", o.seed},
                  {"seeds", {{"rotation", o.seed}, {"calibration_windows", o.seed}}},
                  {"calibration", {{"file", o.calib_path}, {"fnv1a", text_hash}, {"wikitext2_join", o.calib_wikitext2},
                                   {"nsamples", o.nsamples}, {"seqlen", o.seqlen}}}};
    meta.provenance = provenance;
    finish_output(writer, m, o, R, meta);
  }
  end_stage("write", t);

  // 6. Read the checkpoint back (full validation) and report its size against the bit budget.
  const format::PackedCheckpoint written = format::PackedCheckpoint::open(o.out_dir);
  report["checkpoint"] = checkpoint_report(o.out_dir, meta, written.sizes());
  report["weight_checksums"] = checksums;
  stages["total_seconds"] = seconds_since(t_start);
  report["stages"] = stages;
  report["peak_rss_gib"] = peak_rss_gib();
  const DeviceMemory dm = device_memory(device);
  report["compute"] = {{"device", device_description(device)},
                       {"products", products_name(plan.products)},
                       {"generic_paths", plan.generic},
                       {"peak_device_gib", dm.known ? nlohmann::json(dm.peak_used_gib) : nlohmann::json()},
                       {"device_total_gib", dm.known ? nlohmann::json(dm.total_gib) : nlohmann::json()},
                       {"device_estimate", device_estimate}};
  report["recipe"] = recipe_to_json(recipe);
  report["provenance"] = provenance;
  report["resq_config"] = meta.to_json();  // per-site bits and splits: the report is self-contained
  report["out"] = o.out_dir;
  const RecipeBits bits = recipe_bits(recipe);
  report["bits"] = {{"weights", bits.weights}, {"activations", bits.activations}, {"kv", bits.kv}};
  return report;
}

}  // namespace

nlohmann::json quantize_model(const QuantizeOptions& o) {
  const at::Device device = resolve_device("--device", o.device);
  set_memory_note_device(device);
  g_where = "start";
  try {
    return quantize_model_impl(o, device);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    if (!device.is_cuda() || !is_out_of_memory(e)) throw;
    // torch's message is long (allocator advice); its first line says what was asked.
    std::string first = e.what();
    first = first.substr(0, first.find('\n'));
    const DeviceMemory dm = device_memory(device);
    throw ResourceError(strprintf(
        "quantize --device %s: out of device memory in %s: %s. Device memory: %.1f of %.1f GiB used (peak %.1f); "
        "the run needs the calibration hidden states (--nsamples %" PRId64 " x --seqlen %" PRId64
        " x hidden x 4 bytes), one layer in float32 and its float64 Hessians: use fewer --nsamples, a GPU "
        "with more memory, or --device cpu. Nothing was written to %s.",
        device_description(device).c_str(), g_where.c_str(), first.c_str(), dm.used_gib, dm.total_gib,
        dm.peak_used_gib, o.nsamples, o.seqlen, o.out_dir.c_str()));
  }
}

}  // namespace resq
