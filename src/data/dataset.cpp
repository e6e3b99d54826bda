#include "data/dataset.h"

#include <iostream>
#include <optional>
#include <unordered_map>

#include "common/error.h"
#include "common/files.h"
#include "common/hash.h"
#include "data/dataset-cache.h"
#include "data/jsonl-reader.h"
#include "data/loss-mask.h"
#include "data/pickle-reader.h"
#include "tokenizer/tokenizer-json.h"

namespace kdae::data {
namespace fs = std::filesystem;

Truncation parse_truncation(const std::string& name) {
  if (name == "truncate") return Truncation::truncate;
  if (name == "drop") return Truncation::drop;
  usage_fail("truncation must be 'truncate' or 'drop', got '", name, "'");
}

std::optional<ChatTemplate> chat_template_for(const tok::Tokenizer& tokenizer, const std::string& name) {
  auto text_of = [&](std::optional<tok::TokenId> id) { return id ? tokenizer.id_to_token(*id) : std::string(); };
  const std::string bos = text_of(tokenizer.special().bos), eos = text_of(tokenizer.special().eos);
  if (!name.empty() && name != "auto") return ChatTemplate::by_name(name, bos, eos);
  return ChatTemplate::detect(tokenizer.chat_template(), bos, eos);
}

namespace {

// Everything that changes the samples: data bytes, tokenizer, template and every option.
std::string fingerprint_of(std::string_view bytes, const tok::Tokenizer& tokenizer,
                           const std::optional<ChatTemplate>& chat, const DatasetOptions& o) {
  return fnv1a_hex(str("kdae-dataset 1\x1f", fnv1a_hex(bytes), '\x1f', bytes.size(), '\x1f',
                            tokenizer.fingerprint(), '\x1f', chat ? chat->fingerprint() : "no template", '\x1f',
                            o.instruction_key, '\x1f', o.response_key, '\x1f', o.seq_length, '\x1f',
                            o.truncation == Truncation::truncate ? "truncate" : "drop", '\x1f',
                            o.min_supervised_tokens, '\x1f', o.dedup, '\x1f', o.skip_invalid));
}

// Exact-duplicate detection on token ids: a hash narrows, the ids decide.
class Dedup {
 public:
  bool seen_before(const std::vector<int32_t>& ids, size_t index, const std::vector<TokenizedSample>& kept) {
    const std::string_view key(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int32_t));
    auto& bucket = buckets_[std::hash<std::string_view>{}(key)];
    for (size_t other : bucket)
      if (kept[other].ids == ids) return true;
    bucket.push_back(index);
    return false;
  }

 private:
  std::unordered_map<size_t, std::vector<size_t>> buckets_;
};

class Builder {
 public:
  Builder(const fs::path& path, const tok::Tokenizer& tokenizer, const DatasetOptions& o,
          const std::optional<ChatTemplate>& chat)
      : tokenizer_(tokenizer), o_(o), chat_(chat) {
    d_.path = path;
    d_.domain_names = {"general"};
  }

  void add(JsonlRecord&& r) {
    ++d_.stats.lines;
    for (const auto& field : r.ignored_fields) ++d_.stats.ignored_fields[field];
    where_ = str(d_.path.string(), ":", r.line);
    if (!r.skip_reason.empty()) return invalid(r.skip_reason, r.skip_reason);
    std::optional<Rendered> rendered = render(r);
    if (!rendered) return;
    TokenizedSample s = tokenize_rendered(tokenizer_, rendered->text, rendered->assistant_spans);
    const bool cut = static_cast<int64_t>(s.ids.size()) > o_.seq_length;
    if (cut) {
      if (o_.truncation == Truncation::drop) return skip("too long");
      s.ids.resize(o_.seq_length);
      s.supervised.resize(o_.seq_length);
    }
    int64_t supervised = 0;
    for (uint8_t f : s.supervised) supervised += f;
    if (supervised < std::max<int64_t>(o_.min_supervised_tokens, 1)) return skip("too few supervised tokens");
    if (o_.dedup && dedup_.seen_before(s.ids, d_.samples.size(), d_.samples)) return skip("duplicate");
    s.domain = domain_index(r.domain);
    s.weight = r.weight;
    d_.stats.truncated += cut;
    d_.stats.tokens += static_cast<int64_t>(s.ids.size());
    d_.stats.supervised_tokens += supervised;
    d_.stats.lengths.push_back(static_cast<int64_t>(s.ids.size()));
    d_.sample_lines.push_back(r.line);
    d_.samples.push_back(std::move(s));
  }

