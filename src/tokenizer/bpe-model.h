// The BPE model of HF tokenizer.json: vocab + ranked merges, with byte_fallback, unk/fuse_unk and
// ignore_merges. Works on whatever characters the pre-tokenizer produced (byte-level stand-ins or
// raw text with "▁"). Torch-free, thread-safe for concurrent encode.
#pragma once
#include <cstdint>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kdae::tok {

struct BpeToken {
  int32_t id;
  uint32_t begin, end;  // byte range inside the word
};

class BpeModel {
 public:
  BpeModel(const nlohmann::json& model, const std::string& where);

  // Appends the tokens of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<BpeToken>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;
  int64_t size() const { return static_cast<int64_t>(id_to_token_.size()); }
  bool byte_fallback() const { return byte_fallback_; }

 private:
  void merge_word(std::string_view word, std::vector<BpeToken>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  struct Merge {
    int32_t rank, id;
  };
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank, merged id
  std::optional<int32_t> unk_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  int32_t byte_ids_[256];  // "<0xXX>" ids for byte_fallback, -1 when absent

  // Word -> tokens cache; words repeat a lot in real text.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<BpeToken>> cache_;
};

}  // namespace kdae::tok
