#include "tokenizer/pre-tokenizers.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <tuple>

#include "common/error.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace kdae::tok {

const char* const kGpt2SplitRegex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

namespace {

using json = nlohmann::json;
using Spans = std::vector<std::pair<size_t, size_t>>;

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const std::string& name, const std::string& where) {
  if (name == "Removed") return Behavior::Removed;
  if (name == "Isolated") return Behavior::Isolated;
  if (name == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::MergedWithNext;
  if (name == "Contiguous") return Behavior::Contiguous;
  fail(where, ": unknown split behavior '", name, "'");
}

// Cuts one piece at the given matches with HF's SplitDelimiterBehavior semantics.
void split_piece(const NormalizedText& piece, const Spans& matches, Behavior behavior, bool invert,
                 std::vector<NormalizedText>& out) {
  // (begin, end, is_delimiter) covering the whole piece.
  std::vector<std::tuple<size_t, size_t, bool>> parts;
  size_t at = 0;
  for (auto [b, e] : matches) {
    if (b > at) parts.emplace_back(at, b, invert);
    parts.emplace_back(b, e, !invert);
    at = e;
  }
  if (at < piece.text.size()) parts.emplace_back(at, piece.text.size(), invert);

  std::vector<std::pair<size_t, size_t>> spans;
  bool last_delim = false;
  for (auto [b, e, delim] : parts) {
    switch (behavior) {
      case Behavior::Removed:
        if (!delim) spans.emplace_back(b, e);
        break;
      case Behavior::Isolated:
        spans.emplace_back(b, e);
        break;
      case Behavior::MergedWithPrevious:
        if (delim && !spans.empty() && !last_delim) spans.back().second = e;
        else spans.emplace_back(b, e);
        break;
      case Behavior::MergedWithNext:
        spans.emplace_back(b, e);  // merged below, right to left like HF
        break;
      case Behavior::Contiguous:
        if (delim && last_delim && !spans.empty()) spans.back().second = e;
        else spans.emplace_back(b, e);
        break;
    }
    last_delim = delim;
  }
  if (behavior == Behavior::MergedWithNext) {
    // Right to left: a delimiter joins the part after it unless that part is a delimiter too.
    spans.clear();
    bool next_delim = false;
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
      auto [b, e, delim] = *it;
      if (delim && !next_delim && !spans.empty()) spans.back().first = b;
      else spans.emplace_back(b, e);
      next_delim = delim;
    }
    std::reverse(spans.begin(), spans.end());
  }
  for (auto [b, e] : spans)
    if (e > b) out.push_back(piece.slice(b, e));
}

