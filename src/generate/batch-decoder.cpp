#include "generate/batch-decoder.h"

#include <algorithm>

#include "common/error.h"

namespace kdae::gen {
namespace {

// t padded with zeros (false) on the left of `dim` to `size`.
torch::Tensor left_pad(const torch::Tensor& t, int64_t dim, int64_t size) {
  const int64_t missing = size - t.size(dim);
  if (missing <= 0) return t;
  std::vector<int64_t> shape = t.sizes().vec();
  shape[dim] = missing;
  return torch::cat({torch::zeros(shape, t.options()), t}, dim);
}

TokenLogprob logprob_of(const torch::Tensor& log_probs, int64_t token, int64_t top) {  // log_probs (V) fp32
  TokenLogprob out{token, log_probs[token].item<float>(), {}};
  if (top > 0) {
    auto [values, indices] = log_probs.topk(std::min<int64_t>(top, log_probs.size(0)));
    for (int64_t i = 0; i < values.size(0); ++i)
      out.top.emplace_back(indices[i].item<int64_t>(), values[i].item<float>());
  }
  return out;
}

bool is_stop(const GenerateOptions& o, int64_t token) {
  return std::find(o.stop_ids.begin(), o.stop_ids.end(), token) != o.stop_ids.end();
}

}  // namespace

BatchDecoder::BatchDecoder(model::Transformer model, int64_t max_batch)
    : model_(std::move(model)), max_batch_(max_batch), device_(model_->parameters().front().device()) {
  if (max_batch < 1) fail("the batch size must be >= 1, got ", max_batch);
}

int64_t BatchDecoder::add(SequenceRequest request) {
  if (request.prompt.empty()) fail("generate: the prompt has no tokens");
  if (request.options.max_new_tokens < 0) fail("max_new_tokens must be >= 0");
  const int64_t id = next_id_++;
  torch::Generator generator = sampling_generator(request.options.seed);
  const auto length = static_cast<int64_t>(request.prompt.size());
  waiting_.push_back({id, std::move(request), std::move(generator), length});
  return id;
}

void BatchDecoder::reset() {
  waiting_.clear();
  rows_.clear();
  cache_ = {};
  key_mask_ = torch::Tensor();
}

void BatchDecoder::cancel(int64_t id) {
  for (auto& r : rows_) r.cancelled |= r.id == id;
  for (auto& r : waiting_) r.cancelled |= r.id == id;
}

std::vector<SequenceEvent> BatchDecoder::step() {
  std::vector<SequenceEvent> events;
  std::vector<size_t> gone;
  for (size_t i = 0; i < rows_.size(); ++i)
    if (rows_[i].cancelled) {
      events.push_back({rows_[i].id, std::nullopt, {}, FinishReason::cancelled});
      gone.push_back(i);
    }
  drop_rows(gone);
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (!it->cancelled) { ++it; continue; }
    events.push_back({it->id, std::nullopt, {}, FinishReason::cancelled});
    it = waiting_.erase(it);
  }
  torch::InferenceMode inference;
  std::vector<SequenceEvent> more =
      !waiting_.empty() && static_cast<int64_t>(rows_.size()) < max_batch_ ? prefill() : decode();
  events.insert(events.end(), more.begin(), more.end());
  return events;
}

