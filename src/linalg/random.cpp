// xoshiro256** / SplitMix64 generator with platform-independent uniform, sign and normal draws.
// The elementary functions below use only IEEE-exact operations (+ - * / sqrt, frexp) in a fixed
// order, so their results are bit-identical wherever double is IEEE binary64.
#include "resq/linalg/random.h"

#include <cmath>

// No a*b+c -> fma contraction in this file: it would change the rounding of normal() on CPUs with
// FMA (GCC contracts across statements by default even in ISO C++ mode).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace resq {
namespace {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

// SplitMix64 finalizer: a bijective 64-bit mixer.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Folds one 64-bit word into a running hash.
uint64_t absorb(uint64_t h, uint64_t v) { return mix64((h ^ v) + kGolden); }

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

uint64_t splitmix64_next(uint64_t& state) {
  state += kGolden;
  return mix64(state);
}

Rng::Rng(uint64_t seed) {
  uint64_t sm = seed;
  for (auto& word : s_) word = splitmix64_next(sm);
}

Rng Rng::from_state(const std::array<uint64_t, 4>& state) {
  Rng rng;
  rng.s_ = state;
  return rng;
}

uint64_t Rng::derive_seed(uint64_t seed, std::string_view tag, std::initializer_list<int64_t> ids) {
  // Lengths are absorbed before their items so that differently split keys cannot collide
  // structurally (only by a 2^-64 accident).
  uint64_t h = mix64(seed + kGolden);
  h = absorb(h, static_cast<uint64_t>(tag.size()));
  for (char c : tag) h = absorb(h, static_cast<uint64_t>(static_cast<unsigned char>(c)));
  h = absorb(h, static_cast<uint64_t>(ids.size()));
  for (int64_t id : ids) h = absorb(h, static_cast<uint64_t>(id));
  return h;
}

Rng Rng::derive(uint64_t seed, std::string_view tag, std::initializer_list<int64_t> ids) {
  return Rng(derive_seed(seed, tag, ids));
}

Rng Rng::derive(uint64_t seed, std::initializer_list<int64_t> ids) {
  return Rng(derive_seed(seed, std::string_view(), ids));
}

uint64_t Rng::next_u64() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() {
  return static_cast<double>(next_u64() >> 11) * 0x1.0p-53;
}

double Rng::sign() { return (next_u64() >> 63) != 0 ? -1.0 : 1.0; }

double Rng::normal() {
  if (has_spare_normal_) {
    has_spare_normal_ = false;
    return spare_normal_;
  }
  const double u1 = 1.0 - uniform();  // (0, 1]: log stays finite
  const double u2 = uniform();
  const double radius = std::sqrt(-2.0 * detail::det_log(u1));
  double s = 0.0;
  double c = 0.0;
  detail::det_sincos_turns(u2, &s, &c);
  spare_normal_ = radius * s;
  has_spare_normal_ = true;
  return radius * c;
}

namespace detail {

double det_log(double x) {
  // fdlibm's scheme: x = (1 + f) * 2^e with 1 + f in [sqrt(1/2), sqrt(2)), s = f / (2 + f),
  // ln(1 + f) = f - (hfsq - s * (hfsq + R)), hfsq = f^2 / 2, R = sum_k 2 s^(2k) / (2k + 1);
  // the result is f minus small corrections, so it is within about 1 ulp. R's series is exact to
  // below 1e-18 relative for |s| <= 0.1716 at k = 12.
  int e = 0;
  double m = std::frexp(x, &e);  // exact; m in [0.5, 1)
  if (m < 0.70710678118654752440) {
    m = m * 2.0;
    e -= 1;
  }
  const double f = m - 1.0;  // exact (Sterbenz)
  const double s = f / (2.0 + f);
  const double z = s * s;
  double poly = 2.0 / 25.0;
  for (int k = 11; k >= 1; --k) {
    const double scaled = poly * z;
    poly = scaled + 2.0 / static_cast<double>(2 * k + 1);
  }
  const double r = z * poly;
  const double hfsq = 0.5 * f * f;
  // ln 2 split into a high part with trailing zero bits (e * ln2_hi is exact for |e| < 2^11)
  // and the remainder.
  const double ln2_hi = 6.93147180369123816490e-01;
  const double ln2_lo = 1.90821492927058770002e-10;
  const double de = static_cast<double>(e);
  const double inner = hfsq + r;
  const double correction = s * inner;
  const double low = de * ln2_lo;
  const double tail = correction + low;
  const double head = hfsq - tail;
  const double log1pf = head - f;
  return de * ln2_hi - log1pf;
}

namespace {
// sin and cos of x = f * pi/2 for f in [0, 0.5] (x <= pi/4), Taylor series to below 1 ulp.
void sincos_first_octant(double f, double* s_out, double* c_out) {
  const double x = f * 1.57079632679489661923;
  const double x2 = x * x;
  // sin x = x * (1 - x^2/3! + x^4/5! - ... + x^16/17!)
  double ps = 1.0 / 355687428096000.0;  // 1/17!
  const double sin_coeffs[] = {-1.0 / 1307674368000.0,  // -1/15!
                               1.0 / 6227020800.0,      // 1/13!
                               -1.0 / 39916800.0,       // -1/11!
                               1.0 / 362880.0,          // 1/9!
                               -1.0 / 5040.0,           // -1/7!
                               1.0 / 120.0,             // 1/5!
                               -1.0 / 6.0,              // -1/3!
                               1.0};
  for (double coeff : sin_coeffs) {
    const double scaled = ps * x2;
    ps = scaled + coeff;
  }
  // cos x = 1 - x^2/2! + ... + x^16/16!
  double pc = 1.0 / 20922789888000.0;  // 1/16!
  const double cos_coeffs[] = {-1.0 / 87178291200.0,  // -1/14!
                               1.0 / 479001600.0,     // 1/12!
                               -1.0 / 3628800.0,      // -1/10!
                               1.0 / 40320.0,         // 1/8!
                               -1.0 / 720.0,          // -1/6!
                               1.0 / 24.0,            // 1/4!
                               -1.0 / 2.0,            // -1/2!
                               1.0};
  for (double coeff : cos_coeffs) {
    const double scaled = pc * x2;
    pc = scaled + coeff;
  }
  *s_out = x * ps;
  *c_out = pc;
}
}  // namespace

void det_sincos_turns(double t, double* sin_out, double* cos_out) {
  // Quadrant q and fraction f of 4t are exact because t is a multiple of 2^-53 in [0, 1).
  const double t4 = t * 4.0;
  const double q_floor = std::floor(t4);
  const int quadrant = static_cast<int>(q_floor) & 3;
  const double f = t4 - q_floor;  // [0, 1): angle within the quadrant is f * pi/2
  double s = 0.0;
  double c = 0.0;
  if (f <= 0.5) {
    sincos_first_octant(f, &s, &c);
  } else {
    // sin(pi/2 - y) = cos y: evaluate at the complement to keep x <= pi/4.
    sincos_first_octant(1.0 - f, &c, &s);
  }
  switch (quadrant) {
    case 0: *sin_out = s;  *cos_out = c;  break;
    case 1: *sin_out = c;  *cos_out = -s; break;
    case 2: *sin_out = -s; *cos_out = -c; break;
    default: *sin_out = -c; *cos_out = s; break;
  }
}

}  // namespace detail
}  // namespace resq
