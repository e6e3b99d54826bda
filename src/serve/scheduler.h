// The one thread that runs the model for kdae serve. HTTP handler threads submit sequences and read
// their events from a queue; the scheduler adds them to its BatchDecoder between steps, so requests
// that arrive while others decode join the running batch (continuous batching) and every decoding
// step is one forward for all of them.
#pragma once
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "generate/batch-decoder.h"

namespace kdae::serve {

struct Delivery {
  int64_t choice = 0;  // which of the request's sequences
  gen::SequenceEvent event;
  bool failed = false;  // the model failed; the event carries nothing
};

// A request's mailbox. cancel() (the client went away, or a stop string ended it) makes the
// scheduler drop its sequences at the next step.
class EventQueue {
 public:
  // A reply that is neither streamed nor cut by stop strings needs no wake-up per token: waking a
  // handler thread every step takes a core from the model's threads.
  explicit EventQueue(bool wake_on_finish_only = false) : wake_on_finish_only_(wake_on_finish_only) {}
  void push(Delivery d);
  std::optional<Delivery> pop(std::chrono::milliseconds wait);
  void cancel(int64_t choice = -1);  // -1: every choice
  bool cancelled(int64_t choice);

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Delivery> items_;
  const bool wake_on_finish_only_;
  size_t waking_ = 0;  // queued items that wake a waiter
  bool all_cancelled_ = false;
  std::vector<int64_t> cancelled_;
};

struct SchedulerStats {
  int64_t sequences = 0, cancelled = 0, steps = 0, prefills = 0, largest_batch = 0, tokens = 0, running = 0;
};

class Scheduler {
 public:
  Scheduler(model::Transformer model, int64_t max_batch);
  ~Scheduler();
  void submit(gen::SequenceRequest request, std::shared_ptr<EventQueue> queue, int64_t choice);
  SchedulerStats stats();

 private:
  struct Submission {
    gen::SequenceRequest request;
    std::shared_ptr<EventQueue> queue;
    int64_t choice;
  };
  struct Owner {
    std::shared_ptr<EventQueue> queue;
    int64_t choice;
  };
  void loop();
  void take_submissions();
  void deliver(const std::vector<gen::SequenceEvent>& events);
  void fail_all();

  gen::BatchDecoder decoder_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<Submission> incoming_;
  std::unordered_map<int64_t, Owner> owners_;  // decoder sequence id -> its request (scheduler thread only)
  SchedulerStats stats_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace kdae::serve
