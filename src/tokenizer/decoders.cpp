#include "tokenizer/decoders.h"

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tokenizer/utf8.h"

namespace kdae::tok {

using json = nlohmann::json;

std::string utf8_lossy(const std::string& bytes) {
  if (utf8_valid_prefix(bytes) == bytes.size()) return bytes;
  std::vector<std::pair<uint32_t, uint32_t>> origin;
  return utf8_sanitize(bytes, &origin);
}

namespace {

class SequenceDec : public Decoder {
 public:
  explicit SequenceDec(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void chain(std::vector<std::string>& t) const override {
    for (const auto& s : steps_) s->chain(t);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

// Byte-level stand-ins back to bytes. A token with any character outside the byte alphabet (an
// added token such as "<|im_end|>") is kept verbatim, as HF does.
class ByteLevelDec : public Decoder {
 public:
  void chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      std::string mapped;
      bool ok = true;
      size_t len;
      for (size_t i = 0; i < t.size() && ok; i += len) {
        const int b = unicode_to_byte(utf8_decode(t, i, &len));
        if (b < 0) ok = false;
        else mapped += static_cast<char>(b);
      }
      bytes += ok ? mapped : t;
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class MetaspaceDec : public Decoder {
 public:
  explicit MetaspaceDec(const json& c) {
    replacement_ = c.value("replacement", std::string("\xE2\x96\x81"));
    std::string scheme = c.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = c.value("add_prefix_space", true) ? "always" : "never";
    strip_first_ = scheme != "never";
  }
  void chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      for (size_t at = 0; at < t.size();) {
        if (t.compare(at, replacement_.size(), replacement_) == 0) {
          out += ' ';
          at += replacement_.size();
        } else {
          out += t[at++];
        }
      }
      if (i == 0 && strip_first_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_ = true;
};

class ReplaceDec : public Decoder {
 public:
  ReplaceDec(std::string pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::string out;
      for (size_t at = 0; at < t.size();) {
        const size_t hit = t.find(pattern_, at);
        if (hit == std::string::npos) {
          out.append(t, at, std::string::npos);
          break;
        }
        out.append(t, at, hit - at).append(content_);
        at = hit + pattern_.size();
      }
      t = std::move(out);
    }
  }

 private:
  std::string pattern_, content_;
};

// Runs of "<0xXX>" tokens become the bytes they name; an invalid UTF-8 run becomes one U+FFFD per token.
class ByteFallbackDec : public Decoder {
 public:
  void chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    size_t pending_count = 0;
    const auto flush = [&] {
      if (!pending_count) return;
      if (utf8_valid_prefix(pending) == pending.size()) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending_count; ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
      pending_count = 0;
    };
    for (auto& t : tokens) {
      unsigned value;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::sscanf(t.c_str() + 3, "%2x", &value) == 1) {
        pending += static_cast<char>(value);
        ++pending_count;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDec : public Decoder {
 public:
  void chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

// Strips up to `start` leading and `stop` trailing copies of one character from every token.
class StripDec : public Decoder {
 public:
  StripDec(std::string content, size_t start, size_t stop) : content_(std::move(content)), start_(start), stop_(stop) {}
  void chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      for (size_t i = 0; i < start_ && t.compare(0, content_.size(), content_) == 0; ++i) t.erase(0, content_.size());
      for (size_t i = 0; i < stop_ && t.size() >= content_.size() &&
                         t.compare(t.size() - content_.size(), content_.size(), content_) == 0;
           ++i)
        t.erase(t.size() - content_.size());
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& c, const std::string& where) {
  if (c.is_null()) return nullptr;
  const std::string type = c.value("type", std::string());
  try {
    if (type == "Sequence") {
      std::vector<std::unique_ptr<Decoder>> steps;
      const json& list = c.at("decoders");
      for (size_t i = 0; i < list.size(); ++i)
        if (auto d = make_decoder(list[i], str(where, ".decoders[", i, "]"))) steps.push_back(std::move(d));
      return std::make_unique<SequenceDec>(std::move(steps));
    }
    if (type == "ByteLevel") return std::make_unique<ByteLevelDec>();
    if (type == "Metaspace") return std::make_unique<MetaspaceDec>(c);
    if (type == "ByteFallback") return std::make_unique<ByteFallbackDec>();
    if (type == "Fuse") return std::make_unique<FuseDec>();
    if (type == "Strip")
      return std::make_unique<StripDec>(c.at("content").get<std::string>(), c.at("start").get<size_t>(), c.at("stop").get<size_t>());
    if (type == "Replace") {
      if (!c.at("pattern").contains("String")) fail(where, ": only String patterns are supported in a Replace decoder");
      return std::make_unique<ReplaceDec>(c["pattern"]["String"].get<std::string>(), c.at("content").get<std::string>());
    }
  } catch (const json::exception& e) {
    fail(where, ": malformed ", type, " decoder: ", e.what());
  }
  fail(where, ": unsupported decoder type '", type, "'");
}

}  // namespace kdae::tok
