#include "serve/scheduler.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <iostream>

namespace kdae::serve {

namespace {
bool wakes(const Delivery& d, bool finish_only) {
  return !finish_only || d.failed || d.event.finished != gen::FinishReason::none;
}
}  // namespace

void EventQueue::push(Delivery d) {
  const bool wake = wakes(d, wake_on_finish_only_);
  {
    std::lock_guard lock(mutex_);
    items_.push_back(std::move(d));
    waking_ += wake ? 1 : 0;
  }
  if (wake) ready_.notify_one();
}

// Items queued before a waking one are handed out with it, in order.
std::optional<Delivery> EventQueue::pop(std::chrono::milliseconds wait) {
  std::unique_lock lock(mutex_);
  if (!ready_.wait_for(lock, wait, [&] { return waking_ > 0; })) return std::nullopt;
  Delivery d = std::move(items_.front());
  items_.pop_front();
  waking_ -= wakes(d, wake_on_finish_only_) ? 1 : 0;
  return d;
}

void EventQueue::cancel(int64_t choice) {
  std::lock_guard lock(mutex_);
  if (choice < 0) all_cancelled_ = true;
  else cancelled_.push_back(choice);
}

bool EventQueue::cancelled(int64_t choice) {
  std::lock_guard lock(mutex_);
  return all_cancelled_ || std::find(cancelled_.begin(), cancelled_.end(), choice) != cancelled_.end();
}

// OpenMP's thread count is per calling thread: the model's thread uses what --threads set on the main one.
Scheduler::Scheduler(model::Transformer model, int64_t max_batch)
    : decoder_(std::move(model), max_batch), thread_([this, threads = at::get_num_threads()] {
        at::set_num_threads(threads);
        loop();
      }) {}

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Scheduler::submit(gen::SequenceRequest request, std::shared_ptr<EventQueue> queue, int64_t choice) {
  {
    std::lock_guard lock(mutex_);
    incoming_.push_back({std::move(request), std::move(queue), choice});
  }
  wake_.notify_all();
}

SchedulerStats Scheduler::stats() {
  std::lock_guard lock(mutex_);
  return stats_;
}

void Scheduler::take_submissions() {
  std::vector<Submission> fresh;
  {
    std::lock_guard lock(mutex_);
    fresh.swap(incoming_);
    stats_.sequences += static_cast<int64_t>(fresh.size());
  }
  for (auto& s : fresh) owners_[decoder_.add(std::move(s.request))] = {std::move(s.queue), s.choice};
  for (const auto& [id, owner] : owners_)
    if (owner.queue->cancelled(owner.choice)) decoder_.cancel(id);
}

void Scheduler::deliver(const std::vector<gen::SequenceEvent>& events) {
  int64_t tokens = 0, cancelled = 0;
  for (const auto& e : events) {
    auto it = owners_.find(e.id);
    if (it == owners_.end()) continue;
    tokens += e.token ? 1 : 0;
    cancelled += e.finished == gen::FinishReason::cancelled ? 1 : 0;
    it->second.queue->push({it->second.choice, e});
    if (e.finished != gen::FinishReason::none) owners_.erase(it);
  }
  std::lock_guard lock(mutex_);
  stats_.tokens += tokens;
  stats_.cancelled += cancelled;
  stats_.steps = decoder_.steps();
  stats_.prefills = decoder_.prefills();
  stats_.largest_batch = decoder_.largest_batch();
  stats_.running = decoder_.running();
}

// A failed forward leaves the batch cache in an unknown state: every running request fails and the
// decoder starts over, so the server keeps serving.
void Scheduler::fail_all() {
  for (auto& [id, owner] : owners_) owner.queue->push({owner.choice, {id, std::nullopt, {}, gen::FinishReason::cancelled, -1}, true});
  owners_.clear();
  decoder_.reset();
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !incoming_.empty() || !decoder_.idle(); });
      if (stopping_) return;
    }
    take_submissions();
    try {
      deliver(decoder_.step());
    } catch (const std::exception& e) {
      std::cerr << "kdae serve: decoding failed: " << e.what() << "\n";
      fail_all();
    }
  }
}

}  // namespace kdae::serve
