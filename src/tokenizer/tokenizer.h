// The tokenizer interface every other part of kdae uses. Implementations: HF tokenizer.json
// (tokenizer-json.cpp) and sentencepiece tokenizer.model (sentencepiece-tokenizer.cpp).
// Torch-free on purpose: tokenizing never needs tensors.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kdae::tok {

using TokenId = int32_t;

struct Encoding {
  std::vector<TokenId> ids;
  // Byte range [first, second) of the input text each token came from. Added special tokens
  // (BOS/EOS inserted by add_special_tokens) get an empty range at their position.
  std::vector<std::pair<size_t, size_t>> offsets;
};

// Special-token settings from tokenizer_config.json (and special_tokens_map.json).
struct SpecialTokens {
  std::optional<TokenId> bos, eos, pad, unk;
  bool add_bos = false;
  bool add_eos = false;
  // The id batches are right-padded with: pad, else eos, else 0 (padding is never attended to or
  // supervised, so any id serves; a real one keeps embeddings in range).
  TokenId padding() const { return pad ? *pad : eos ? *eos : 0; }
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads tokenizer.json (preferred) or tokenizer.model from a model directory, plus
  // tokenizer_config.json. Errors name the file.
  static std::unique_ptr<Tokenizer> load(const std::filesystem::path& model_dir);

  virtual Encoding encode_with_offsets(std::string_view text, bool add_special_tokens) const = 0;
  std::vector<TokenId> encode(std::string_view text, bool add_special_tokens) const {
    return encode_with_offsets(text, add_special_tokens).ids;
  }
  virtual std::string decode(const std::vector<TokenId>& ids, bool skip_special_tokens) const = 0;

  virtual int64_t vocab_size() const = 0;  // including added tokens
  virtual std::optional<TokenId> token_to_id(std::string_view token) const = 0;
  virtual std::string id_to_token(TokenId id) const = 0;
  virtual bool is_special(TokenId id) const = 0;

  const SpecialTokens& special() const { return special_; }
  // The Jinja chat_template string from tokenizer_config.json, if any (used to detect the template).
  const std::string& chat_template() const { return chat_template_; }
  // Stable hash of everything that changes token ids (vocab, merges, normalizer, special tokens):
  // equal fingerprints mean two tokenizers produce the same ids. Used by caches and teacher/student checks.
  virtual std::string fingerprint() const = 0;

 protected:
  SpecialTokens special_;
  std::string chat_template_;
};

}  // namespace kdae::tok