std::vector<SequenceEvent> BatchDecoder::prefill() {
  const size_t first = rows_.size();
  const auto room = static_cast<size_t>(max_batch_) - first;
  std::vector<Row> joining;
  while (!waiting_.empty() && joining.size() < room) {
    joining.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  const auto n = static_cast<int64_t>(joining.size());
  ++prefills_;
  int64_t T = 0;
  for (const auto& r : joining) T = std::max(T, r.length);
  torch::Tensor ids = torch::zeros({n, T}, torch::kInt64), real = torch::zeros({n, T}, torch::kBool);  // (n, T)
  for (int64_t i = 0; i < n; ++i) {
    const auto& p = joining[i].request.prompt;
    const int64_t offset = T - joining[i].length;
    ids[i].narrow(0, offset, joining[i].length).copy_(torch::tensor(p, torch::kInt64));
    real[i].narrow(0, offset, joining[i].length).fill_(true);
  }
  model::KVCache cache;
  model::ForwardOptions fwd;
  fwd.cache = &cache;
  if (!real.all().item<bool>()) {
    fwd.key_mask = real.to(device_);
    fwd.position_ids = (real.to(torch::kInt64).cumsum(1) - 1).clamp_min(0).to(device_);  // (n, T)
  }
  // Only echo needs every position's logits; otherwise the head runs on the last position only
  // (the head over a whole prompt batch costs more than many decoding steps).
  const bool every_position = std::any_of(joining.begin(), joining.end(), [](const Row& r) { return r.request.prompt_logprobs; });
  fwd.logits = every_position;
  const model::ForwardOutput out = model_->forward(ids.to(device_), fwd);
  const torch::Tensor logits = every_position ? out.logits : torch::Tensor();  // (n, T, V)
  const torch::Tensor last = every_position ? logits.select(1, T - 1)
                                            : torch::nn::functional::linear(out.final_hidden.select(1, T - 1),
                                                                            model_->lm_head_weight());  // (n, V)
  std::vector<SequenceEvent> events;
  for (int64_t i = 0; i < n; ++i) {
    const Row& row = joining[i];
    if (!row.request.prompt_logprobs) continue;
    SequenceEvent prompt_event{row.id, std::nullopt, {}, FinishReason::none};
    const int64_t offset = T - row.length;
    // Position j's logits predict prompt token j + 1.
    torch::Tensor log_probs = torch::log_softmax(logits[i].narrow(0, offset, row.length).to(torch::kFloat32), -1).cpu();
    for (int64_t j = 1; j < row.length; ++j)
      prompt_event.prompt.push_back(logprob_of(log_probs[j - 1], row.request.prompt[j], row.request.top_logprobs));
    events.push_back(std::move(prompt_event));
  }
  splice(std::move(cache), real.to(device_));
  for (auto& r : joining) rows_.push_back(std::move(r));
  advance(last, first, events);
  return events;
}

std::vector<SequenceEvent> BatchDecoder::decode() {
  std::vector<SequenceEvent> events;
  if (rows_.empty()) return events;
  const auto B = static_cast<int64_t>(rows_.size());
  torch::Tensor ids = torch::empty({B, 1}, torch::kInt64), positions = torch::empty({B, 1}, torch::kInt64);
  for (int64_t i = 0; i < B; ++i) {
    ids[i][0] = rows_[i].last;
    positions[i][0] = rows_[i].length;
  }
  key_mask_ = torch::cat({key_mask_, torch::ones({B, 1}, key_mask_.options())}, 1);  // (B, S + 1)
  model::ForwardOptions fwd;
  fwd.cache = &cache_;
  fwd.position_ids = positions.to(device_);
  if (!key_mask_.all().item<bool>()) fwd.key_mask = key_mask_;
  const torch::Tensor logits = model_->forward(ids.to(device_), fwd).logits.select(1, 0);  // (B, V)
  for (auto& r : rows_) ++r.length;
  largest_batch_ = std::max(largest_batch_, B);
  ++steps_;
  advance(logits, 0, events);
  return events;
}

void BatchDecoder::advance(const torch::Tensor& logits, size_t first_row, std::vector<SequenceEvent>& events) {
  const torch::Tensor cpu = logits.to(torch::kFloat32).cpu();  // (m, V)
  std::vector<size_t> finished;
  for (size_t i = first_row; i < rows_.size(); ++i) {
    Row& row = rows_[i];
    const GenerateOptions& o = row.request.options;
    SequenceEvent event{row.id, std::nullopt, {}, FinishReason::none, -1};
    if (row.produced >= o.max_new_tokens) {
      event.finished = FinishReason::length;
    } else {
      const torch::Tensor row_logits = cpu[static_cast<int64_t>(i - first_row)];
      const int64_t next = pick_token(row_logits, o.temperature, o.top_p, row.generator);
      if (is_stop(o, next)) {
        event.finished = FinishReason::stop;
        event.stop_token = next;
      } else {
        event.token = row.request.logprobs
                          ? logprob_of(torch::log_softmax(row_logits, -1), next, row.request.top_logprobs)
                          : TokenLogprob{next, 0, {}};
        row.last = next;
        if (++row.produced == o.max_new_tokens) event.finished = FinishReason::length;
      }
    }
    if (event.finished != FinishReason::none) finished.push_back(i);
    events.push_back(std::move(event));
  }
  drop_rows(finished);
}

void BatchDecoder::drop_rows(const std::vector<size_t>& finished) {
  if (finished.empty()) return;
  std::vector<int64_t> keep;
  std::vector<Row> kept;
  for (size_t i = 0; i < rows_.size(); ++i)
    if (std::find(finished.begin(), finished.end(), i) == finished.end()) {
      keep.push_back(static_cast<int64_t>(i));
      kept.push_back(std::move(rows_[i]));
    }
  rows_ = std::move(kept);
  if (keep.empty()) {
    cache_ = {};
    key_mask_ = torch::Tensor();
    return;
  }
  const torch::Tensor index = torch::tensor(keep, torch::kInt64).to(device_);
  key_mask_ = key_mask_.index_select(0, index);
  // Columns that only the departed rows used are padding for everyone left.
  const int64_t start = key_mask_.any(0).to(torch::kInt64).argmax().item<int64_t>();
  const int64_t S = key_mask_.size(1) - start;
  key_mask_ = key_mask_.narrow(1, start, S);
  for (auto* list : {&cache_.keys, &cache_.values})
    for (auto& t : *list) t = t.index_select(0, index).narrow(2, start, S);  // (B', Hkv, S, hd)
}

void BatchDecoder::splice(model::KVCache&& cache, const torch::Tensor& key_mask) {
  if (!key_mask_.defined()) {
    cache_ = std::move(cache);
    key_mask_ = key_mask;
    return;
  }
  const int64_t S = std::max(key_mask_.size(1), key_mask.size(1));
  key_mask_ = torch::cat({left_pad(key_mask_, 1, S), left_pad(key_mask, 1, S)}, 0);
  for (size_t l = 0; l < cache_.keys.size(); ++l) {
    cache_.keys[l] = torch::cat({left_pad(cache_.keys[l], 2, S), left_pad(cache.keys[l], 2, S)}, 0);
    cache_.values[l] = torch::cat({left_pad(cache_.values[l], 2, S), left_pad(cache.values[l], 2, S)}, 0);
  }
}

}  // namespace kdae::gen

namespace kdae::gen {

std::vector<Completion> decode_all(model::Transformer model, std::vector<SequenceRequest> requests, int64_t batch_size,
                                   const std::function<void(int64_t done, int64_t tokens)>& on_progress) {
  BatchDecoder decoder(std::move(model), batch_size);
  std::vector<int64_t> ids;
  for (auto& r : requests) ids.push_back(decoder.add(std::move(r)));
  std::vector<Completion> out(ids.size());
  const int64_t first = ids.empty() ? 0 : ids.front();  // ids are consecutive
  while (!decoder.idle()) {
    int64_t done = 0, tokens = 0;
    for (auto& e : decoder.step()) {
      Completion& c = out[static_cast<size_t>(e.id - first)];
      if (e.token) {
        c.tokens.push_back(e.token->token);
        ++tokens;
      }
      if (e.finished != FinishReason::none) {
        c.finish = e.finished;
        c.stop_token = e.stop_token;
        ++done;
      }
    }
    if (on_progress) on_progress(done, tokens);
  }
  return out;
}

}  // namespace kdae::gen
