// kdae teacher-cache: the command line of train/teacher-cache-writer.h (a teacher run once over the
// training data, its top-k signal stored for training). `kdae teacher-cache inspect DIR` describes a cache.
#include <iostream>

#include "cli/commands.h"
#include "cli/run-config.h"
#include "common/device.h"
#include "common/error.h"
#include "common/files.h"
#include "data/dataset.h"
#include "dist/process-group.h"
#include "io/hf-model.h"
#include "io/teacher-cache-format.h"
#include "tokenizer/tokenizer.h"
#include "train/teacher-cache.h"
#include "train/teacher-cache-writer.h"
#include "train/job.h"
#include "train/trainer.h"

namespace kdae::cli {
namespace {

namespace fs = std::filesystem;

train::TeacherCaptureOptions capture_options(const Args& args, const train::DistillOptions& config) {
  train::TeacherCaptureOptions c;
  c.top_k = args.get_int("top-k");
  c.top_p = args.get_double("top-p");
  c.temperature = args.has("temperature") ? args.get_double("temperature") : config.temperature;
  c.logprob_bits = args.get_int("logprob-bits");
  c.batch_size = args.get_int("batch-size");
  c.shard_bytes = static_cast<int64_t>(args.get_double("shard-mb") * (1 << 20));
  c.error_rows = args.get_int("error-rows");
  c.domain = args.has("domain") ? args.get("domain") : "";
  train::validate_capture_options(c);
  return c;
}

// The data options of a run config (what the trainer's loader uses, so the fingerprints agree),
// with the command line's --template and --seq-length on top.
data::DatasetOptions dataset_options(const Args& args, const train::DistillOptions& o) {
  data::DatasetOptions d = train::dataset_options(o);
  if (args.has("template")) d.chat_template = args.get("template");
  if (args.has("seq-length")) d.seq_length = args.get_int("seq-length");
  if (d.seq_length <= 0) usage_fail("--seq-length must be > 0");
  return d;
}

// One rank's share of the samples, in out/.rank-R-of-N/ (resumable there), then rank 0 merges the
// parts in rank order into one cache once every rank has finished.
train::TeacherCacheSummary write_rank_part(const fs::path& out, const data::Dataset& dataset,
                                           const train::TeacherCacheKey& key, model::Transformer& teacher,
                                           const std::string& teacher_dir, int32_t pad, torch::Device device,
                                           train::TeacherCaptureOptions options, dist::Group& group) {
  if (fs::exists(out) && !io::list_shards(out).empty())
    fail(out.string(), " already holds a merged cache; a multi-process run writes a new one (resume or extend it "
         "with one process, or choose another --out)");
  const int64_t n = static_cast<int64_t>(dataset.samples.size()), ranks = group.size();
  auto part_of = [&](int64_t r) { return out / (".rank-" + std::to_string(r) + "-of-" + std::to_string(ranks)); };
  options.sample_begin = n * group.rank() / ranks;
  options.sample_end = n * (group.rank() + 1) / ranks;
  auto part = train::write_teacher_cache(part_of(group.rank()), dataset, key, teacher, teacher_dir, pad, device, options);
  group.barrier("waiting for every rank's part of the cache");
  group.main_first("merging the parts", [&] {
    std::vector<fs::path> parts;
    for (int64_t r = 0; r < ranks; ++r) parts.push_back(part_of(r));
    train::merge_teacher_cache_parts(out, parts);
  }, false);
  auto summary = train::summarize_teacher_cache(out);
  summary.resumed_after = part.resumed_after;
  return summary;
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
  const fs::path out = args.get("out");
  const auto options = capture_options(args, config);
  const auto dopts = dataset_options(args, config);

  const auto env = dist::detect_launch_env();
  const auto device = parse_device(train::rank_device(args.get("device"), env));
  if (env.distributed())
    dist::join(env, {dist::parse_backend(config.backend), std::chrono::seconds(args.get_int("dist-timeout-s")), device});
  dist::Group& group = dist::world();
  const auto tokenizer = tok::Tokenizer::load(teacher_dir);
  data::Dataset dataset;
  group.main_first("loading the data", [&] { dataset = data::load_dataset(data_path, *tokenizer, dopts); });
  if (dataset.samples.empty()) fail(data_path, ": no samples to cache");
  auto teacher = io::load_model(teacher_dir, {device, parse_dtype(args.get("dtype"))});
  teacher->eval();
  const auto key = train::cache_key_for(*tokenizer, dataset, dopts.chat_template, dopts.seq_length);
  const int32_t pad = tokenizer->special().padding();
  train::TeacherCacheSummary summary;
  if (!group.distributed()) {
    summary = train::write_teacher_cache(out, dataset, key, teacher, teacher_dir, pad, device, options);
  } else {
    summary = write_rank_part(out, dataset, key, teacher, teacher_dir, pad, device, options, group);
    if (!group.is_main()) return 0;
  }
  const auto& h = summary.header;
  std::cout << "teacher cache " << out.string() << ": " << summary.shards << " shards, samples "
            << h.dataset_samples << ", top_k " << h.top_k << ", logprob_bits " << h.logprob_bits << "\n"
            << train::describe(summary);
  return 0;
}

int run_inspect(const fs::path& dir) {
  const auto cache = train::TeacherCache::open(dir);
  const auto& h = cache.header();
  const auto summary = train::summarize_teacher_cache(dir);
  std::cout << "teacher cache " << dir.string() << "\n"
            << "format version " << io::kTeacherCacheVersion << "  codec " << h.codec << "  logprob_bits "
            << h.logprob_bits << "  id_bits " << h.id_bits() << "\n"
            << "teacher " << h.teacher << (h.domain.empty() ? std::string() : "  (domain " + h.domain + " only)") << "\n"
            << "vocab " << h.vocab << "  padded_vocab " << h.padded_vocab << "  seq_length " << h.seq_length << "\n"
            << "temperature " << h.temperature << "  top_k " << h.top_k << "  top_p " << h.top_p << "\n"
            << "tokenizer " << h.tokenizer_fingerprint << "  template " << h.template_fingerprint << "  dataset "
            << h.dataset_fingerprint << "\n"
            << "shards " << summary.shards << "  coverage " << cache.samples_covered() << " / " << h.dataset_samples
            << " samples" << (cache.complete() ? " (complete)" : " (incomplete: re-run kdae teacher-cache to finish)")
            << "\n";
  std::cout << train::describe(summary);
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
      {"dist-timeout-s", "S", "under torchrun/srun/mpirun: how long ranks wait for each other (the slowest part's finish)", "3600"},
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
