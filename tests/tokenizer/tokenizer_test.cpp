// Unit tests of tokenizer pieces with hand-computed expectations; full-vocabulary parity against HF
// lives in tests/python/test_tokenizer_parity.py.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "tokenizer/tokenizer-json.h"
#include "tokenizer/utf8.h"

using namespace kdae::tok;

TEST(ByteLevel, Gpt2TableIsAReversibleBijection) {
  const auto& t = byte_to_unicode();
  EXPECT_EQ(t[' '], "\xC4\xA0");   // "Ġ" U+0120
  EXPECT_EQ(t['\n'], "\xC4\x8A");  // "Ċ" U+010A
  EXPECT_EQ(t['A'], "A");
  for (int b = 0; b < 256; ++b) {
    size_t len;
    EXPECT_EQ(unicode_to_byte(utf8_decode(t[b], 0, &len)), b);
  }
  EXPECT_EQ(unicode_to_byte(0x4E2D), -1);
}

TEST(Utf8, SanitizeReplacesMaximalSubpartsAndMapsBack) {
  std::vector<std::pair<uint32_t, uint32_t>> origin;
  // "a", E2 82 (truncated euro: one U+FFFD for 2 bytes), "b", FF (one U+FFFD), C3 A9 ("é").
  const std::string out = utf8_sanitize(std::string("a\xE2\x82" "b\xFF\xC3\xA9", 7), &origin);
  EXPECT_EQ(out, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xC3\xA9");
  ASSERT_EQ(origin.size(), out.size());
  EXPECT_EQ(origin[1], (std::pair<uint32_t, uint32_t>{1, 3}));
  EXPECT_EQ(origin[4], (std::pair<uint32_t, uint32_t>{3, 4}));
  EXPECT_EQ(origin[5], (std::pair<uint32_t, uint32_t>{4, 5}));
  EXPECT_EQ(origin[8], (std::pair<uint32_t, uint32_t>{5, 7}));
  EXPECT_EQ(utf8_valid_prefix("ok\xED\xA0\x80"), 2u);  // surrogates are invalid
}

// A tiny byte-level BPE: merges "a b" (rank 0) then "ab c" (rank 1) then "b c" (rank 2).
static const char* kTiny = R"({
  "added_tokens": [{"id": 6, "content": "<x>", "special": true, "normalized": false, "lstrip": true, "rstrip": true}],
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "bc": 5, "Ġ": 7, "Ġa": 8},
            "merges": ["a b", "ab c", "b c", "Ġ a"]}
})";

TEST(JsonTokenizer, MergesByRankAndKeepsOffsets) {
  JsonTokenizer t(kTiny, "tiny.json");
  const auto e = t.encode_with_offsets("abc bc a", false);
  EXPECT_EQ(e.ids, (std::vector<TokenId>{4, 7, 5, 8}));
  ASSERT_EQ(e.offsets.size(), 4u);
  EXPECT_EQ(e.offsets[0], (std::pair<size_t, size_t>{0, 3}));
  EXPECT_EQ(e.offsets[2], (std::pair<size_t, size_t>{4, 6}));
  EXPECT_EQ(e.offsets[3], (std::pair<size_t, size_t>{6, 8}));
  EXPECT_EQ(t.decode(e.ids, false), "abc bc a");
}

TEST(JsonTokenizer, AddedTokenStripsWhitespaceAndIsSkippable) {
  JsonTokenizer t(kTiny, "tiny.json");
  const auto e = t.encode_with_offsets("ab  <x>  c", false);
  EXPECT_EQ(e.ids, (std::vector<TokenId>{3, 6, 2}));
  EXPECT_EQ(e.offsets[1], (std::pair<size_t, size_t>{2, 9}));  // lstrip + rstrip widen the match
  EXPECT_EQ(t.decode(e.ids, true), "abc");
  EXPECT_TRUE(t.is_special(6));
  EXPECT_EQ(t.token_to_id("<x>"), 6);
}

TEST(JsonTokenizer, MalformedFilesNameTheFileAndKey) {
  const auto message = [](const std::string& text) {
    try {
      JsonTokenizer t(text, "dir/tokenizer.json");
    } catch (const kdae::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("{not json").find("dir/tokenizer.json: not valid JSON"), std::string::npos);
  EXPECT_NE(message(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})").find("merges[0]"), std::string::npos);
  EXPECT_NE(message(R"({"model": {"type": "Unigram"}})").find("Unigram"), std::string::npos);
  EXPECT_NE(message(R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(("}, "behavior": "Isolated"},
                        "model": {"type": "BPE", "vocab": {}, "merges": []}})").find("pre_tokenizer"), std::string::npos);
}

TEST(TokenizerLoad, ReadsConfigSpecialTokens) {
  const auto dir = std::filesystem::temp_directory_path() / "kdae-tok-load-test";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << kTiny;
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": {"content": "<x>"}, "eos_token": "c", "add_bos_token": true,
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})";
  const auto t = Tokenizer::load(dir);
  EXPECT_EQ(t->special().bos, 6);
  EXPECT_EQ(t->special().eos, 2);
  EXPECT_EQ(t->chat_template(), "D");
  EXPECT_EQ(t->encode("a", true), (std::vector<TokenId>{6, 0}));
  // Not std::filesystem::remove_all: libtorch.so exports its own copy, which crashes here.
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", ""}) std::remove((dir / f).c_str());
}