  Dataset finish() {
    d_.stats.samples = static_cast<int64_t>(d_.samples.size());
    if (chat_ && used_template_) d_.chat_template = chat_->name();
    return std::move(d_);
  }

 private:
  std::optional<Rendered> render(const JsonlRecord& r) {
    if (r.form == SampleForm::text) {
      std::string why;
      auto spans = reference_spans(r.text, &why, o_.instruction_key, o_.response_key);
      if (!spans) return invalid(why, why), std::nullopt;
      return Rendered{r.text, std::move(*spans)};
    }
    if (!chat_)
      fail(where_, ": a ", form_name(r.form), " sample needs a chat template, and the tokenizer's chat_template "
           "matches no built-in one; set chat_template (kdae data inspect --template) to one of: ", template_names());
    used_template_ = true;
    try {
      return chat_->render(r.messages);
    } catch (const Error& e) {
      invalid("roles the template cannot render", e.what());
      return std::nullopt;
    }
  }

  // A per-sample content problem: counted, or fatal without skip_invalid.
  void invalid(const std::string& reason, const std::string& detail) {
    if (!o_.skip_invalid) fail(where_, ": ", detail);
    skip(reason);
  }
  void skip(const std::string& reason) { ++d_.stats.skipped[reason]; }

  int64_t domain_index(const std::string& name) {
    for (size_t i = 0; i < d_.domain_names.size(); ++i)
      if (d_.domain_names[i] == name) return static_cast<int64_t>(i);
    d_.domain_names.push_back(name);
    return static_cast<int64_t>(d_.domain_names.size() - 1);
  }

  static std::string template_names() {
    std::string s;
    for (const auto& n : ChatTemplate::names()) s += (s.empty() ? "" : ", ") + n;
    return s;
  }

  const tok::Tokenizer& tokenizer_;
  const DatasetOptions& o_;
  const std::optional<ChatTemplate>& chat_;
  Dataset d_;
  Dedup dedup_;
  std::string where_;
  bool used_template_ = false;
};

void warn(Dataset& d, const std::string& message) {
  std::cerr << "kdae: warning: " << message << "\n";
  d.warnings.push_back(message);
}

// Said on every load, cached or not: the file still carries the fields.
void warn_ignored_fields(Dataset& d) {
  if (d.stats.ignored_fields.empty()) return;
  std::string list;
  for (const auto& [field, lines] : d.stats.ignored_fields)
    list += str(list.empty() ? "" : ", ", field, " (", lines, lines == 1 ? " line)" : " lines)");
  warn(d, str(d.path.string(), ": ignored fields: ", list, "; the fields read are listed in docs/data.md"));
}

}  // namespace

Dataset load_dataset(const fs::path& jsonl, const tok::Tokenizer& tokenizer, const DatasetOptions& options) {
  if (options.seq_length <= 0) usage_fail("seq_length must be > 0, got ", options.seq_length);
  const std::string bytes = read_file(jsonl);
  const auto chat = chat_template_for(tokenizer, options.chat_template);
  const std::string fingerprint = fingerprint_of(bytes, tokenizer, chat, options);

  std::string cache_problem;
  fs::path cache_file;
  if (!options.cache_dir.empty()) {
    cache_file = dataset_cache_file(options.cache_dir, fingerprint);
    if (auto cached = read_dataset_cache(cache_file, fingerprint, &cache_problem)) {
      cached->path = jsonl;
      warn_ignored_fields(*cached);
      return std::move(*cached);
    }
  }

  Builder builder(jsonl, tokenizer, options, chat);
  const auto add = [&](JsonlRecord&& r) { builder.add(std::move(r)); };
  if (looks_like_pickle(bytes))
    read_reference_pickle(bytes, jsonl.string(), add);  // the reference's own data files
  else
    read_jsonl(bytes, jsonl.string(), add);
  Dataset d = builder.finish();
  d.fingerprint = fingerprint;
  warn_ignored_fields(d);
  if (!cache_problem.empty())
    warn(d, str("dataset cache ", cache_file.string(), " is invalid (", cache_problem, "); rebuilt it"));
  if (!cache_file.empty()) {
    try {
      write_dataset_cache(cache_file, d);
    } catch (const std::exception& e) {
      // A read-only or full cache directory costs a re-tokenization next time, nothing more.
      warn(d, str("could not write the dataset cache: ", e.what()));
    }
  }
  return d;
}

}  // namespace kdae::data
