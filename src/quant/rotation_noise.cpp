// Fisher-weighted expected quantization noise (rotation_noise.h): the smooth objective of
// rotation.learn "noise".
#include "resq/quant/rotation_noise.h"

#include <ATen/ATen.h>

#include "resq/common/error.h"

namespace resq {

at::Tensor part_fisher(const at::Tensor& g, const at::Tensor& high_mask) {
  if (g.dim() != 2 || high_mask.numel() != g.size(1))
    throw ShapeError("part_fisher: expected g [M, K] and a [K] mask, got " + std::to_string(g.dim()) + "-d g and " +
                     std::to_string(high_mask.numel()) + " mask entries");
  const at::Tensor m = high_mask.to(g.device(), at::kBool).view({1, -1});
  const at::Tensor g2 = g.to(at::kDouble).pow(2);
  return at::stack({g2.masked_fill(m, 0).sum(1), g2.masked_fill(m.logical_not(), 0).sum(1)}, 1);  // [M, 2]
}

at::Tensor expected_noise(const std::vector<NoiseSite>& sites, const std::vector<at::Tensor>& rotations) {
  at::Tensor total;
  for (const NoiseSite& s : sites) {
    const int64_t M = s.x.size(0), K = s.x.size(1);
    if (s.x.dim() != 2 || s.fisher.sizes() != at::IntArrayRef({M, 2}) || s.high_mask.numel() != K)
      throw ShapeError("expected_noise: site " + s.name + ": expected x [M, K], fisher [M, 2] and a [K] mask");
    std::vector<at::Tensor> parts;
    int64_t next = 0;
    for (const NoiseBlock& b : s.blocks) {
      if (b.offset != next || b.rotation < 0 || b.rotation >= static_cast<int>(rotations.size()) ||
          rotations[b.rotation].size(0) != b.size)
        throw ShapeError("expected_noise: site " + s.name + ": blocks must tile the channels with matching rotations");
      parts.push_back(at::mm(s.x.narrow(1, b.offset, b.size), rotations[b.rotation].to(s.x.scalar_type())));
      next += b.size;
    }
    if (next != K) throw ShapeError("expected_noise: site " + s.name + ": blocks cover " + std::to_string(next) + " of " + std::to_string(K) + " channels");
    const at::Tensor x = parts.size() == 1 ? parts[0] : at::cat(parts, 1);  // [M, K]
    const at::Tensor high = s.high_mask.to(x.device(), at::kBool).view({1, -1});
    auto step2 = [&](const at::Tensor& other, int bits) {  // [M] squared per-row step of one part
      const at::Tensor xp = x.masked_fill(other, 0);        // 0 leaves min(min, 0) and max(max, 0) alone
      if (s.symmetric) {
        const at::Tensor amax = xp.abs().amax(1) * s.clip_ratio;
        return (amax / static_cast<double>((int64_t{1} << (bits - 1)) - 1)).pow(2).to(at::kDouble);
      }
      const at::Tensor range = (at::clamp_min(xp.amax(1), 0) - at::clamp_max(xp.amin(1), 0)) * s.clip_ratio;
      return (range / static_cast<double>((int64_t{1} << bits) - 1)).pow(2).to(at::kDouble);
    };
    at::Tensor site = at::zeros({}, x.options().dtype(at::kDouble));
    if (s.bits_low < 16) site = site + (step2(high, s.bits_low) * s.fisher.select(1, 0)).sum();
    if (s.bits_high < 16) site = site + (step2(high.logical_not(), s.bits_high) * s.fisher.select(1, 1)).sum();
    total = total.defined() ? total + site : site;
  }
  if (!total.defined()) throw ShapeError("expected_noise: no sites");
  return total / 24.0;
}

}  // namespace resq
