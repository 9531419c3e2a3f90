// What both GPTQ paths share, private to src/quant: the argument checks, the damping retry schedule
// and its failure message (owner: gptq.cpp; gptq.cpp runs on the host, gptq_torch.cpp on w's device).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace resq::detail {

// Checks gptq_quantize_weight's arguments (w [N, K] float, hessian [K, K] float, high_mask [K] bool,
// percdamp >= 0, blocksize >= 1; bits and clip are checked by weight_scales) and returns the mask
// as a host vector [K]. Throws ShapeError / ConfigError naming gptq_quantize_weight.
std::vector<bool> gptq_check_arguments(const at::Tensor& w, const at::Tensor& hessian, const at::Tensor& high_mask,
                                       double percdamp, int64_t blocksize);

// The damping schedule: try_factor(frac, attempt) for attempt 0..6 with frac = percdamp first, then
// ×10 per retry (0.01 when it was 0), until it returns a defined tensor (the factor; undefined = the
// Cholesky failed or was not finite). Returns that tensor and sets *damp_fraction to the frac used;
// throws resq::Error naming the [K, K] Hessian when every attempt fails.
at::Tensor gptq_factor_with_retries(int64_t K, double percdamp,
                                    const std::function<at::Tensor(double frac, int attempt)>& try_factor,
                                    double* damp_fraction);

}  // namespace resq::detail
