// What every quantizer (weights in resq/quant, activations and KV cache here) checks and splits by:
// the accepted bit widths and clip ratios, and the [K] masks of the high-precision (8-bit) columns.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "resq/format/layout.h"

namespace resq {

// Bit widths accepted by every quantizer: 2..8 quantize, >= 16 means "leave this part in floating
// point". Anything else throws ConfigError naming `what`.
void check_quant_bits(int bits, const char* what);
// True for the widths that quantize (check_quant_bits' 2..8); false for >= 16 (floating point).
inline bool is_quantized_bits(int bits) { return bits < 16; }

// Throws ConfigError naming `what` unless 0 < clip <= 1.
void check_clip_ratio(double clip, const char* what);

namespace detail {
// A clip ratio rounded to float first, so that every torch op sees exactly the fp32 value the scalar
// reference (format/packed.h) multiplies by, whatever the op's internal scalar type.
inline at::Scalar fp32_scalar(double v) { return at::Scalar(static_cast<double>(static_cast<float>(v))); }
}  // namespace detail

// ------------------------------------------------------------------ high-precision masks

// Validates a high mask for a K-wide tensor (defined, 1-D bool of length K; `what` names the
// caller and tensor in the ShapeError) and returns it as a host vector [K].
std::vector<bool> high_mask_to_vector(const at::Tensor& high_mask, int64_t K, const char* what);

// [K] bool, true on the high columns of a K-wide input under one of the layout's rules
// (format/layout.h: the rule alone says which columns those are). Throws ShapeError naming `what`
// unless 0 <= count <= K (kLast) or 0 <= count <= group and group divides K (kPerHead).
at::Tensor high_mask(format::HighRule rule, int64_t K, int64_t group, int64_t count, const char* what);

// The masks of one site of a layout: its weights' high columns (spec.high_count) and its input
// activations' (spec.activations.high_count), under the site's rule.
at::Tensor site_weight_high_mask(const format::SiteSpec& spec);
at::Tensor site_activation_high_mask(const format::SiteSpec& spec);

// [K] bool, true on the last r columns [K - r, K) (HighRule::kLast; r = 0 -> all false).
// Throws ShapeError unless 0 <= r <= K.
at::Tensor high_mask_last(int64_t K, int64_t r);

// [num_heads * head_dim] bool, true on the last r_h channels of every head (HighRule::kPerHead,
// group head_dim: o_proj). Throws ShapeError unless num_heads >= 0, head_dim >= 0 and 0 <= r_h <= head_dim.
at::Tensor high_mask_per_head(int64_t num_heads, int64_t head_dim, int64_t r_h);

}  // namespace resq
