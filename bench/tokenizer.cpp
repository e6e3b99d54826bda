// Encode speed of kdae's tokenizer on a corpus, single thread: bench_tokenizer MODEL_DIR CORPUS [REPEATS].
// Prints the median seconds per pass and MB/s; bench/tokenizer_peer.py measures HF tokenizers alike.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "common/files.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_tokenizer MODEL_DIR CORPUS [REPEATS]\n");
    return 2;
  }
  const auto tok = kdae::tok::Tokenizer::load(argv[1]);
  const std::string corpus = kdae::read_file(argv[2]);
  std::vector<std::string> lines;
  std::istringstream in(corpus);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  const int repeats = argc > 3 ? std::stoi(argv[3]) : 7;
  std::vector<double> secs;
  size_t tokens = 0;
  for (int r = 0; r <= repeats; ++r) {  // pass 0 warms the word cache, as HF's cache is warm too
    const auto t0 = std::chrono::steady_clock::now();
    tokens = 0;
    for (const auto& l : lines) tokens += tok->encode_with_offsets(l, true).ids.size();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) secs.push_back(s);
  }
  std::sort(secs.begin(), secs.end());
  const double med = secs[secs.size() / 2];
  std::printf("kdae %s: %zu lines, %zu tokens, median %.4f s/pass, %.2f MB/s\n", argv[1], lines.size(), tokens, med,
              corpus.size() / med / 1e6);
  return 0;
}