class SequencePre : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void apply(std::vector<NormalizedText>& pieces) const override {
    for (const auto& s : steps_) s->apply(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPre : public PreTokenizer {
 public:
  SplitPre(const json& c, const std::string& where) {
    const json& pattern = c.at("pattern");
    std::string regex;
    if (pattern.contains("Regex")) {
      regex = pattern.at("Regex").get<std::string>();
    } else {
      // A literal string: escape it with \Q...\E.
      regex = "\\Q" + pattern.at("String").get<std::string>() + "\\E";
    }
    regex_ = std::make_unique<Regex>(regex, where + ".pattern");
    behavior_ = parse_behavior(c.at("behavior").get<std::string>(), where);
    invert_ = c.value("invert", false);
  }
  void apply(std::vector<NormalizedText>& pieces) const override {
    std::vector<NormalizedText> out;
    out.reserve(pieces.size() * 4);
    Spans matches;
    for (const auto& p : pieces) {
      regex_->find_all(p.text, matches);
      split_piece(p, matches, behavior_, invert_, out);
    }
    pieces = std::move(out);
  }

 private:
  std::unique_ptr<Regex> regex_;
  Behavior behavior_;
  bool invert_;
};

// Splits with the GPT-2 regex (optionally) and maps every byte to its printable stand-in.
class ByteLevelPre : public PreTokenizer {
 public:
  ByteLevelPre(const json& c, const std::string& where) {
    add_prefix_space_ = c.value("add_prefix_space", false);
    if (c.value("use_regex", true)) regex_ = std::make_unique<Regex>(kGpt2SplitRegex, where);
  }
  void apply(std::vector<NormalizedText>& pieces) const override {
    std::vector<NormalizedText> split;
    Spans matches;
    for (auto& p : pieces) {
      if (add_prefix_space_ && !p.text.empty() && p.text[0] != ' ') p.prepend(" ");
      if (regex_) {
        regex_->find_all(p.text, matches);
        split_piece(p, matches, Behavior::Isolated, false, split);
      } else if (!p.text.empty()) {
        split.push_back(std::move(p));
      }
    }
    const auto& table = byte_to_unicode();
    for (auto& p : split) {
      NormalizedText mapped;
      mapped.text.reserve(p.text.size() * 2);
      mapped.align.reserve(p.text.size() * 2);
      for (size_t i = 0; i < p.text.size(); ++i) {
        const std::string& ch = table[static_cast<unsigned char>(p.text[i])];
        mapped.text += ch;
        mapped.align.insert(mapped.align.end(), ch.size(), p.align[i]);
      }
      p = std::move(mapped);
    }
    pieces = std::move(split);
  }

 private:
  bool add_prefix_space_ = false;
  std::unique_ptr<Regex> regex_;
};

// Sentencepiece-style: spaces become the replacement ("▁"), optionally prefixed, split before each.
class MetaspacePre : public PreTokenizer {
 public:
  MetaspacePre(const json& c, const std::string& where) {
    replacement_ = c.value("replacement", std::string("\xE2\x96\x81"));
    std::string scheme = c.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = c.value("add_prefix_space", true) ? "always" : "never";
    if (scheme != "always" && scheme != "first" && scheme != "never")
      fail(where, ": unknown Metaspace prepend_scheme '", scheme, "'");
    scheme_ = scheme;
    split_ = c.value("split", true);
  }
  void apply(std::vector<NormalizedText>& pieces) const override {
    std::vector<NormalizedText> out;
    Spans delims;
    for (auto& p : pieces) {
      p.replace(" ", replacement_);
      const bool starts = p.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == "always" || (scheme_ == "first" && !p.align.empty() && p.align[0].first == 0)))
        p.prepend(replacement_);
      if (!split_) {
        if (!p.text.empty()) out.push_back(std::move(p));
        continue;
      }
      delims.clear();
      for (size_t at = p.text.find(replacement_); at != std::string::npos; at = p.text.find(replacement_, at + replacement_.size()))
        delims.emplace_back(at, at + replacement_.size());
      split_piece(p, delims, Behavior::MergedWithNext, false, out);
    }
    pieces = std::move(out);
  }

 private:
  std::string replacement_, scheme_;
  bool split_ = true;
};

class DigitsPre : public PreTokenizer {
 public:
  DigitsPre(const json& c, const std::string& where)
      : regex_(c.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+", where) {}
  void apply(std::vector<NormalizedText>& pieces) const override {
    std::vector<NormalizedText> out;
    Spans matches;
    for (const auto& p : pieces) {
      regex_.find_all(p.text, matches);
      split_piece(p, matches, Behavior::Isolated, false, out);
    }
    pieces = std::move(out);
  }

 private:
  Regex regex_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& c, const std::string& where) {
  if (c.is_null()) return nullptr;
  const std::string type = c.value("type", std::string());
  try {
    if (type == "Sequence") {
      std::vector<std::unique_ptr<PreTokenizer>> steps;
      const json& list = c.at("pretokenizers");
      for (size_t i = 0; i < list.size(); ++i)
        if (auto s = make_pre_tokenizer(list[i], str(where, ".pretokenizers[", i, "]"))) steps.push_back(std::move(s));
      return std::make_unique<SequencePre>(std::move(steps));
    }
    if (type == "Split") return std::make_unique<SplitPre>(c, where);
    if (type == "ByteLevel") return std::make_unique<ByteLevelPre>(c, where);
    if (type == "Metaspace") return std::make_unique<MetaspacePre>(c, where);
    if (type == "Digits") return std::make_unique<DigitsPre>(c, where);
  } catch (const json::exception& e) {
    fail(where, ": malformed ", type, " pre-tokenizer: ", e.what());
  }
  fail(where, ": unsupported pre-tokenizer type '", type, "'");
}

}  // namespace kdae::tok
