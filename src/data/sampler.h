// Deterministic, epoch-resumable sample order. The order of epoch e depends only on (seed, e, n), not
// on torch's RNG or on anything consumed before, so a resumed run at (epoch e, index k) continues with
// exactly the samples an uninterrupted run would have seen. Torch-free.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kdae::data {

// A permutation of 0..n-1 for epoch `epoch` (identity when shuffle is false).
std::vector<size_t> epoch_order(size_t n, uint64_t seed, int64_t epoch, bool shuffle = true);

// DAE domain mixing: an epoch order in which samples with in_domain[i] supply about `fraction` of the
// supervised tokens (supervised[i] per sample), independent of how many domain lines the files hold.
// Every non-domain sample appears once; domain samples are subsampled or repeated (shuffled,
// deterministic from seed and epoch) to reach the share. realised_fraction receives the share.
std::vector<size_t> mixed_epoch_order(const std::vector<bool>& in_domain, const std::vector<int64_t>& supervised,
                                      double fraction, uint64_t seed, int64_t epoch, double* realised_fraction);

}  // namespace kdae::data
