#include "data/loss-mask.h"

namespace kdae::data {

std::vector<uint8_t> supervised_mask(const tok::Encoding& encoding, const std::vector<Span>& spans) {
  std::vector<uint8_t> mask(encoding.ids.size(), 0);
  // Spans and offsets are both increasing, so one merge-like pass suffices.
  size_t s = 0;
  for (size_t k = 0; k < encoding.offsets.size() && k < mask.size(); ++k) {
    const auto [a, b] = encoding.offsets[k];
    if (a >= b) continue;
    while (s < spans.size() && spans[s].end <= a) ++s;
    for (size_t j = s; j < spans.size() && spans[j].begin < b; ++j)
      if (a < spans[j].end && b > spans[j].begin) {
        mask[k] = 1;
        break;
      }
  }
  return mask;
}

std::optional<std::vector<Span>> reference_spans(std::string_view text, std::string* skip_reason,
                                                 std::string_view open, std::string_view close) {
  if (text.find(open) == std::string_view::npos || text.find(close) == std::string_view::npos) {
    const std::string_view missing = text.find(open) == std::string_view::npos ? open : close;
    if (skip_reason) *skip_reason = "no " + std::string(missing) + " marker";
    return std::nullopt;
  }
  std::vector<Span> spans;
  size_t pos = 0;
  while (true) {
    const size_t c = text.find(close, pos);
    if (c == std::string_view::npos) break;
    const size_t begin = c + close.size();
    const size_t next = text.find(open, begin);
    const size_t end = next == std::string_view::npos ? text.size() : next;
    if (end > begin) spans.push_back({begin, end});
    if (next == std::string_view::npos) break;
    pos = next + open.size();
  }
  return spans;
}

TokenizedSample tokenize_rendered(const tok::Tokenizer& tokenizer, std::string_view text,
                                  const std::vector<Span>& spans) {
  tok::Encoding encoding = tokenizer.encode_with_offsets(text, /*add_special_tokens=*/false);
  TokenizedSample sample;
  sample.supervised = supervised_mask(encoding, spans);
  sample.ids = std::move(encoding.ids);
  return sample;
}

}  // namespace kdae::data
