// Writing a teacher cache: runs a teacher once over the tokenized, masked dataset and stores its
// top-k next-token distribution at every supervised position (io/teacher-cache-format.h), shard by
// shard, resuming after the last complete shard. Used by `kdae teacher-cache` and `kdae demo`;
// train/teacher-cache.h reads what this writes.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "model/transformer.h"
#include "train/teacher-cache.h"

namespace kdae::train {

struct TeacherCaptureOptions {
  int64_t top_k = 64;
  double top_p = 1.0;
  double temperature = 1.0;
  int64_t logprob_bits = 0;  // 0 = io::default_logprob_bits
  int64_t batch_size = 8;
  int64_t shard_bytes = 256ll << 20;
  int64_t error_rows = 8;    // rows per batch whose reconstruction error is measured
  std::string domain;        // "" = every sample; else only this domain's samples get rows
  // This writer's samples [sample_begin, sample_end) (sample_end -1 = to the last): one rank's part.
  int64_t sample_begin = 0, sample_end = -1;
};

// Throws a usage-style Error naming the option that is out of range.
void validate_capture_options(const TeacherCaptureOptions& options);

// What a cache directory holds, summed over its shards.
struct TeacherCacheSummary {
  io::TeacherCacheHeader header;  // the first shard's
  int64_t shards = 0, rows = 0, bytes = 0, error_rows = 0;
  double error_sum = 0;  // KL(full || sparse) summed over the error rows
  int64_t resumed_after = 0;  // samples already in the directory when writing began
};

TeacherCacheSummary summarize_teacher_cache(const std::filesystem::path& dir);

// The cache of `teacher` (loaded from teacher_path, in eval mode, on `device`) over `dataset`, whose
// fingerprints are `key`, written to (or resumed in) out. Shards made with other settings are an
// error naming the shard and the first differing field.
TeacherCacheSummary write_teacher_cache(const std::filesystem::path& out, const data::Dataset& dataset,
                                        const TeacherCacheKey& key, model::Transformer& teacher,
                                        const std::string& teacher_path, int32_t pad_id, torch::Device device,
                                        const TeacherCaptureOptions& options);

// Moves the shards of `parts` (directories, in sample order, each holding consecutive samples) into
// out as out/shard-00000.kdtc, ... and removes the emptied directories: the per-rank parts of a
// multi-process capture become one cache. out must hold no shard yet.
void merge_teacher_cache_parts(const std::filesystem::path& out, const std::vector<std::filesystem::path>& parts);

// "supervised tokens ... bytes/token ..." and "reconstruction KL ..." lines.
std::string describe(const TeacherCacheSummary& summary);

}  // namespace kdae::train
