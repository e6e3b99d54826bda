#include "data/sampler.h"

#include <cmath>
#include <numeric>

#include "common/error.h"

namespace kdae::data {

namespace {

// splitmix64 (Steele, Lea, Flood 2014): a fixed, platform-independent generator, so an order depends
// only on its inputs (std::shuffle's algorithm and the std distributions vary between libraries).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) without modulo bias (rejection of the short last block).
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }

 private:
  uint64_t state_;
};

// Independent streams per (seed, epoch, purpose): each input goes through the mixer once.
SplitMix64 stream(uint64_t seed, int64_t epoch, uint64_t purpose) {
  SplitMix64 mix(seed);
  uint64_t s = mix.next() ^ SplitMix64(static_cast<uint64_t>(epoch) + 0x5851f42d4c957f2dull).next();
  s ^= SplitMix64(purpose * 0x2545f4914f6cdd1dull + 1).next();
  return SplitMix64(s);
}

template <typename T>
void fisher_yates(std::vector<T>& v, SplitMix64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

}  // namespace

std::vector<size_t> epoch_order(size_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  if (!shuffle) return order;
  auto rng = stream(seed, epoch, 0);
  fisher_yates(order, rng);
  return order;
}

std::vector<size_t> mixed_epoch_order(const std::vector<bool>& in_domain, const std::vector<int64_t>& supervised,
                                      double fraction, uint64_t seed, int64_t epoch, double* realised_fraction) {
  if (in_domain.size() != supervised.size())
    fail("mixed_epoch_order: ", in_domain.size(), " domain flags for ", supervised.size(), " samples");
  if (!(fraction >= 0 && fraction < 1)) fail("domain fraction must be in [0, 1), got ", fraction);
  std::vector<size_t> order, domain;
  int64_t general_tokens = 0, domain_tokens = 0;
  for (size_t i = 0; i < in_domain.size(); ++i) {
    if (in_domain[i]) {
      domain.push_back(i);
      domain_tokens += supervised[i];
    } else {
      order.push_back(i);
      general_tokens += supervised[i];
    }
  }
  // Domain tokens x with x / (x + general) = fraction.
  const double target = general_tokens > 0 ? fraction * general_tokens / (1 - fraction) : 0;
  int64_t taken = 0;
  if (general_tokens == 0) {
    order.insert(order.end(), domain.begin(), domain.end());  // nothing to balance against
    taken = domain_tokens;
  } else if (domain_tokens > 0) {
    // Whole shuffled passes over the domain samples, stopping at the sample that lands closest to the target.
    for (uint64_t pass = 1; taken < target; ++pass) {
      auto rng = stream(seed, epoch, pass);
      std::vector<size_t> round = domain;
      fisher_yates(round, rng);
      bool done = false;
      for (size_t i : round) {
        const double before = std::abs(target - taken), after = std::abs(target - (taken + supervised[i]));
        if (after > before) {
          done = true;
          break;
        }
        order.push_back(i);
        taken += supervised[i];
        if (taken >= target) break;
      }
      if (done) break;
    }
  }
  auto rng = stream(seed, epoch, 0);
  fisher_yates(order, rng);
  if (realised_fraction) {
    const int64_t total = taken + general_tokens;
    *realised_fraction = total > 0 ? static_cast<double>(taken) / total : 0.0;
  }
  return order;
}

}  // namespace kdae::data
