// This process's memory as the kernel counts it (resident set), for the metrics a person watches to
// see what a run needs. Linux /proc figures; elsewhere 0.
#pragma once
#include <cstdint>

namespace kdae {

int64_t resident_bytes();       // now
int64_t peak_resident_bytes();  // the high-water mark since the start, or since the last reset
// Restarts the high-water mark (Linux: clear_refs 5), so a trainer can report the peak of training
// apart from loading. Silently does nothing where the kernel does not allow it.
void reset_peak_resident();

}  // namespace kdae
