// Dimension legend: B = samples per batch (one per row), T = time, V = true vocabulary,
// Vp = the teacher's logit width, N = supervised rows of a batch, k = top-k, n = sampled rows.
#include "train/teacher-cache-writer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>

#include "common/error.h"
#include "common/progress.h"
#include "data/batch.h"
#include "data/dataset.h"
#include "distill/divergence.h"
#include "io/teacher-cache-format.h"

namespace kdae::train {
namespace {

namespace fs = std::filesystem;

// One batch's teacher signal: the top-k of log softmax(z / tau_c) at every supervised row.
struct TopK {
  torch::Tensor logp;      // (N, V) fp32 full log-probs (for the error estimate)
  torch::Tensor ids;       // (N, k) int32, CPU
  torch::Tensor logprobs;  // (N, k) fp32, CPU, -inf past the top-p prefix
  torch::Tensor tail;      // (N) fp64, CPU
};

TopK teacher_topk(const torch::Tensor& logits, const torch::Tensor& mask, int64_t vocab,
                  const TeacherCaptureOptions& c) {
  auto rows = distill::mask_rows(mask.to(logits.device()));                                         // (N)
  auto z = logits.reshape({-1, logits.size(2)}).index_select(0, rows).narrow(1, 0, vocab).to(torch::kFloat32);  // (N, V)
  TopK out;
  out.logp = at::log_softmax(c.temperature == 1.0 ? z : z / c.temperature, 1);  // (N, V)
  auto [values, indices] = out.logp.topk(c.top_k, 1, true, true);              // (N, k) each
  if (c.top_p < 1.0) {
    // Keep the smallest prefix whose mass reaches top_p: entry j stays when the mass before it is < p.
    auto before = values.exp().cumsum(1) - values.exp();  // (N, k)
    values = values.masked_fill(before >= c.top_p, -std::numeric_limits<float>::infinity());
  }
  // The tail is the exact mass outside the kept ids (0 at k = V), not 1 - their sum.
  auto kept = values > -std::numeric_limits<float>::infinity();                           // (N, k)
  auto kept_ids = at::where(kept, indices, indices.narrow(1, 0, 1));                      // (N, k)
  auto outside = out.logp.scatter(1, kept_ids, -std::numeric_limits<float>::infinity());  // (N, V)
  out.tail = at::logsumexp(outside, 1).exp().to(torch::kCPU, torch::kFloat64).contiguous();  // (N)
  out.ids = indices.to(torch::kCPU, torch::kInt32).contiguous();                          // (N, k)
  out.logprobs = values.to(torch::kCPU).contiguous();                                     // (N, k)
  return out;
}

// KL(full || decoded sparse) summed over the first n rows, the tail spread evenly over the
// V - k' tokens outside the k' present ids (what a reader knows of the tail's shape).
double reconstruction_error(const torch::Tensor& logp, const std::vector<uint8_t>& records, int64_t n,
                            const io::TeacherCacheHeader& header) {
  const io::RowCodec codec(header);
  const int64_t k = header.top_k, V = header.vocab;
  auto ids = torch::empty({n, k}, torch::kInt64);  // (n, k)
  auto lp = torch::empty({n, k}, torch::kFloat32);  // (n, k)
  auto tail = torch::empty({n}, torch::kFloat32);   // (n)
  for (int64_t r = 0; r < n; ++r)
    codec.decode(records.data() + r * header.record_bytes(), ids.data_ptr<int64_t>() + r * k,
                 lp.data_ptr<float>() + r * k, tail.data_ptr<float>() + r);
  auto present = lp > -std::numeric_limits<float>::infinity();                             // (n, k)
  auto others = (V - present.sum(1)).to(torch::kFloat32).clamp_min(1);                    // (n)
  auto q = (tail / others).log().clamp_min(-1e4).unsqueeze(1).expand({n, V}).clone();       // (n, V)
  auto safe_ids = at::where(present, ids, ids.narrow(1, 0, 1));                             // (n, k)
  q.scatter_(1, safe_ids, at::where(present, lp, lp.narrow(1, 0, 1)));                      // (n, V)
  auto p = logp.narrow(0, 0, n).to(torch::kCPU);                                           // (n, V)
  return (p.exp() * (p - q)).sum().item<double>();
}

struct Capture {
  fs::path out;
  io::TeacherCacheHeader base;
  TeacherCaptureOptions options;
  std::vector<io::TeacherCacheHeader> done;  // finished shards, in order
};

// Opens the shards an earlier run left in out (resume) and checks they belong to this capture.
void load_finished_shards(Capture& cap) {
  for (const auto& path : io::list_shards(cap.out)) {
    const auto shard = io::TeacherShard::open(path);
    const std::string field = io::header_mismatch(cap.base, shard->header());
    if (!field.empty())
      fail(path.string(), ": this shard was made with a different '", field, "' than this run: choose another --out, ",
           "or delete ", cap.out.string(), " to start over");
    cap.done.push_back(shard->header());
  }
}

// The dataset domain index kept by options.domain; -1 = all.
int64_t kept_domain(const Capture& cap, const data::Dataset& dataset) {
  if (cap.base.domain.empty()) return -1;
  const auto& names = dataset.domain_names;
  const auto it = std::find(names.begin(), names.end(), cap.base.domain);
  if (it == names.end()) {
    std::string have;
    for (const auto& n : names) have += (have.empty() ? "" : ", ") + n;
    usage_fail("--domain '", cap.base.domain, "' names no domain of the data (domains: ", have, ")");
  }
  return it - names.begin();
}

void capture(Capture& cap, const data::Dataset& dataset, model::Transformer& teacher, int32_t pad_id,
             torch::Device device) {
  const int64_t first = cap.options.sample_begin;
  const int64_t total = cap.options.sample_end < 0 ? static_cast<int64_t>(dataset.samples.size()) : cap.options.sample_end;
  int64_t next = cap.done.empty() ? first : cap.done.back().sample_end;
  Progress progress({.label = "cache teacher", .total = total - first, .rate_unit = "tok"});
  progress.set_step(next - first);
  const int64_t record = cap.base.record_bytes();
  const io::RowCodec codec(cap.base);
  const int64_t domain = kept_domain(cap, dataset);
  while (next < total) {
    auto header = cap.base;
    header.sample_begin = next;
    io::TeacherShardWriter writer(cap.out / io::shard_file_name(static_cast<int64_t>(cap.done.size())), header);
    while (next < total && (writer.samples() == 0 || writer.bytes() < cap.options.shard_bytes)) {
      const int64_t b_count = std::min(cap.options.batch_size, total - next);
      std::vector<std::vector<const data::TokenizedSample*>> rows;  // the batch's samples the filter keeps
      std::vector<bool> kept(static_cast<size_t>(b_count));
      int64_t tokens = 0;
      for (int64_t i = 0; i < b_count; ++i) {
        const auto& sample = dataset.samples[next + i];
        kept[i] = domain < 0 || sample.domain == domain;
        if (!kept[i]) continue;
        rows.push_back({&sample});
        tokens += static_cast<int64_t>(sample.ids.size());
      }
      std::vector<uint8_t> records;
      std::vector<int64_t> per_row;
      if (!rows.empty()) {
        const auto batch = data::collate(rows, pad_id);
        torch::InferenceMode inference;
        // Right padding under causal attention leaves every real position's logits unchanged.
        auto logits = teacher->forward(batch.input_ids.to(device)).logits;  // (B, T, Vp)
        auto mask = batch.labels != -100;                                    // (B, T)
        auto top = teacher_topk(logits, mask, cap.base.vocab, cap.options);
        const int64_t n_rows = top.ids.size(0);
        records.resize(static_cast<size_t>(n_rows * record));
        const auto* ids = top.ids.data_ptr<int32_t>();
        const auto* lps = top.logprobs.data_ptr<float>();
        const auto* tails = top.tail.data_ptr<double>();
        for (int64_t r = 0; r < n_rows; ++r)
          codec.encode(ids + r * cap.base.top_k, lps + r * cap.base.top_k, tails[r], records.data() + r * record);
        auto counts = mask.sum(1).contiguous();  // (B)
        per_row.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
        const int64_t sampled = std::min(cap.options.error_rows, n_rows);
        if (sampled > 0) writer.add_error(reconstruction_error(top.logp, records, sampled, cap.base), sampled);
      }
      int64_t offset = 0;
      size_t k = 0;
      for (int64_t b = 0; b < b_count; ++b) {
        const int64_t n = kept[b] ? per_row[k++] : 0;  // samples of other domains hold no rows
        writer.add_sample(records.data() + offset * record, n);
        offset += n;
      }
      next += b_count;
      progress.advance(b_count, tokens);
    }
    cap.done.push_back(writer.finish());
  }
  progress.finish();
}

// The summary of dir's shards, from their headers (shard i is dir/shard_file_name(i)).
TeacherCacheSummary summary_of(const fs::path& dir, const std::vector<io::TeacherCacheHeader>& shards) {
  TeacherCacheSummary s;
  for (const auto& h : shards) {
    if (s.shards == 0) s.header = h;
    s.bytes += static_cast<int64_t>(fs::file_size(dir / io::shard_file_name(s.shards)));
    ++s.shards;
    s.rows += h.rows;
    s.error_sum += h.error_sum;
    s.error_rows += h.error_rows;
  }
  return s;
}

}  // namespace

void validate_capture_options(const TeacherCaptureOptions& c) {
  if (c.top_k < 1) usage_fail("--top-k must be >= 1");
  if (!(c.top_p > 0 && c.top_p <= 1)) usage_fail("--top-p must be in (0, 1]");
  if (!(c.temperature > 0)) usage_fail("--temperature must be > 0");
  if (c.logprob_bits != 0 && (c.logprob_bits < 2 || c.logprob_bits > 16)) usage_fail("--logprob-bits must be 0 or in [2, 16]");
  if (c.batch_size < 1) usage_fail("--batch-size must be >= 1");
  if (c.shard_bytes < 1) usage_fail("--shard-mb must be > 0");
  if (c.error_rows < 0) usage_fail("--error-rows must be >= 0");
}

TeacherCacheSummary summarize_teacher_cache(const fs::path& dir) {
  std::vector<io::TeacherCacheHeader> shards;
  for (const auto& path : io::list_shards(dir)) shards.push_back(io::TeacherShard::open(path)->header());
  return summary_of(dir, shards);
}

TeacherCacheSummary write_teacher_cache(const fs::path& out, const data::Dataset& dataset, const TeacherCacheKey& key,
                                        model::Transformer& teacher, const std::string& teacher_path, int32_t pad_id,
                                        torch::Device device, const TeacherCaptureOptions& options) {
  validate_capture_options(options);
  if (dataset.samples.empty()) fail("teacher cache ", out.string(), ": no samples to cache");
  if (options.top_k > key.vocab) usage_fail("--top-k ", options.top_k, " exceeds the vocabulary (", key.vocab, ")");
  Capture cap;
  cap.out = out;
  cap.options = options;
  auto& h = cap.base;
  h.tokenizer_fingerprint = key.tokenizer_fingerprint;
  h.template_fingerprint = key.template_fingerprint;
  h.dataset_fingerprint = key.dataset_fingerprint;
  h.dataset_samples = static_cast<int64_t>(dataset.samples.size());
  h.vocab = key.vocab;
  h.padded_vocab = teacher->config().vocab_size;
  h.seq_length = key.seq_length;
  h.temperature = options.temperature;
  h.top_k = options.top_k;
  h.top_p = options.top_p;
  h.logprob_bits = options.logprob_bits ? options.logprob_bits : io::default_logprob_bits(h.top_k, h.vocab);
  h.teacher = fs::absolute(teacher_path).string();
  h.domain = options.domain;
  fs::create_directories(out);
  load_finished_shards(cap);
  if (options.sample_end > static_cast<int64_t>(dataset.samples.size()) || options.sample_begin < 0 ||
      (options.sample_end >= 0 && options.sample_begin > options.sample_end))
    fail("teacher cache ", out.string(), ": sample range [", options.sample_begin, ", ", options.sample_end,
         ") is outside the data's ", dataset.samples.size(), " samples");
  if (!cap.done.empty() && cap.done.front().sample_begin != options.sample_begin)
    fail(out.string(), ": its shards start at sample ", cap.done.front().sample_begin, ", this run's part at ",
         options.sample_begin, "; run with the number of processes that wrote them, or delete ", out.string());
  const int64_t resumed_after = cap.done.empty() ? 0 : cap.done.back().sample_end;
  if (resumed_after > options.sample_begin)
    std::cerr << "resuming after sample " << resumed_after << " (" << cap.done.size() << " shards)\n";
  capture(cap, dataset, teacher, pad_id, device);
  auto summary = summary_of(out, cap.done);  // the headers are known: no second read of the shards
  summary.resumed_after = resumed_after;
  return summary;
}

void merge_teacher_cache_parts(const fs::path& out, const std::vector<fs::path>& parts) {
  if (!io::list_shards(out).empty()) fail(out.string(), ": already holds shards; cannot merge the parts into it");
  int64_t index = 0;
  for (const auto& part : parts) {
    for (const auto& shard : io::list_shards(part)) fs::rename(shard, out / io::shard_file_name(index++));
    fs::remove(part);
  }
}

std::string describe(const TeacherCacheSummary& s) {
  char line[512];
  std::snprintf(line, sizeof line,
                "supervised tokens %lld  bytes %lld  bytes/token %.1f  record bytes %lld\n"
                "reconstruction KL(full || sparse) %.6g nats/token (mean over %lld sampled tokens)\n",
                (long long)s.rows, (long long)s.bytes, s.rows ? double(s.bytes) / double(s.rows) : 0.0,
                (long long)s.header.record_bytes(), s.error_rows ? s.error_sum / double(s.error_rows) : 0.0,
                (long long)s.error_rows);
  return line;
}

}  // namespace kdae::train
