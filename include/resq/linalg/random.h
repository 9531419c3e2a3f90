// Deterministic, platform-independent random numbers for rotations and sign vectors.
// Every draw is defined bit for bit (no std::*_distribution, no libm transcendental calls), so a
// seed gives the same rotations on every compiler, standard library and CPU.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string_view>

namespace resq {

// One step of SplitMix64 (Steele, Lea, Flood 2014): advances `state` by the golden-ratio
// increment and returns the mixed value. Used to seed Rng and to derive sub-stream seeds.
uint64_t splitmix64_next(uint64_t& state);

// xoshiro256** 1.0 (Blackman & Vigna) seeded through SplitMix64.
//
// Draw contract (fixed, other code relies on it for reproducibility):
//   next_u64(): one xoshiro256** step.
//   uniform():  (next_u64() >> 11) * 2^-53, a multiple of 2^-53 in [0, 1); one u64.
//   sign():     +1.0 if the top bit of next_u64() is 0, else -1.0; one u64.
//   normal():   Box-Muller on u1 = 1 - uniform() in (0, 1], u2 = uniform(): returns
//               sqrt(-2 ln u1) * cos(2 pi u2) and keeps sqrt(-2 ln u1) * sin(2 pi u2) for the
//               next call (two u64 per pair). ln/cos/sin are resq's own routines built from
//               IEEE +,-,*,/ and sqrt only (accurate to a few ulp), so the bits do not depend
//               on the platform's libm. random.cpp turns off a*b+c -> FMA contraction with
//               pragmas (GCC, clang) for the same reason.
class Rng {
 public:
  // State = four consecutive SplitMix64 outputs starting from `seed`.
  explicit Rng(uint64_t seed);

  // An independent stream for a named purpose, e.g. derive(seed, "rotation", {layer, head}).
  // The derived seed hashes seed, the tag bytes and every id (with their counts, so
  // ("ab", {}) and ("a", {'b'}) differ) through SplitMix64 finalizers.
  static Rng derive(uint64_t seed, std::string_view tag, std::initializer_list<int64_t> ids = {});
  static Rng derive(uint64_t seed, std::initializer_list<int64_t> ids);
  // The seed that derive() would construct its Rng from (to record in a recipe, for example).
  static uint64_t derive_seed(uint64_t seed, std::string_view tag,
                              std::initializer_list<int64_t> ids = {});

  // Raw xoshiro256** state, for tests against the published reference vectors.
  static Rng from_state(const std::array<uint64_t, 4>& state);
  std::array<uint64_t, 4> state() const { return s_; }

  uint64_t next_u64();
  double uniform();
  double normal();
  double sign();

 private:
  Rng() = default;
  std::array<uint64_t, 4> s_{};
  bool has_spare_normal_ = false;
  double spare_normal_ = 0.0;
};

namespace detail {
// The deterministic elementary functions behind Rng::normal(), exposed for testing.
// det_log(x): natural log for finite x > 0. det_sincos_turns(t, s, c): sin and cos of
// 2*pi*t for t in [0, 1) (t in turns, so the range reduction is exact).
double det_log(double x);
void det_sincos_turns(double t, double* sin_out, double* cos_out);
}  // namespace detail

}  // namespace resq
