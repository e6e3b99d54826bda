// Continuous batching: many sequences decode together, one forward per step over one KV cache.
// Sequences join and leave between steps. Rows are left-padded so every row's tokens end at the
// cache's last column (ForwardOptions::key_mask); a joining group is prefilled in one forward and
// its cache spliced into the batch's. Each row samples with its own generator seeded like
// gen::generate, so a row draws the same tokens a lone generate() call would.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <vector>

#include "generate/decode.h"
#include "model/transformer.h"

namespace kdae::gen {

struct SequenceRequest {
  std::vector<int64_t> prompt;  // non-empty
  GenerateOptions options;      // max_new_tokens may be 0 (score the prompt only)
  bool logprobs = false;        // report each new token's log-probability
  bool prompt_logprobs = false; // and log p(prompt[i] | prompt[< i]) for i >= 1 (completions' echo)
  int64_t top_logprobs = 0;     // alternatives reported per position
};

struct TokenLogprob {
  int64_t token = 0;
  float logprob = 0;                                 // log-softmax of the model's logits (fp32)
  std::vector<std::pair<int64_t, float>> top;        // the top_logprobs most likely, best first
};

enum class FinishReason { none, stop, length, cancelled };

// What one step did to one sequence.
struct SequenceEvent {
  int64_t id = 0;
  std::optional<TokenLogprob> token;      // the new token; absent when it finished on a stop id
  std::vector<TokenLogprob> prompt;       // on the sequence's first event, when prompt_logprobs
  FinishReason finished = FinishReason::none;
  int64_t stop_token = -1;                // the stop id it finished on (FinishReason::stop)
};

class BatchDecoder {
 public:
  BatchDecoder(model::Transformer model, int64_t max_batch);

  int64_t add(SequenceRequest request);  // joins at a later step; returns its id
  void cancel(int64_t id);               // finishes it at the next step
  // One forward: prefills waiting sequences while there is room, otherwise decodes one token for
  // every running one. Empty when idle.
  std::vector<SequenceEvent> step();
  bool idle() const { return rows_.empty() && waiting_.empty(); }
  void reset();  // drops every sequence (after a failed step)

  int64_t running() const { return static_cast<int64_t>(rows_.size()); }
  int64_t largest_batch() const { return largest_batch_; }  // most rows one decoding forward has run
  int64_t steps() const { return steps_; }        // decoding forwards
  int64_t prefills() const { return prefills_; }  // prefill forwards (groups of joining sequences)

 private:
  struct Row {
    int64_t id;
    SequenceRequest request;
    torch::Generator generator;
    int64_t length;  // real tokens in the cache (the next token's position)
    int64_t produced = 0;
    int64_t last = 0;  // the token to feed next
    bool cancelled = false;
  };

  std::vector<SequenceEvent> prefill();
  std::vector<SequenceEvent> decode();
  // Picks each row's next token from its logits (rows x V), updates the rows and drops finished ones.
  void advance(const torch::Tensor& logits, size_t first_row, std::vector<SequenceEvent>& events);
  void drop_rows(const std::vector<size_t>& finished);
  void splice(model::KVCache&& cache, const torch::Tensor& key_mask);

  model::Transformer model_;
  int64_t max_batch_;
  torch::Device device_;
  std::deque<Row> waiting_;
  std::vector<Row> rows_;
  model::KVCache cache_;   // rows_.size() rows
  torch::Tensor key_mask_; // (rows, S) bool
  int64_t next_id_ = 1, largest_batch_ = 0, steps_ = 0, prefills_ = 0;
};

struct Completion {
  std::vector<int64_t> tokens;  // without the stop token
  FinishReason finish = FinishReason::none;
  int64_t stop_token = -1;      // which stop id ended it (FinishReason::stop)
};

// Every request through one decoder, batch_size rows at a time; results in request order.
// on_progress(sequences finished, tokens produced) after each step.
std::vector<Completion> decode_all(model::Transformer model, std::vector<SequenceRequest> requests, int64_t batch_size,
                                   const std::function<void(int64_t done, int64_t tokens)>& on_progress = {});

}  // namespace kdae::gen
