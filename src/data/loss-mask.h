// Which tokens are supervised: decided from byte spans of the rendered text and the tokenizer's
// byte offsets, never by searching marker tokens after tokenizing. Torch-free.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/chat-template.h"
#include "data/tokenized-sample.h"
#include "tokenizer/tokenizer.h"

namespace kdae::data {

// Rule: token k with byte range [a, b) is supervised iff it shares at least one byte with an
// assistant span (a < span.end && b > span.begin). So a token that straddles a span edge is
// supervised (e.g. SentencePiece's "▁Hello" that covers the template's space before the answer:
// the model must learn to emit it). Zero-width tokens (inserted BOS/EOS) are never supervised.
std::vector<uint8_t> supervised_mask(const tok::Encoding& encoding, const std::vector<Span>& spans);

// The paper's reference format: "<s>[INST] prompt [/INST] answer</s>[INST] ... [/INST] ...".
// The supervised spans run from the end of each "[/INST]" to the next "[INST]" (or the end of the
// text); a trailing "[INST]" turn with no "[/INST]" stays masked to the end. A text missing either
// marker yields nullopt and *skip_reason says why (the caller counts and reports the skip).
// The markers are configurable (DatasetOptions::instruction_key / response_key).
std::optional<std::vector<Span>> reference_spans(std::string_view text, std::string* skip_reason,
                                                 std::string_view open = "[INST]", std::string_view close = "[/INST]");

// Tokenizes rendered text (no added special tokens: templates write BOS themselves) and marks
// the supervised tokens by the rule above.
TokenizedSample tokenize_rendered(const tok::Tokenizer& tokenizer, std::string_view text,
                                  const std::vector<Span>& spans);

}  // namespace kdae::data
