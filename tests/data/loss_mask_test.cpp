// Loss mask and reference-format spans, with fake tokenizers whose offsets are known by construction.
#include <gtest/gtest.h>

#include "common/error.h"
#include "data/chat-template.h"
#include "data/loss-mask.h"

using namespace kdae::data;
using kdae::tok::Encoding;

namespace {

// One token per byte.
Encoding byte_tokens(const std::string& text) {
  Encoding e;
  for (size_t i = 0; i < text.size(); ++i) {
    e.ids.push_back(static_cast<unsigned char>(text[i]));
    e.offsets.push_back({i, i + 1});
  }
  return e;
}

// SentencePiece-like: a token is a run of non-spaces together with the one space before it, so
// " hello" after "[/INST]" straddles the left edge of the answer span.
Encoding word_tokens(const std::string& text) {
  Encoding e;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i + (text[i] == ' ' ? 1 : 0);
    while (j < text.size() && text[j] != ' ') ++j;
    e.ids.push_back(static_cast<int32_t>(e.ids.size()));
    e.offsets.push_back({i, j});
    i = j;
  }
  return e;
}

}  // namespace

TEST(LossMask, BytesInsideSpansExactly) {
  const auto t = ChatTemplate::by_name("mistral", "<s>", "</s>");
  const auto r = t.render({{"system", "S"}, {"user", "q1"}, {"assistant", "a1 x"}, {"user", "q2"}, {"assistant", "a2"}});
  ASSERT_EQ(r.text, "<s> [INST] S\n\nq1 [/INST] a1 x</s> [INST] q2 [/INST] a2</s>");
  const auto mask = supervised_mask(byte_tokens(r.text), r.assistant_spans);
  std::string supervised;
  for (size_t i = 0; i < mask.size(); ++i)
    if (mask[i]) supervised += r.text[i];
  EXPECT_EQ(supervised, "a1 x</s>a2</s>");
}

TEST(LossMask, StraddlingTokenIsSupervisedZeroWidthIsNot) {
  const std::string text = "[INST] q [/INST] hello world</s>[INST] more";
  const std::vector<Span> spans = {{17, 32}};  // "hello world</s>"
  ASSERT_EQ(text.substr(17, 15), "hello world</s>");
  Encoding e = word_tokens(text);
  // A zero-width inserted BOS at the front.
  e.ids.insert(e.ids.begin(), 1);
  e.offsets.insert(e.offsets.begin(), {0, 0});
  const auto mask = supervised_mask(e, spans);
  // tokens: <bos>, "[INST]", " q", " [/INST]", " hello", " world</s>[INST]", " more"
  ASSERT_EQ(mask.size(), 7u);
  EXPECT_EQ(mask, (std::vector<uint8_t>{0, 0, 0, 0, 1, 1, 0}));
}

TEST(ReferenceFormat, SpansAndTrailingQuestion) {
  const std::string text = "<s>[INST] p1 [/INST] a1</s>[INST] p2 [/INST] a2</s>[INST] p3";
  std::string why;
  const auto spans = reference_spans(text, &why);
  ASSERT_TRUE(spans.has_value());
  ASSERT_EQ(spans->size(), 2u);
  EXPECT_EQ(text.substr((*spans)[0].begin, (*spans)[0].end - (*spans)[0].begin), " a1</s>");
  EXPECT_EQ(text.substr((*spans)[1].begin, (*spans)[1].end - (*spans)[1].begin), " a2</s>");
  // Ends with an answer: supervised to the end.
  const std::string open_end = "[INST] p [/INST] answer";
  const auto s2 = reference_spans(open_end, &why);
  ASSERT_EQ(s2->size(), 1u);
  EXPECT_EQ((*s2)[0], (Span{16, open_end.size()}));
}

TEST(ReferenceFormat, MissingMarkerIsSkippedWithReason) {
  std::string why;
  EXPECT_FALSE(reference_spans("plain text", &why).has_value());
  EXPECT_EQ(why, "no [INST] marker");
  EXPECT_FALSE(reference_spans("<s>[INST] only a question", &why).has_value());
  EXPECT_EQ(why, "no [/INST] marker");
}

TEST(ChatTemplate, DetectsAndRejects) {
  EXPECT_EQ(ChatTemplate::detect("{{ '<|im_start|>' }}", "", "")->name(), "chatml");
  EXPECT_FALSE(ChatTemplate::detect("{{ messages }}", "", "").has_value());
  EXPECT_THROW(ChatTemplate::by_name("nope", "", ""), kdae::UsageError);
  const auto t = ChatTemplate::by_name("chatml", "", "");
  EXPECT_THROW(t.render({{"robot", "x"}}), kdae::Error);
  EXPECT_THROW(ChatTemplate::by_name("mistral-legacy", "<s>", "</s>").render({{"system", "s"}, {"user", "u"}}),
               kdae::Error);
}

namespace {
// A Tokenizer subclass over byte tokens, to drive tokenize_rendered through the real interface.
struct ByteTokenizer : kdae::tok::Tokenizer {
  Encoding encode_with_offsets(std::string_view text, bool) const override { return byte_tokens(std::string(text)); }
  std::string decode(const std::vector<kdae::tok::TokenId>& ids, bool) const override {
    return std::string(ids.begin(), ids.end());
  }
  int64_t vocab_size() const override { return 256; }
  std::optional<kdae::tok::TokenId> token_to_id(std::string_view) const override { return std::nullopt; }
  std::string id_to_token(kdae::tok::TokenId id) const override { return std::string(1, static_cast<char>(id)); }
  bool is_special(kdae::tok::TokenId) const override { return false; }
  std::string fingerprint() const override { return "bytes"; }
};
}  // namespace

TEST(LossMask, TokenizeRenderedLlama3) {
  const auto r = ChatTemplate::by_name("llama3", "<|begin_of_text|>", "<|eot_id|>")
                     .render({{"user", " q "}, {"assistant", " ok \n"}});
  EXPECT_EQ(r.text, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nok<|eot_id|>");
  const auto s = tokenize_rendered(ByteTokenizer(), r.text, r.assistant_spans);
  ASSERT_EQ(s.ids.size(), r.text.size());
  size_t n = 0;
  for (auto m : s.supervised) n += m;
  EXPECT_EQ(n, std::string("ok<|eot_id|>").size());
  EXPECT_EQ(s.supervised.back(), 1);
}
