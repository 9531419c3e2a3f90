// Bit-width and clip-ratio checks and the high-precision column masks (masks.h).
#include "resq/transforms/masks.h"

#include <ATen/ATen.h>

#include <string>

#include "resq/common/error.h"

namespace resq {

void check_quant_bits(int bits, const char* what) {
  if (!((bits >= 2 && bits <= 8) || bits >= 16)) {
    throw ConfigError(std::string(what) + ": bits = " + std::to_string(bits) +
                      " must be in 2..8 (quantized) or >= 16 (not quantized)");
  }
}

void check_clip_ratio(double clip, const char* what) {
  if (!(clip > 0.0 && clip <= 1.0)) {
    throw ConfigError(std::string(what) + ": clip ratio " + std::to_string(clip) +
                      " must be in (0, 1]");
  }
}

std::vector<bool> high_mask_to_vector(const at::Tensor& high_mask, int64_t K, const char* what) {
  if (!high_mask.defined() || high_mask.dim() != 1 || high_mask.size(0) != K ||
      high_mask.scalar_type() != at::kBool) {
    throw ShapeError(std::string(what) + ": high_mask must be a [" + std::to_string(K) +
                     "] bool tensor" +
                     (high_mask.defined() ? ", got " + std::to_string(high_mask.dim()) +
                                                "-D with " + std::to_string(high_mask.numel()) +
                                                " elements"
                                          : ", got an undefined tensor"));
  }
  at::Tensor m = high_mask.to(at::kCPU).contiguous();
  const bool* p = m.data_ptr<bool>();
  return std::vector<bool>(p, p + K);
}

at::Tensor high_mask(format::HighRule rule, int64_t K, int64_t group, int64_t count, const char* what) {
  const bool per_head = rule == format::HighRule::kPerHead;
  if (K < 0 || count < 0 || count > (per_head ? group : K) || (per_head && (group <= 0 ? K != 0 : K % group != 0))) {
    throw ShapeError(std::string(what) + ": need 0 <= count <= " + (per_head ? "group" : "K") +
                     (per_head ? " and a group that divides K" : "") + ", got K = " + std::to_string(K) +
                     (per_head ? ", group = " + std::to_string(group) : "") + ", count = " + std::to_string(count));
  }
  at::Tensor m = at::zeros({K}, at::TensorOptions().dtype(at::kBool));
  bool* p = m.data_ptr<bool>();
  for (int64_t k : format::high_columns(rule, K, group, count)) p[k] = true;
  return m;
}

at::Tensor site_weight_high_mask(const format::SiteSpec& s) {
  return high_mask(s.high_rule, s.K, s.high_group, s.high_count, format::site_name(s.kind));
}

at::Tensor site_activation_high_mask(const format::SiteSpec& s) {
  return high_mask(s.high_rule, s.K, s.high_group, s.activations.high_count, format::site_name(s.kind));
}

at::Tensor high_mask_last(int64_t K, int64_t r) {
  if (K < 0 || r < 0 || r > K) {
    throw ShapeError("high_mask_last: need 0 <= r <= K, got K = " + std::to_string(K) +
                     ", r = " + std::to_string(r));
  }
  return high_mask(format::HighRule::kLast, K, 0, r, "high_mask_last");
}

at::Tensor high_mask_per_head(int64_t num_heads, int64_t head_dim, int64_t r_h) {
  if (num_heads < 0 || head_dim < 0 || r_h < 0 || r_h > head_dim) {
    throw ShapeError("high_mask_per_head: need num_heads >= 0 and 0 <= r_h <= head_dim, got "
                     "num_heads = " + std::to_string(num_heads) + ", head_dim = " +
                     std::to_string(head_dim) + ", r_h = " + std::to_string(r_h));
  }
  return high_mask(format::HighRule::kPerHead, num_heads * head_dim, head_dim, r_h, "high_mask_per_head");
}

}  // namespace resq
