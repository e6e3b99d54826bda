#include "tokenizer/sentencepiece-tokenizer.h"

#include <sentencepiece_processor.h>

#include "common/error.h"
#include "common/files.h"
#include "common/hash.h"
#include "tokenizer/tokenizer-json.h"
#include "tokenizer/utf8.h"

namespace kdae::tok {

SentencePieceTokenizer::SentencePieceTokenizer(const std::filesystem::path& model_file)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  const std::string bytes = read_file(model_file);
  const auto status = sp_->LoadFromSerializedProto(bytes);
  if (!status.ok()) fail(model_file.string(), ": not a sentencepiece model: ", status.ToString());
  model_hash_ = fnv1a_hex(bytes);
  fingerprint_ = model_hash_;
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

SpecialTokens SentencePieceTokenizer::model_specials() const {
  SpecialTokens s;
  if (sp_->bos_id() >= 0) s.bos = sp_->bos_id();
  if (sp_->eos_id() >= 0) s.eos = sp_->eos_id();
  if (sp_->pad_id() >= 0) s.pad = sp_->pad_id();
  if (sp_->unk_id() >= 0) s.unk = sp_->unk_id();
  s.add_bos = true;  // Llama / Mistral convention when tokenizer_config.json says nothing
  return s;
}

void SentencePieceTokenizer::set_special(const SpecialTokens& s, const std::string& chat_template, const std::string& config_hash) {
  special_ = s;
  chat_template_ = chat_template;
  fingerprint_ = fnv1a_hex(model_hash_ + config_hash);
}

Encoding SentencePieceTokenizer::encode_with_offsets(std::string_view text, bool add_special_tokens) const {
  std::vector<std::pair<uint32_t, uint32_t>> origin;
  const bool valid = utf8_valid_prefix(text) == text.size();
  const std::string s = valid ? std::string(text) : utf8_sanitize(text, &origin);
  const sentencepiece::ImmutableSentencePieceText spt = sp_->EncodeAsImmutableProto(s);
  Encoding enc;
  if (add_special_tokens && special_.add_bos && special_.bos) {
    enc.ids.push_back(*special_.bos);
    enc.offsets.emplace_back(0, 0);
  }
  for (size_t i = 0; i < spt.pieces_size(); ++i) {
    const auto piece = spt.pieces(static_cast<int>(i));
    enc.ids.push_back(static_cast<TokenId>(piece.id()));
    size_t b = piece.begin(), e = piece.end();
    if (!valid && e > b) {
      b = origin[b].first;
      e = origin[e - 1].second;
    } else if (!valid) {
      b = e = b < origin.size() ? origin[b].first : text.size();
    }
    enc.offsets.emplace_back(b, e);
  }
  if (add_special_tokens && special_.add_eos && special_.eos) {
    enc.ids.push_back(*special_.eos);
    enc.offsets.emplace_back(text.size(), text.size());
  }
  return enc;
}

std::string SentencePieceTokenizer::decode(const std::vector<TokenId>& ids, bool skip_special_tokens) const {
  std::vector<int> kept;
  kept.reserve(ids.size());
  for (TokenId id : ids) {
    if (id < 0 || id >= sp_->GetPieceSize()) continue;
    if (skip_special_tokens && is_special(id)) continue;
    kept.push_back(id);
  }
  std::string out;
  const auto status = sp_->Decode(kept, &out);
  if (!status.ok()) fail("sentencepiece decode failed: ", status.ToString());
  return out;
}

int64_t SentencePieceTokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::optional<TokenId> SentencePieceTokenizer::token_to_id(std::string_view token) const {
  const int id = sp_->PieceToId(token);
  // PieceToId answers unk for unknown pieces; only the unk piece itself may map to unk.
  if (id == sp_->unk_id() && sp_->IdToPiece(id) != token) return std::nullopt;
  return id;
}

std::string SentencePieceTokenizer::id_to_token(TokenId id) const {
  if (id < 0 || id >= sp_->GetPieceSize()) fail("token id ", id, " is outside the vocabulary (size ", vocab_size(), ")");
  return sp_->IdToPiece(id);
}

bool SentencePieceTokenizer::is_special(TokenId id) const {
  return id >= 0 && id < sp_->GetPieceSize() && (sp_->IsControl(id) || sp_->IsUnknown(id));
}

}  // namespace kdae::tok
