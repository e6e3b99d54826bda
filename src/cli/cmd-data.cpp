// kdae data inspect: what the training data pipeline makes of a data file (counts, skips, lengths,
// domains) and one sample with its supervised tokens marked, so users can check their loss masks.
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "common/error.h"
#include "common/files.h"
#include "data/dataset.h"

namespace kdae::cli {

namespace {

data::DatasetOptions dataset_options_from(const Args& args) {
  data::DatasetOptions o;
  o.chat_template = args.get("template");
  o.instruction_key = args.get("instruction-key");
  o.response_key = args.get("response-key");
  o.seq_length = args.get_int("seq-length");
  o.truncation = data::parse_truncation(args.get("truncation"));
  o.min_supervised_tokens = args.get_int("min-supervised-tokens");
  o.dedup = args.flag("dedup");
  o.skip_invalid = !args.flag("no-skip-invalid");
  if (args.has("cache-dir")) o.cache_dir = args.get("cache-dir");
  if (o.seq_length <= 0) usage_fail("--seq-length must be > 0");
  if (o.min_supervised_tokens < 0) usage_fail("--min-supervised-tokens must be >= 0");
  return o;
}

int64_t percentile(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

void print_lengths(std::ostream& out, std::vector<int64_t> lengths) {
  if (lengths.empty()) return;
  std::sort(lengths.begin(), lengths.end());
  double mean = 0;
  for (auto n : lengths) mean += static_cast<double>(n);
  mean /= static_cast<double>(lengths.size());
  char buf[160];
  std::snprintf(buf, sizeof buf, "lengths     min %lld  p50 %lld  p90 %lld  p99 %lld  max %lld  mean %.1f\n",
                (long long)lengths.front(), (long long)percentile(lengths, 50), (long long)percentile(lengths, 90),
                (long long)percentile(lengths, 99), (long long)lengths.back(), mean);
  out << buf;
  // Up to eight equal-width buckets from the shortest to the longest sample.
  constexpr int64_t kBuckets = 8;
  const int64_t lo = lengths.front(), span = lengths.back() - lo + 1;
  const int64_t width = (span + kBuckets - 1) / kBuckets, buckets = (span + width - 1) / width;
  std::vector<int64_t> count(buckets, 0);
  for (auto n : lengths) ++count[(n - lo) / width];
  const int64_t most = *std::max_element(count.begin(), count.end());
  for (int64_t b = 0; b < buckets; ++b) {
    const int bar = static_cast<int>(40 * count[b] / most);
    std::snprintf(buf, sizeof buf, "  %6lld-%-6lld %-40s %lld\n", (long long)(lo + b * width),
                  (long long)(lo + (b + 1) * width - 1), std::string(bar, '#').c_str(), (long long)count[b]);
    out << buf;
  }
}

void print_counts(std::ostream& out, const data::Dataset& d) {
  const auto& s = d.stats;
  out << "data        " << d.path.string() << (d.from_cache ? "  (from cache)" : "") << "\n"
      << "fingerprint " << d.fingerprint << "\n"
      << "template    " << (d.chat_template.empty() ? "(none used)" : d.chat_template) << "\n"
      << "lines       " << s.lines << "\n"
      << "samples     " << s.samples << " kept\n";
  int64_t skipped = 0;
  std::string reasons;
  for (const auto& [reason, n] : s.skipped) {
    skipped += n;
    reasons += str(reasons.empty() ? "" : ", ", reason, " ", n);
  }
  out << "skipped     " << skipped << (reasons.empty() ? "" : ": " + reasons) << "\n";
  std::string ignored;
  for (const auto& [field, lines] : s.ignored_fields) ignored += str(ignored.empty() ? "" : ", ", field, " ", lines);
  out << "ignored     " << (ignored.empty() ? "no fields" : "fields (lines): " + ignored) << "\n";
  char buf[160];
  std::snprintf(buf, sizeof buf, "tokens      %lld, supervised %lld (%.1f%%)\n", (long long)s.tokens,
                (long long)s.supervised_tokens, s.tokens ? 100.0 * s.supervised_tokens / s.tokens : 0.0);
  out << buf << "truncated   " << s.truncated << "\n";
  std::vector<int64_t> per_domain(d.domain_names.size(), 0);
  for (const auto& sample : d.samples) ++per_domain[sample.domain];
  out << "domains    ";
  for (size_t i = 0; i < per_domain.size(); ++i) out << " " << d.domain_names[i] << " " << per_domain[i] << (i + 1 < per_domain.size() ? "," : "");
  out << "\n";
  print_lengths(out, s.lengths);
}

// Runs of equal supervision decoded as prefix differences, so a token's text is what it adds in
// context (a lone byte-level piece of a multi-byte character would decode to U+FFFD).
void print_sample(std::ostream& out, const data::Dataset& d, const tok::Tokenizer& tokenizer, int64_t index, bool tty) {
  const auto& s = d.samples[index];
  int64_t supervised = 0;
  for (auto f : s.supervised) supervised += f;
  const std::string open = tty ? "\x1b[1;32m" : "[[", close = tty ? "\x1b[0m" : "]]";
  out << "\nsample " << index << " (line " << d.sample_lines[index] << ", domain " << d.domain_names[s.domain]
      << ", weight " << s.weight << ", " << s.ids.size() << " tokens, " << supervised << " supervised; supervised text "
      << (tty ? "in green" : "in [[ ]]") << "):\n";
  std::string shown;
  size_t begin = 0;
  while (begin < s.ids.size()) {
    size_t end = begin;
    while (end < s.ids.size() && s.supervised[end] == s.supervised[begin]) ++end;
    const std::vector<tok::TokenId> prefix(s.ids.begin(), s.ids.begin() + end);
    const std::string full = tokenizer.decode(prefix, false);
    const std::string piece = full.compare(0, shown.size(), shown) == 0
                                  ? full.substr(shown.size())
                                  : tokenizer.decode({s.ids.begin() + begin, s.ids.begin() + end}, false);
    out << (s.supervised[begin] ? open + piece + close : piece);
    shown = full;
    begin = end;
  }
  out << "\n";
}

// One JSON line per kept sample: what the trainer will see (tests compare it with HF).
void dump_json(const std::string& path, const data::Dataset& d) {
  std::string text;
  for (size_t i = 0; i < d.samples.size(); ++i) {
    const auto& s = d.samples[i];
    nlohmann::json j = {{"line", d.sample_lines[i]}, {"ids", s.ids}, {"supervised", s.supervised},
                        {"domain", d.domain_names[s.domain]}, {"weight", s.weight}};
    text += j.dump() + "\n";
  }
  write_file_atomic(path, text);
}

}  // namespace

Command data_command() {
  Command c;
  c.name = "data";
  c.summary = "inspect a training data file: counts, skips, lengths, masks";
  c.positional_help = "inspect";
  c.description =
      "kdae data inspect reads a JSONL data file the way training does (docs/data.md) and prints line,\n"
      "sample, skip, token and per-domain counts, the length distribution, and sample N rendered with\n"
      "its supervised (loss) tokens marked: [[like this]], or in green on a terminal.";
  c.options = {
      {"data", "FILE", "JSONL data file", "", false, true},
      {"tokenizer", "DIR", "model or tokenizer directory", "", false, true},
      {"template", "NAME", "chat template for conversations: auto (detect from the tokenizer) or a built-in name", "auto"},
      {"seq-length", "N", "maximum tokens per sample", "2048"},
      {"truncation", "MODE", "over-long samples: truncate (keep the first N tokens) or drop", "truncate"},
      {"min-supervised-tokens", "N", "skip samples with fewer supervised tokens (after truncation)", "1"},
      {"dedup", "", "skip samples whose token ids repeat an earlier sample's", ""},
      {"instruction-key", "TEXT", "reference-format ({\"text\"}) instruction marker", "[INST]"},
      {"response-key", "TEXT", "reference-format ({\"text\"}) response marker", "[/INST]"},
      {"no-skip-invalid", "", "per-sample problems (empty answer, missing marker, ...) are errors, not counted skips", ""},
      {"cache-dir", "DIR", "use and fill the tokenized-dataset cache there (default: no cache)", ""},
      {"sample", "N", "which kept sample to render", "0"},
      {"dump-json", "FILE", "write every kept sample as a JSON line {line, ids, supervised, domain, weight}", ""},
  };
  c.run = [](const Args& args) {
    if (args.positional().size() != 1 || args.positional()[0] != "inspect")
      usage_fail("expected: kdae data inspect --data FILE --tokenizer DIR [options]");
    const auto options = dataset_options_from(args);
    const auto tokenizer = tok::Tokenizer::load(args.get("tokenizer"));
    const auto dataset = data::load_dataset(args.get("data"), *tokenizer, options);
    print_counts(std::cout, dataset);
    const int64_t index = args.get_int("sample");
    if (index < 0) usage_fail("--sample must be >= 0");
    if (index < static_cast<int64_t>(dataset.samples.size()))
      print_sample(std::cout, dataset, *tokenizer, index, ::isatty(STDOUT_FILENO));
    else
      std::cout << "\nno sample " << index << " (" << dataset.samples.size() << " kept)\n";
    if (args.has("dump-json")) dump_json(args.get("dump-json"), dataset);
    return 0;
  };
  return c;
}

}  // namespace kdae::cli
