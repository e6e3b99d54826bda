#pragma once

namespace kdae {
// Sets LibTorch's intra-op threads (0 = all cores) and a single inter-op thread. Call once, early.
void set_threads(int threads);
}
