// A teacher cache (kdae teacher-cache) as the teacher of a training run: opens and validates the
// shards, refuses a cache made for another tokenizer, template, dataset, length or vocabulary, and
// returns the sparse teacher rows of a micro-batch for distill::sparse_distillation_loss.
//
// Dimension legend: B = batch rows, T = time, N = supervised positions of the batch, k = top-k.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "data/batch.h"
#include "distill/sparse-divergence.h"
#include "io/teacher-cache-format.h"

namespace kdae::data {
struct Dataset;
}
namespace kdae::tok {
class Tokenizer;
}

namespace kdae::train {

// What the run that reads the cache uses; every field must equal the cache's.
struct TeacherCacheKey {
  std::string tokenizer_fingerprint;  // tok::Tokenizer::fingerprint() of the student
  std::string template_fingerprint;   // data::ChatTemplate::fingerprint() ("" = not checked)
  std::string dataset_fingerprint;    // data::Dataset::fingerprint
  int64_t seq_length = 0;
  int64_t vocab = 0;                  // true vocabulary size
};

// The key of a run reading (or kdae teacher-cache writing) data loaded by data::load_dataset with this
// tokenizer and chat_template option ("" or "auto" = detected from the tokenizer, like the loader).
TeacherCacheKey cache_key_for(const tok::Tokenizer& tokenizer, const data::Dataset& dataset,
                              const std::string& chat_template, int64_t seq_length);

class TeacherCache {
 public:
  // Maps every shard of dir and validates each (see io::TeacherShard::open) and that they form one
  // cache (equal headers, consecutive sample ranges from 0). Errors name the directory or shard.
  static TeacherCache open(const std::filesystem::path& dir);

  // Throws an Error naming the cache directory and each field that differs (cache value vs run value).
  void check_compatible(const TeacherCacheKey& key) const;

  // The common header (the first shard's; per-shard fields are not meaningful here).
  const io::TeacherCacheHeader& header() const { return header_; }
  const std::filesystem::path& dir() const { return dir_; }
  int64_t samples_covered() const { return samples_covered_; }  // samples [0, samples_covered)
  bool complete() const { return samples_covered_ == header_.dataset_samples; }
  double capture_temperature() const { return header_.temperature; }
  int64_t top_k() const { return header_.top_k; }

  // The teacher rows of (some rows of) a micro-batch: row_samples[b] = the dataset samples packed in
  // batch row b, in order (train::MicroBatch::row_samples), labels (b, T) those rows' labels. Rows
  // come in the row-major order of labels != -100; per batch row the cached row counts must equal the batch's supervised
  // positions (an error naming the row and samples otherwise, e.g. a dataset that changed).
  // ids (N, k) int64, logprobs (N, k) fp32, tail (N) fp32 on `device`; temperature = tau_c.
  distill::SparseTeacherRows rows_for(const std::vector<std::vector<size_t>>& row_samples,
                                      const torch::Tensor& labels, torch::Device device) const;

 private:
  const io::TeacherShard& shard_of(size_t sample) const;

  std::filesystem::path dir_;
  io::TeacherCacheHeader header_;
  std::vector<std::shared_ptr<io::TeacherShard>> shards_;
  int64_t samples_covered_ = 0;
};

}  // namespace kdae::train
