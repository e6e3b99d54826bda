// HF tokenizer.json "decoder" stages: token strings back to text.
// Supported: Sequence, ByteLevel, Metaspace, Replace (String), ByteFallback, Fuse, Strip.
#pragma once
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace kdae::tok {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // HF's decode_chain: each stage maps the token list to a new list; the result is their concatenation.
  virtual void chain(std::vector<std::string>& tokens) const = 0;
};

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& config, const std::string& where);

// Replaces invalid UTF-8 like Rust's String::from_utf8_lossy (one U+FFFD per maximal subpart).
std::string utf8_lossy(const std::string& bytes);

}  // namespace kdae::tok
