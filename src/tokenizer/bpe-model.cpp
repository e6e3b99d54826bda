#include "tokenizer/bpe-model.h"

#include <nlohmann/json.hpp>

#include <queue>

#include "common/error.h"
#include "tokenizer/utf8.h"

namespace kdae::tok {

using json = nlohmann::json;

static constexpr size_t kMaxCachedWordBytes = 256;
static constexpr size_t kMaxCacheEntries = 200000;

BpeModel::BpeModel(const json& m, const std::string& where) {
  try {
    for (const auto& [token, id] : m.at("vocab").items()) {
      const auto i = id.get<int32_t>();
      if (i < 0) fail(where, ".vocab: negative id for token '", token, "'");
      vocab_.emplace(token, i);
      if (static_cast<size_t>(i) >= id_to_token_.size()) id_to_token_.resize(i + 1);
      id_to_token_[i] = token;
    }
    const json& merges = m.at("merges");
    merges_.reserve(merges.size());
    for (size_t r = 0; r < merges.size(); ++r) {
      std::string left, right;
      if (merges[r].is_string()) {  // "a b" (older files)
        const auto s = merges[r].get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) fail(where, ".merges[", r, "]: '", s, "' is not two tokens");
        left = s.substr(0, sp);
        right = s.substr(sp + 1);
      } else {  // ["a", "b"]
        left = merges[r].at(0).get<std::string>();
        right = merges[r].at(1).get<std::string>();
      }
      const auto l = vocab_.find(left), rt = vocab_.find(right), merged = vocab_.find(left + right);
      if (l == vocab_.end() || rt == vocab_.end() || merged == vocab_.end())
        fail(where, ".merges[", r, "]: '", left, "' + '", right, "' uses a token missing from the vocab");
      const uint64_t key = (static_cast<uint64_t>(l->second) << 32) | static_cast<uint32_t>(rt->second);
      merges_.emplace(key, Merge{static_cast<int32_t>(r), merged->second});  // first (lowest) rank wins
    }
    if (m.contains("unk_token") && m["unk_token"].is_string()) {
      const auto u = vocab_.find(m["unk_token"].get<std::string>());
      if (u == vocab_.end()) fail(where, ".unk_token '", m["unk_token"].get<std::string>(), "' is not in the vocab");
      unk_ = u->second;
    }
    fuse_unk_ = m.value("fuse_unk", false);
    byte_fallback_ = m.value("byte_fallback", false);
    ignore_merges_ = m.value("ignore_merges", false);
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (m.contains(key) && m[key].is_string() && !m[key].get<std::string>().empty())
        fail(where, ".", key, " is not supported (used by WordPiece-style BPE, not by Llama/Qwen/Mistral)");
    if (m.contains("dropout") && m["dropout"].is_number() && m["dropout"].get<double>() > 0)
      fail(where, ".dropout: BPE dropout is a training-time option and is not supported");
  } catch (const json::exception& e) {
    fail(where, ": malformed BPE model: ", e.what());
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    const auto it = vocab_.find(name);
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::tokenize(std::string_view word, std::vector<BpeToken>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    const auto it = vocab_.find(std::string(word));
    if (it != vocab_.end()) {
      out.push_back({it->second, 0, static_cast<uint32_t>(word.size())});
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard lock(cache_mutex_);
    const auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() < kMaxCacheEntries) cache_.emplace(std::move(key), std::vector<BpeToken>(out.begin() + first, out.end()));
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<BpeToken>& out) const {
  struct Symbol {
    int32_t id;
    uint32_t begin, end;
    int32_t prev, next;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  const auto push = [&](int32_t id, size_t b, size_t e) {
    // fuse_unk: consecutive unknown characters become one unk token.
    if (fuse_unk_ && unk_ && id == *unk_ && !sym.empty() && sym.back().id == *unk_) {
      sym.back().end = static_cast<uint32_t>(e);
      return;
    }
    sym.push_back({id, static_cast<uint32_t>(b), static_cast<uint32_t>(e), 0, 0});
  };
  std::string ch;
  for (size_t i = 0; i < word.size();) {
    const size_t len = std::min(utf8_seq_len(static_cast<unsigned char>(word[i])), word.size() - i);
    ch.assign(word.substr(i, len));
    const auto it = vocab_.find(ch);
    if (it != vocab_.end()) {
      push(it->second, i, i + len);
    } else {
      bool all_bytes = byte_fallback_;
      for (size_t k = 0; all_bytes && k < len; ++k) all_bytes = byte_ids_[static_cast<unsigned char>(word[i + k])] >= 0;
      if (all_bytes) {
        for (size_t k = 0; k < len; ++k) push(byte_ids_[static_cast<unsigned char>(word[i + k])], i + k, i + k + 1);
      } else if (unk_) {
        push(*unk_, i, i + len);
      }  // no unk token: the character is dropped, as HF does
    }
    i += len;
  }
  const int32_t n = static_cast<int32_t>(sym.size());
  for (int32_t i = 0; i < n; ++i) {
    sym[i].prev = i - 1;
    sym[i].next = i + 1 < n ? i + 1 : -1;
  }
  const auto find_merge = [&](int32_t left) -> const Merge* {
    const int32_t right = sym[left].next;
    if (right < 0) return nullptr;
    const uint64_t key = (static_cast<uint64_t>(sym[left].id) << 32) | static_cast<uint32_t>(sym[right].id);
    const auto it = merges_.find(key);
    return it == merges_.end() ? nullptr : &it->second;
  };
  // Min-heap on (rank, position): the lowest-ranked merge first, leftmost among equals.
  using Entry = std::pair<int32_t, int32_t>;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  for (int32_t i = 0; i + 1 < n; ++i)
    if (const Merge* m = find_merge(i)) heap.emplace(m->rank, i);
  while (!heap.empty()) {
    const auto [rank, left] = heap.top();
    heap.pop();
    if (sym[left].end == sym[left].begin) continue;  // removed
    const Merge* m = find_merge(left);
    if (!m || m->rank != rank) continue;  // stale entry
    const int32_t right = sym[left].next;
    sym[left].id = m->id;
    sym[left].end = sym[right].end;
    sym[left].next = sym[right].next;
    if (sym[right].next >= 0) sym[sym[right].next].prev = left;
    sym[right].end = sym[right].begin;  // mark removed
    if (sym[left].prev >= 0)
      if (const Merge* pm = find_merge(sym[left].prev)) heap.emplace(pm->rank, sym[left].prev);
    if (const Merge* nm = find_merge(left)) heap.emplace(nm->rank, left);
  }
  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = sym[i].next) out.push_back({sym[i].id, sym[i].begin, sym[i].end});
}

}  // namespace kdae::tok
