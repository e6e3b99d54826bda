// kdae teacher-cache: runs a teacher once over the tokenized, masked dataset and stores its top-k
// next-token distribution at every supervised position (io/teacher-cache-format.h), so training
// can read the teacher signal from disk. `kdae teacher-cache inspect DIR` describes a cache.
//
// Dimension legend: B = samples per batch (one per row), T = time, V = true vocabulary,
// Vp = the teacher's logit width, N = supervised rows of a batch, k = top-k, n = sampled rows.
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>

#include "cli/commands.h"
#include "cli/run-config.h"
#include "common/device.h"
#include "common/error.h"
#include "common/files.h"
#include "common/progress.h"
#include "data/batch.h"
#include "data/dataset.h"
#include "distill/divergence.h"
#include "io/hf-model.h"
#include "io/teacher-cache-format.h"
#include "tokenizer/tokenizer.h"
#include "train/teacher-cache.h"

namespace kdae::cli {
namespace {

namespace fs = std::filesystem;

struct CaptureOptions {
  int64_t top_k = 64;
  double top_p = 1.0;
  double temperature = 1.0;
  int64_t logprob_bits = 0;  // 0 = io::default_logprob_bits
  int64_t batch_size = 8;
  int64_t shard_bytes = 256ll << 20;
  int64_t error_rows = 8;    // rows per batch whose reconstruction error is measured
  std::string domain;        // "" = every sample; else only this domain's samples get rows
};

// One batch's teacher signal: the top-k of log softmax(z / tau_c) at every supervised row.
struct TopK {
  torch::Tensor logp;      // (N, V) fp32 full log-probs (for the error estimate)
  torch::Tensor ids;       // (N, k) int32, CPU
  torch::Tensor logprobs;  // (N, k) fp32, CPU, -inf past the top-p prefix
  torch::Tensor tail;      // (N) fp64, CPU
};

TopK teacher_topk(const torch::Tensor& logits, const torch::Tensor& mask, int64_t vocab, const CaptureOptions& c) {
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
  CaptureOptions options;
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

void report(const Capture& cap, std::ostream& out) {
  int64_t rows = 0, bytes = 0, error_rows = 0;
  double error_sum = 0;
  for (size_t i = 0; i < cap.done.size(); ++i) {
    rows += cap.done[i].rows;
    bytes += static_cast<int64_t>(fs::file_size(cap.out / io::shard_file_name(static_cast<int64_t>(i))));
    error_sum += cap.done[i].error_sum;
    error_rows += cap.done[i].error_rows;
  }
  char line[256];
  std::snprintf(line, sizeof line, "supervised tokens %lld  bytes %lld  bytes/token %.1f  record bytes %lld\n",
                (long long)rows, (long long)bytes, rows ? double(bytes) / double(rows) : 0.0,
                (long long)cap.base.record_bytes());
  out << line;
  std::snprintf(line, sizeof line, "reconstruction KL(full || sparse) %.6g nats/token (mean over %lld sampled tokens)\n",
                error_rows ? error_sum / double(error_rows) : 0.0, (long long)error_rows);
  out << line;
}

void capture(Capture& cap, const data::Dataset& dataset, model::Transformer& teacher, int32_t pad_id,
             torch::Device device) {
  const int64_t total = static_cast<int64_t>(dataset.samples.size());
  int64_t next = cap.done.empty() ? 0 : cap.done.back().sample_end;
  Progress progress({.label = "cache teacher", .total = total, .rate_unit = "tok"});
  progress.set_step(next);
  const int64_t record = cap.base.record_bytes();
  const io::RowCodec codec(cap.base);
  int64_t domain = -1;  // dataset domain index kept by --domain; -1 = all
  if (!cap.base.domain.empty()) {
    const auto& names = dataset.domain_names;
    const auto it = std::find(names.begin(), names.end(), cap.base.domain);
    if (it == names.end()) {
      std::string have;
      for (const auto& n : names) have += (have.empty() ? "" : ", ") + n;
      usage_fail("--domain '", cap.base.domain, "' names no domain of the data (domains: ", have, ")");
    }
    domain = it - names.begin();
  }
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

CaptureOptions capture_options(const Args& args, const train::DistillOptions& config) {
  CaptureOptions c;
  c.top_k = args.get_int("top-k");
  c.top_p = args.get_double("top-p");
  c.temperature = args.has("temperature") ? args.get_double("temperature") : config.temperature;
  c.logprob_bits = args.get_int("logprob-bits");
  c.batch_size = args.get_int("batch-size");
  c.shard_bytes = static_cast<int64_t>(args.get_double("shard-mb") * (1 << 20));
  c.error_rows = args.get_int("error-rows");
  c.domain = args.has("domain") ? args.get("domain") : "";
  if (c.top_k < 1) usage_fail("--top-k must be >= 1");
  if (!(c.top_p > 0 && c.top_p <= 1)) usage_fail("--top-p must be in (0, 1]");
  if (!(c.temperature > 0)) usage_fail("--temperature must be > 0");
  if (c.logprob_bits != 0 && (c.logprob_bits < 2 || c.logprob_bits > 16)) usage_fail("--logprob-bits must be 0 or in [2, 16]");
  if (c.batch_size < 1) usage_fail("--batch-size must be >= 1");
  if (c.shard_bytes < 1) usage_fail("--shard-mb must be > 0");
  if (c.error_rows < 0) usage_fail("--error-rows must be >= 0");
  return c;
}

// The data options of a run config (what the trainer's loader uses, so the fingerprints agree),
// with the command line's --template and --seq-length on top.
data::DatasetOptions dataset_options(const Args& args, const train::DistillOptions& o) {
  data::DatasetOptions d;
  d.chat_template = args.has("template") ? args.get("template") : o.chat_template;
  d.instruction_key = o.instruction_key;
  d.response_key = o.response_key;
  d.seq_length = args.has("seq-length") ? args.get_int("seq-length") : o.seq_length;
  d.truncation = data::parse_truncation(o.truncation);
  d.min_supervised_tokens = o.min_supervised_tokens;
  d.dedup = o.dedup;
  if (d.seq_length <= 0) usage_fail("--seq-length must be > 0");
  return d;
}

int run_create(const Args& args) {
  apply_compute_options(args);
  train::DistillOptions config;
  if (args.has("config")) apply_config_text(config, read_file(args.get("config")), args.get("config"));
  const std::string teacher_dir = args.has("teacher") ? args.get("teacher") : config.target_model_path;
  const std::string data_path = args.has("data") ? args.get("data") : config.training_data_path;
  if (teacher_dir.empty()) usage_fail("give --teacher DIR (or target_model_path in --config)");
  if (data_path.empty()) usage_fail("give --data FILE (or training_data_path in --config)");
  if (!args.has("out")) usage_fail("give --out DIR");
  Capture cap;
  cap.out = args.get("out");
  cap.options = capture_options(args, config);
  const auto dopts = dataset_options(args, config);

  const auto tokenizer = tok::Tokenizer::load(teacher_dir);
  const auto dataset = data::load_dataset(data_path, *tokenizer, dopts);
  if (dataset.samples.empty()) fail(data_path, ": no samples to cache");
  const auto device = parse_device(args.get("device"));
  auto teacher = io::load_model(teacher_dir, {device, parse_dtype(args.get("dtype"))});
  teacher->eval();
  const auto key = train::cache_key_for(*tokenizer, dataset, dopts.chat_template, dopts.seq_length);
  if (cap.options.top_k > key.vocab) usage_fail("--top-k ", cap.options.top_k, " exceeds the vocabulary (", key.vocab, ")");

  auto& h = cap.base;
  h.tokenizer_fingerprint = key.tokenizer_fingerprint;
  h.template_fingerprint = key.template_fingerprint;
  h.dataset_fingerprint = key.dataset_fingerprint;
  h.dataset_samples = static_cast<int64_t>(dataset.samples.size());
  h.vocab = key.vocab;
  h.padded_vocab = teacher->config().vocab_size;
  h.seq_length = dopts.seq_length;
  h.temperature = cap.options.temperature;
  h.top_k = cap.options.top_k;
  h.top_p = cap.options.top_p;
  h.logprob_bits = cap.options.logprob_bits ? cap.options.logprob_bits : io::default_logprob_bits(h.top_k, h.vocab);
  h.teacher = fs::absolute(teacher_dir).string();
  h.domain = cap.options.domain;
  fs::create_directories(cap.out);
  load_finished_shards(cap);
  if (!cap.done.empty()) std::cerr << "resuming after sample " << cap.done.back().sample_end << " (" << cap.done.size() << " shards)\n";
  const auto pad = tokenizer->special().pad ? tokenizer->special().pad : tokenizer->special().eos;
  capture(cap, dataset, teacher, pad ? *pad : 0, device);
  std::cout << "teacher cache " << cap.out.string() << ": " << cap.done.size() << " shards, samples "
            << h.dataset_samples << ", top_k " << h.top_k << ", logprob_bits " << h.logprob_bits << "\n";
  report(cap, std::cout);
  return 0;
}

int run_inspect(const fs::path& dir) {
  const auto cache = train::TeacherCache::open(dir);
  const auto& h = cache.header();
  Capture cap;
  cap.out = dir;
  cap.base = h;
  for (const auto& path : io::list_shards(dir)) cap.done.push_back(io::TeacherShard::open(path)->header());
  std::cout << "teacher cache " << dir.string() << "\n"
            << "format version " << io::kTeacherCacheVersion << "  codec " << h.codec << "  logprob_bits "
            << h.logprob_bits << "  id_bits " << h.id_bits() << "\n"
            << "teacher " << h.teacher << (h.domain.empty() ? std::string() : "  (domain " + h.domain + " only)") << "\n"
            << "vocab " << h.vocab << "  padded_vocab " << h.padded_vocab << "  seq_length " << h.seq_length << "\n"
            << "temperature " << h.temperature << "  top_k " << h.top_k << "  top_p " << h.top_p << "\n"
            << "tokenizer " << h.tokenizer_fingerprint << "  template " << h.template_fingerprint << "  dataset "
            << h.dataset_fingerprint << "\n"
            << "shards " << cap.done.size() << "  coverage " << cache.samples_covered() << " / " << h.dataset_samples
            << " samples" << (cache.complete() ? " (complete)" : " (incomplete: re-run kdae teacher-cache to finish)")
            << "\n";
  report(cap, std::cout);
  return 0;
}

}  // namespace

Command teacher_cache_command() {
  std::vector<Option> options = {
      {"teacher", "DIR", "teacher model directory (default: target_model_path of --config)"},
      {"data", "FILE", "JSONL training data (default: training_data_path of --config)"},
      {"config", "FILE", "run config whose data options (template, seq_length, truncation, ...) the cache must match"},
      {"template", "NAME", "chat template (default: the config's chat_template, else detected from the tokenizer)"},
      {"seq-length", "N", "maximum tokens per sample (default: the config's seq_length, 2048)"},
      {"top-k", "K", "token ids kept per supervised position", "64"},
      {"top-p", "P", "keep only the smallest prefix of the top-k with mass >= P (the rest joins the tail)", "1"},
      {"temperature", "T", "capture temperature: stores log softmax(logits / T) (default: the config's, 1)"},
      {"logprob-bits", "B", "bits per stored log-prob (2..16); 0 = the most that keeps a row within 160 bytes (4..8)", "0"},
      {"batch-size", "N", "samples per teacher forward", "8"},
      {"shard-mb", "MB", "start a new shard past this size; a re-run resumes after the last complete shard", "256"},
      {"error-rows", "N", "rows per batch whose reconstruction error KL(full || sparse) is measured", "8"},
      {"domain", "NAME", "only the samples of this domain get rows (a domain teacher's cache for kdae align); default: all", ""},
      {"out", "DIR", "cache directory (created; shards already there are resumed)"},
  };
  for (auto& o : device_options()) options.push_back(o);
  for (auto& o : compute_options()) options.push_back(o);
  Command c{"teacher-cache", "run a teacher once and store its top-k signal for training (or: inspect DIR)",
            "Writes DIR/shard-NNNNN.kdtc (format and codec: docs/teacher-cache.md). `kdae teacher-cache inspect DIR`\n"
            "prints a cache's header, coverage, bytes per token and reconstruction error.",
            options, nullptr, "[inspect DIR]"};
  c.run = [](const Args& args) {
    const auto& pos = args.positional();
    if (pos.empty()) return run_create(args);
    if (pos.size() != 2 || pos[0] != "inspect") usage_fail("expected: kdae teacher-cache [options] or kdae teacher-cache inspect DIR");
    return run_inspect(pos[1]);
  };
  return c;
}

}  // namespace kdae::cli
