// The Fisher-weighted expected quantization noise (objective "noise" of rotation.learn): value and
// gradient against a scalar float64 reference on random ragged sites, part_fisher, and shape errors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "resq/common/error.h"
#include "resq/quant/rotation_noise.h"

namespace resq {
namespace {

// Plain loops over at::Tensor accessors (float64): Σ_t Σ_part fisher[t, part] · step² / 24 with
// step = clip · (max(max y, 0) − min(min y, 0)) / (2^bits − 1) (symmetric: clip · max |y| /
// (2^(bits−1) − 1)) over the part's channels of y = x · blockdiag(rotations of the blocks).
double reference_noise(const std::vector<NoiseSite>& sites, const std::vector<at::Tensor>& rotations) {
  double total = 0;
  for (const NoiseSite& s : sites) {
    const at::Tensor x = s.x.to(at::kDouble).contiguous(), f = s.fisher.to(at::kDouble).contiguous();
    const at::Tensor mask = s.high_mask.to(at::kBool).contiguous();
    const int64_t M = x.size(0), K = x.size(1);
    for (int64_t t = 0; t < M; ++t) {
      std::vector<double> y(K, 0.0);
      for (const NoiseBlock& b : s.blocks) {
        const at::Tensor r = rotations[b.rotation].to(at::kDouble).contiguous();
        for (int64_t j = 0; j < b.size; ++j)
          for (int64_t i = 0; i < b.size; ++i)
            y[b.offset + j] += x[t][b.offset + i].item<double>() * r[i][j].item<double>();
      }
      for (int part = 0; part < 2; ++part) {
        const int bits = part ? s.bits_high : s.bits_low;
        if (bits >= 16) continue;
        double lo = 0, hi = 0;
        for (int64_t k = 0; k < K; ++k) {
          if (mask[k].item<bool>() != (part == 1)) continue;
          lo = std::min(lo, y[k]);
          hi = std::max(hi, y[k]);
        }
        const double step = s.symmetric ? s.clip_ratio * std::max(-lo, hi) / ((1 << (bits - 1)) - 1)
                                        : s.clip_ratio * (hi - lo) / ((1 << bits) - 1);
        total += f[t][part].item<double>() * step * step / 24;
      }
    }
  }
  return total;
}

at::Tensor random_orthogonal(int64_t n) { return std::get<0>(at::linalg_qr(at::randn({n, n}, at::kDouble))); }

// Three sites: one of K = 13 channels in blocks 5 + 8 (3 high channels spread over both blocks), one of
// K = 7 in a single block with an unquantized (16-bit) high part, over ragged token counts, and a
// symmetric (weight) site sharing the K = 7 rotation.
std::vector<NoiseSite> random_sites(at::ScalarType dtype, std::vector<at::Tensor>* rotations) {
  at::manual_seed(11);
  *rotations = {random_orthogonal(5), random_orthogonal(8), random_orthogonal(7)};
  NoiseSite a;
  a.name = "a";
  a.x = (at::randn({37, 13}, at::kDouble) * at::linspace(0.2, 3.0, 13, at::kDouble)).to(dtype);
  a.fisher = at::rand({37, 2}, at::kDouble);
  a.high_mask = at::zeros({13}, at::kBool);
  a.high_mask[2] = a.high_mask[9] = a.high_mask[12] = true;
  a.bits_low = 4, a.bits_high = 8, a.clip_ratio = 0.9;
  a.blocks = {{0, 5, 0}, {5, 8, 1}};
  NoiseSite b;
  b.name = "b";
  b.x = (at::randn({19, 7}, at::kDouble) + 0.5).to(dtype);  // an offset: asymmetric ranges
  b.fisher = at::rand({19, 2}, at::kDouble) * 3;
  b.high_mask = at::zeros({7}, at::kBool);
  b.high_mask[6] = true;
  b.bits_low = 3, b.bits_high = 16, b.clip_ratio = 1.0;
  b.blocks = {{0, 7, 2}};
  NoiseSite c;  // a weight matrix: rows are output channels, symmetric per row and part
  c.name = "c";
  c.x = (at::randn({11, 7}, at::kDouble) - 0.3).to(dtype);
  c.fisher = at::rand({11, 2}, at::kDouble) * 5;
  c.high_mask = at::zeros({7}, at::kBool);
  c.high_mask[0] = true;
  c.bits_low = 4, c.bits_high = 8, c.clip_ratio = 0.95, c.symmetric = true;
  c.blocks = {{0, 7, 2}};
  return {a, b, c};
}

TEST(RotationNoise, MatchesScalarReference) {
  std::vector<at::Tensor> rot;
  for (at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    const std::vector<NoiseSite> sites = random_sites(dtype, &rot);
    const double want = reference_noise(sites, rot);
    const double got = expected_noise(sites, rot).item<double>();
    EXPECT_NEAR(got, want, (dtype == at::kDouble ? 1e-12 : 1e-5) * want) << (dtype == at::kDouble ? "float64" : "float32");
    // Per site it adds up; identity rotations give the unrotated figure.
    EXPECT_NEAR(expected_noise({sites[0]}, rot).item<double>() + expected_noise({sites[1]}, rot).item<double>() +
                    expected_noise({sites[2]}, rot).item<double>(),
                got, 1e-9 * want);
    std::vector<at::Tensor> eye;
    for (const auto& r : rot) eye.push_back(at::eye(r.size(0), at::kDouble));
    EXPECT_NEAR(expected_noise(sites, eye).item<double>(), reference_noise(sites, eye), 1e-5 * want);
  }
}

// Autograd through the per-token max/min against central differences of the scalar reference, for
// every entry of every rotation (the rotations need not be orthogonal for the function itself).
TEST(RotationNoise, GradientMatchesFiniteDifferences) {
  std::vector<at::Tensor> rot;
  const std::vector<NoiseSite> sites = random_sites(at::kDouble, &rot);
  std::vector<at::Tensor> leaves;
  for (const auto& r : rot) leaves.push_back(r.clone().requires_grad_(true));
  expected_noise(sites, leaves).backward();
  const double h = 1e-7;
  for (size_t i = 0; i < rot.size(); ++i) {
    const int64_t n = rot[i].size(0);
    for (int64_t a = 0; a < n; ++a) {
      for (int64_t b = 0; b < n; ++b) {
        std::vector<at::Tensor> plus = rot, minus = rot;
        plus[i] = rot[i].clone(), minus[i] = rot[i].clone();
        plus[i][a][b] += h, minus[i][a][b] -= h;
        const double fd = (reference_noise(sites, plus) - reference_noise(sites, minus)) / (2 * h);
        EXPECT_NEAR(leaves[i].grad()[a][b].item<double>(), fd, 1e-5 * (1 + std::abs(fd))) << "rotation " << i << " [" << a << ", " << b << "]";
      }
    }
  }
}

TEST(RotationNoise, PartFisherSumsSquaresPerPart) {
  const at::Tensor g = at::tensor({1.0, -2.0, 3.0, 0.5, 0.0, -1.0}, at::kDouble).view({2, 3});
  const at::Tensor mask = at::tensor({0, 1, 0}, at::kInt).to(at::kBool);
  const at::Tensor f = part_fisher(g, mask);
  ASSERT_EQ(f.sizes(), at::IntArrayRef({2, 2}));
  EXPECT_DOUBLE_EQ(f[0][0].item<double>(), 1.0 + 9.0);
  EXPECT_DOUBLE_EQ(f[0][1].item<double>(), 4.0);
  EXPECT_DOUBLE_EQ(f[1][0].item<double>(), 0.25 + 1.0);
  EXPECT_DOUBLE_EQ(f[1][1].item<double>(), 0.0);
  EXPECT_THROW(part_fisher(g, at::zeros({2}, at::kBool)), ShapeError);
  EXPECT_THROW(part_fisher(g.view({-1}), mask), ShapeError);
}

TEST(RotationNoise, RejectsBlocksThatDoNotTileOrMatch) {
  std::vector<at::Tensor> rot;
  std::vector<NoiseSite> sites = random_sites(at::kDouble, &rot);
  NoiseSite gap = sites[0];
  gap.blocks = {{0, 5, 0}, {6, 8, 1}};  // channel 5 uncovered
  EXPECT_THROW(expected_noise({gap}, rot), ShapeError);
  NoiseSite short_cover = sites[0];
  short_cover.blocks = {{0, 5, 0}};
  EXPECT_THROW(expected_noise({short_cover}, rot), ShapeError);
  NoiseSite wrong_size = sites[0];
  wrong_size.blocks = {{0, 5, 1}, {5, 8, 0}};  // 8x8 on a 5-block
  EXPECT_THROW(expected_noise({wrong_size}, rot), ShapeError);
  NoiseSite bad_index = sites[1];
  bad_index.blocks = {{0, 7, 3}};
  EXPECT_THROW(expected_noise({bad_index}, rot), ShapeError);
  NoiseSite bad_fisher = sites[1];
  bad_fisher.fisher = at::ones({19, 3}, at::kDouble);
  EXPECT_THROW(expected_noise({bad_fisher}, rot), ShapeError);
  EXPECT_THROW(expected_noise({}, rot), ShapeError);
}

}  // namespace
}  // namespace resq
