// B = rows, T = time.
#include "data/batch.h"

#include "common/error.h"

namespace kdae::data {

Batch collate(const std::vector<std::vector<const TokenizedSample*>>& rows, int32_t pad_id, int64_t length) {
  const int64_t B = static_cast<int64_t>(rows.size());
  if (B == 0) fail("collate: empty batch");
  int64_t T = length;
  for (const auto& row : rows) {
    int64_t n = 0;
    for (const auto* s : row) n += static_cast<int64_t>(s->ids.size());
    if (length > 0 && n > length) fail("collate: a row holds ", n, " tokens, more than the length ", length);
    T = std::max(T, n);
  }
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  Batch batch;
  batch.input_ids = torch::full({B, T}, pad_id, i64);                         // (B, T)
  batch.labels = torch::full({B, T}, -100, i64);                              // (B, T)
  batch.token_mask = torch::zeros({B, T}, torch::TensorOptions().dtype(torch::kBool));  // (B, T)
  batch.position_ids = torch::zeros({B, T}, i64);                             // (B, T)
  batch.segment_ids = torch::zeros({B, T}, torch::TensorOptions().dtype(torch::kInt32));  // (B, T)
  batch.domain = torch::zeros({B}, i64);                                      // (B)
  batch.weight = torch::ones({B}, torch::TensorOptions().dtype(torch::kFloat32));  // (B)
  auto ids = batch.input_ids.accessor<int64_t, 2>();
  auto labels = batch.labels.accessor<int64_t, 2>();
  auto mask = batch.token_mask.accessor<bool, 2>();
  auto pos = batch.position_ids.accessor<int64_t, 2>();
  auto seg = batch.segment_ids.accessor<int32_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0;
    int32_t k = 0;
    for (const auto* s : rows[b]) {
      if (s->supervised.size() != s->ids.size()) fail("collate: sample has ", s->ids.size(), " ids but ",
                                                      s->supervised.size(), " mask entries");
      if (k > 0 && (s->domain != rows[b][0]->domain || s->weight != rows[b][0]->weight))
        fail("collate: row ", b, " packs samples of different domain or weight");
      ++k;
      const int64_t n = static_cast<int64_t>(s->ids.size());
      for (int64_t i = 0; i < n; ++i, ++t) {
        ids[b][t] = s->ids[i];
        mask[b][t] = s->supervised[i] != 0;
        pos[b][t] = i;
        seg[b][t] = k;
        // The last token of a sample predicts nothing: its successor belongs to another sample.
        if (i + 1 < n && s->supervised[i + 1]) labels[b][t] = s->ids[i + 1];
      }
    }
    if (!rows[b].empty()) {
      batch.domain[b] = rows[b][0]->domain;
      batch.weight[b] = rows[b][0]->weight;
    }
  }
  return batch;
}

std::vector<std::vector<size_t>> pack_rows(const std::vector<const TokenizedSample*>& samples, int64_t seq_length) {
  std::vector<std::vector<size_t>> rows;
  int64_t used = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto* s = samples[i];
    const int64_t n = static_cast<int64_t>(s->ids.size());
    if (n > seq_length) fail("pack_rows: sample ", i, " has ", n, " tokens, more than seq_length ", seq_length);
    const bool fits = !rows.empty() && used + n <= seq_length && s->domain == samples[rows.back()[0]]->domain &&
                      s->weight == samples[rows.back()[0]]->weight;
    if (!fits) {
      rows.emplace_back();
      used = 0;
    }
    rows.back().push_back(i);
    used += n;
  }
  return rows;
}

}  // namespace kdae::data
