// Dimension legend: B = batch rows, T = time, N = supervised positions, k = top-k.
#include "train/teacher-cache.h"

#include <algorithm>
#include <sstream>

#include "common/error.h"
#include "data/chat-template.h"
#include "data/dataset.h"
#include "tokenizer/tokenizer.h"

namespace kdae::train {

TeacherCacheKey cache_key_for(const tok::Tokenizer& tokenizer, const data::Dataset& dataset,
                              const std::string& chat_template, int64_t seq_length) {
  const auto chat = data::chat_template_for(tokenizer, chat_template);  // as data::load_dataset resolves it
  TeacherCacheKey key;
  key.tokenizer_fingerprint = tokenizer.fingerprint();
  key.template_fingerprint = chat ? chat->fingerprint() : "no template";
  key.dataset_fingerprint = dataset.fingerprint;
  key.seq_length = seq_length;
  key.vocab = tokenizer.vocab_size();
  return key;
}

TeacherCache TeacherCache::open(const std::filesystem::path& dir) {
  TeacherCache cache;
  cache.dir_ = dir;
  const auto paths = io::list_shards(dir);
  if (paths.empty())
    fail(dir.string(), ": no teacher cache shards (shard-00000.kdtc, ...): create them with kdae teacher-cache");
  for (const auto& path : paths) {
    auto shard = io::TeacherShard::open(path);
    const auto& h = shard->header();
    if (cache.shards_.empty()) {
      cache.header_ = h;
    } else {
      const std::string field = io::header_mismatch(cache.header_, h);
      if (!field.empty())
        fail(path.string(), ": header field '", field, "' differs from ", paths[0].string(),
             "'s: the shards come from different teacher-cache runs");
    }
    if (h.sample_begin != cache.samples_covered_)
      fail(path.string(), ": starts at sample ", h.sample_begin, " but the shards before it end at sample ",
           cache.samples_covered_);
    cache.samples_covered_ = h.sample_end;
    cache.shards_.push_back(std::move(shard));
  }
  return cache;
}

void TeacherCache::check_compatible(const TeacherCacheKey& key) const {
  std::ostringstream diffs;
  auto compare = [&](const char* what, const auto& cached, const auto& run) {
    if (cached != run) diffs << "\n  " << what << ": cache has " << cached << ", this run has " << run;
  };
  compare("tokenizer fingerprint", header_.tokenizer_fingerprint, key.tokenizer_fingerprint);
  if (!key.template_fingerprint.empty())
    compare("chat template fingerprint", header_.template_fingerprint, key.template_fingerprint);
  compare("dataset fingerprint", header_.dataset_fingerprint, key.dataset_fingerprint);
  compare("seq_length", header_.seq_length, key.seq_length);
  compare("vocabulary size", header_.vocab, key.vocab);
  const std::string text = diffs.str();
  if (!text.empty())
    fail("teacher cache ", dir_.string(), " was made for another setup (re-create it with kdae teacher-cache):", text);
}

const io::TeacherShard& TeacherCache::shard_of(size_t sample) const {
  const auto s = static_cast<int64_t>(sample);
  if (s >= samples_covered_)
    fail("teacher cache ", dir_.string(), " covers samples [0, ", samples_covered_, ") but sample ", s,
         " was asked for: finish the cache with kdae teacher-cache (it resumes)");
  auto it = std::upper_bound(shards_.begin(), shards_.end(), s,
                             [](int64_t v, const auto& shard) { return v < shard->header().sample_begin; });
  return **(it - 1);
}

distill::SparseTeacherRows TeacherCache::rows_for(const std::vector<std::vector<size_t>>& row_samples,
                                                  const torch::Tensor& labels, torch::Device device) const {
  if (!labels.defined() || labels.dim() != 2 || labels.size(0) != static_cast<int64_t>(row_samples.size()))
    fail("teacher cache rows_for: ", row_samples.size(), " row sample lists for a batch of labels ",
         labels.defined() ? labels.sizes() : c10::IntArrayRef{});
  auto counts = (labels.to(torch::kCPU) != -100).sum(1);  // (B)
  const int64_t k = header_.top_k;
  const int64_t n_rows = counts.sum().item<int64_t>();
  auto ids = torch::empty({n_rows, k}, torch::TensorOptions().dtype(torch::kInt64));       // (N, k)
  auto logprobs = torch::empty({n_rows, k}, torch::TensorOptions().dtype(torch::kFloat32));  // (N, k)
  auto tail = torch::empty({n_rows}, torch::TensorOptions().dtype(torch::kFloat32));        // (N)
  auto* ids_p = ids.data_ptr<int64_t>();
  auto* lp_p = logprobs.data_ptr<float>();
  auto* tail_p = tail.data_ptr<float>();
  const io::RowCodec codec(header_);
  int64_t n = 0;
  for (size_t b = 0; b < row_samples.size(); ++b) {
    int64_t row_count = 0;
    for (size_t sample : row_samples[b]) {
      const auto& shard = shard_of(sample);
      const auto [first, last] = shard.sample_rows(static_cast<int64_t>(sample));
      row_count += last - first;
      if (n + (last - first) > n_rows) break;  // reported below
      for (int64_t r = first; r < last; ++r, ++n) codec.decode(shard.record(r), ids_p + n * k, lp_p + n * k, tail_p + n);
    }
    if (row_count != counts[static_cast<int64_t>(b)].item<int64_t>()) {
      std::ostringstream samples;
      for (size_t s : row_samples[b]) samples << " " << s;
      fail("teacher cache ", dir_.string(), " holds ", row_count, " rows for the samples", samples.str(),
           " of batch row ", b, " but the batch supervises ", counts[static_cast<int64_t>(b)].item<int64_t>(),
           " positions there: the dataset or its tokenization differs from the cache's");
    }
  }
  return {ids.to(device), logprobs.to(device), tail.to(device), header_.temperature};
}

}  // namespace kdae::train
