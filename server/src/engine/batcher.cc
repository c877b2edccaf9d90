#include "lstmserve/server/engine/batcher.h"

#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include "lstmserve/core/status.h"

namespace lstmserve::server {

const Clock& Clock::Real() {
  class RealClock final : public Clock {
   public:
    absl::Time Now() const override { return absl::Now(); }
    bool AwaitWithDeadline(absl::Mutex& mu, const absl::Condition& cond, absl::Time deadline) const override
        ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      return mu.AwaitWithDeadline(cond, deadline);
    }
  };
  static const RealClock* const clock = new RealClock();
  return *clock;
}
namespace {

bool Compatible(const BatchJob& a, const BatchJob& b) {
  return a.set == b.set && a.inputs.size(0) == b.inputs.size(0) && a.want_outputs == b.want_outputs;
}

int64_t Rows(const BatchJob& job) { return job.inputs.size(1); }

// The batch's states: each job's own, or zeros for jobs that sent none.
core::LstmState MergeStates(const std::vector<BatchJob>& batch) {
  core::LstmState merged;
  bool any = false;
  for (const auto& job : batch) any = any || !job.state.c.empty() || !job.state.h.empty();
  if (!any) return merged;
  const auto& lstm = *batch.front().set->lstm;
  for (int64_t l = 0; l < lstm.num_layers(); ++l) {
    std::vector<at::Tensor> c, h;
    for (const auto& job : batch) {
      const auto zeros = [&] { return at::zeros({Rows(job), lstm.hidden_size()}, job.inputs.options()); };
      c.push_back(job.state.c.empty() ? zeros() : job.state.c[l]);
      h.push_back(job.state.h.empty() ? zeros() : job.state.h[l]);
    }
    merged.c.push_back(at::cat(c, 0));
    merged.h.push_back(at::cat(h, 0));
  }
  return merged;
}

}  // namespace

Batcher::Batcher(const BatchOptions& options, Metrics* metrics, const Clock* clock, ModelStatistics* statistics)
    : options_(options), metrics_(metrics), clock_(clock != nullptr ? *clock : Clock::Real()), statistics_(statistics) {
  for (int i = 0; i < options_.num_batch_threads; ++i) workers_.emplace_back([this] { Work(); });
}

Batcher::~Batcher() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (auto& w : workers_) w.join();
}

void Batcher::Submit(BatchJob job) {
  bool here = false;
  {
    absl::MutexLock lock(&mu_);
    job.enqueued = clock_.Now();
    // Not under load: after a batch of several requests, their callers are about to send
    // again, and the first of them would run alone while the others queue behind it.
    if (queue_.empty() && busy_ < options_.num_batch_threads && last_batch_requests_ <= 1 && !stopping_ && Small(job)) {
      ++busy_;  // a compute slot, as a worker takes one
      ++stats_.inlined;
      here = true;
    } else if (static_cast<int64_t>(queue_.size()) < options_.max_queued_requests) {
      queue_.push_back(std::move(job));
      return;
    } else {
      ++stats_.rejected;
    }
  }
  if (here) {
    thread_local core::DeviceRunner runner;  // unused on the CPU, where inline calls run
    std::vector<BatchJob> batch;
    batch.push_back(std::move(job));
    Run(std::move(batch), runner);
    absl::MutexLock lock(&mu_);
    --busy_;
    return;
  }
  job.done(absl::ResourceExhaustedError(
      absl::StrCat("the inference queue is full (", options_.max_queued_requests,
                   " requests, --max_queued_requests); retry later or on another replica")));
}

bool Batcher::Small(const BatchJob& job) const {
  if (options_.inline_max_work <= 0 || !job.set->lstm->device().is_cpu()) return false;
  const double work = job.set->lstm->StepFlops(Rows(job)) / 2 * static_cast<double>(job.inputs.size(0));
  return work <= static_cast<double>(options_.inline_max_work);
}

BatchStats Batcher::stats() const {
  absl::MutexLock lock(&mu_);
  BatchStats stats = stats_;
  stats.queued = static_cast<int64_t>(queue_.size());
  return stats;
}

int64_t Batcher::Fill(std::vector<BatchJob>& batch, int64_t rows) {
  for (auto it = queue_.begin(); it != queue_.end() && rows < options_.max_batch_size;) {
    if (Compatible(batch.front(), *it) && rows + Rows(*it) <= options_.max_batch_size) {
      rows += Rows(*it);
      batch.push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  return rows;
}

std::vector<BatchJob> Batcher::TakeBatch(int64_t previous_rows, absl::Duration previous_compute) {
  std::vector<BatchJob> batch;
  batch.push_back(std::move(queue_.front()));
  queue_.pop_front();
  if (!options_.enabled) return batch;
  int64_t rows = Fill(batch, Rows(batch.front()));
  // Under load (the previous batch held more than one row) keep collecting while requests
  // keep arriving: the callers just answered are about to send again. Stop after a quiet
  // gap, when the batch is full, or after half the previous batch's compute time (at most
  // batch_timeout): an L batch (12 ms) may wait 6 ms while its 64 callers, starved of CPU
  // during the GEMM, send again (L at c64: 2.7k -> 3.1k req/s, p50 22.8 -> 19.7 ms); an S
  // batch (30 us) barely waits. A lone caller never waits.
  const absl::Duration budget = std::min(options_.batch_timeout, previous_compute / 2);
  if (budget <= absl::ZeroDuration() || previous_rows <= 1) return batch;
  // The quiet gap scales with the budget: an L client's round trip under load (~1 ms)
  // outlasts a fixed 200 us gap.
  const absl::Duration quiet_gap = std::max(absl::Microseconds(50), budget / 4);
  const absl::Time fill_until = clock_.Now() + budget;
  while (rows < options_.max_batch_size && !stopping_) {
    struct Seen {
      Batcher* self;
      size_t size;
    } seen{this, queue_.size()};
    const bool arrived = clock_.AwaitWithDeadline(mu_,
                                                  absl::Condition(
                                                      +[](Seen* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->self->mu_) {
                                                        return s->self->queue_.size() != s->size || s->self->stopping_;
                                                      },
                                                      &seen),
                                                  std::min(fill_until, clock_.Now() + quiet_gap));
    if (!arrived) break;  // quiet: no one else is coming soon
    rows = Fill(batch, rows);
    if (clock_.Now() >= fill_until) break;
  }
  return batch;
}

namespace {
thread_local bool on_batch_thread = false;
}  // namespace

bool Batcher::OnBatchThread() { return on_batch_thread; }

void Batcher::Work() {
  on_batch_thread = true;
  core::DeviceRunner runner;  // this worker's CUDA stream, when the sets live on a GPU
  int64_t previous_rows = 1;
  absl::Duration previous_compute = absl::ZeroDuration();
  while (true) {
    std::vector<BatchJob> batch;
    {
      absl::MutexLock lock(&mu_);
      // A free compute slot too: an inline computation holds one.
      mu_.Await(absl::Condition(
          +[](Batcher* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->mu_) {
            return (b->stopping_ && b->busy_ < b->options_.num_batch_threads) ||
                   (!b->queue_.empty() && b->busy_ < b->options_.num_batch_threads);
          },
          this));
      if (queue_.empty()) return;  // stopping, and nothing left
      ++busy_;                     // before collecting: no request may run inline while this batch fills
      batch = TakeBatch(previous_rows, previous_compute);
    }
    previous_rows = 0;
    for (const auto& job : batch) previous_rows += Rows(job);
    previous_compute = Run(std::move(batch), runner);
    absl::MutexLock lock(&mu_);
    --busy_;
  }
}

absl::Duration Batcher::Run(std::vector<BatchJob> batch, core::DeviceRunner& runner) {
  // Drop what expired or was cancelled while it waited. The statistics count them before their
  // callers hear back, so a caller that reads them after its answer sees itself counted.
  const absl::Time now = clock_.Now();
  std::vector<BatchJob> live;
  std::vector<std::pair<BatchJob, absl::Status>> dropped;
  int64_t expired = 0;
  int64_t cancelled = 0;
  for (auto& job : batch) {
    if (metrics_ != nullptr) metrics_->ObserveQueueWait(now - job.enqueued);
    if (job.deadline <= now) {
      ++expired;
      dropped.emplace_back(
          std::move(job),
          absl::DeadlineExceededError("the deadline passed while the request waited for a batch; not computed"));
    } else if (job.cancelled && job.cancelled()) {
      ++cancelled;
      dropped.emplace_back(std::move(job),
                           absl::CancelledError("the call was cancelled while it waited for a batch; not computed"));
    } else {
      live.push_back(std::move(job));
    }
  }
  int64_t rows = 0;
  for (const auto& j : live) rows += Rows(j);
  {
    absl::MutexLock lock(&mu_);
    stats_.expired += expired;
    stats_.cancelled += cancelled;
    if (!live.empty()) {
      last_batch_requests_ = static_cast<int64_t>(live.size());
      ++stats_.batches;
      stats_.requests += static_cast<int64_t>(live.size());
      stats_.rows += rows;
      stats_.max_rows = std::max(stats_.max_rows, rows);
    }
  }
  for (auto& [job, status] : dropped) job.done(std::move(status));
  if (live.empty()) return absl::ZeroDuration();
  const core::StackedLstm& lstm = *live.front().set->lstm;
  // The model's statistics: each request's wait, and the batch's input, compute and output
  // phases (model_statistics.h).
  ExecutionTimes times;
  times.rows = rows;
  for (const auto& job : live) times.queue_waits.push_back(now - job.enqueued);
  const auto observe = [&](absl::Duration compute) {
    if (metrics_ == nullptr) return;
    metrics_->ObserveBatch(rows, compute);
    metrics_->ObserveKernel(lstm.KernelName(rows, live.front().inputs.size(0), options_.path));
  };
  const auto record = [&](absl::Time output_began) {
    if (statistics_ == nullptr) return;
    times.finished = clock_.Now();
    times.output = times.finished - output_began;
    statistics_->RecordExecution(live.front().set->stored.id, times);
  };
  if (live.size() == 1) {
    const absl::Time began = clock_.Now();
    auto result = runner.Run(lstm, live.front().inputs, live.front().state, live.front().want_outputs, options_.path);
    const absl::Time computed = clock_.Now();
    const absl::Duration compute = computed - began;
    times.infer = compute;
    observe(compute);
    record(computed);
    live.front().done(std::move(result));
    return compute;
  }
  const absl::Time merging = clock_.Now();
  absl::Time began = merging;
  auto result = core::GuardTorch("batch", [&]() -> absl::StatusOr<core::SequenceResult> {
    std::vector<at::Tensor> inputs;
    for (const auto& job : live) inputs.push_back(job.inputs);
    at::Tensor merged = at::cat(inputs, 1);
    core::LstmState state = MergeStates(live);
    began = clock_.Now();
    return runner.Run(lstm, merged, std::move(state), live.front().want_outputs, options_.path);
  });
  const absl::Time computed = clock_.Now();
  const absl::Duration compute = computed - began;
  times.input = began - merging;
  times.infer = compute;
  observe(compute);
  std::vector<absl::StatusOr<core::SequenceResult>> answers;
  answers.reserve(live.size());
  int64_t offset = 0;
  for (auto& job : live) {
    if (!result.ok()) {
      answers.emplace_back(result.status());
      continue;
    }
    const int64_t b = Rows(job);
    core::SequenceResult mine;
    if (result->outputs.defined()) mine.outputs = result->outputs.narrow(1, offset, b);
    for (const auto& c : result->final_state.c) mine.final_state.c.push_back(c.narrow(0, offset, b));
    for (const auto& h : result->final_state.h) mine.final_state.h.push_back(h.narrow(0, offset, b));
    offset += b;
    answers.emplace_back(std::move(mine));
  }
  record(computed);
  for (size_t i = 0; i < live.size(); ++i) live[i].done(std::move(answers[i]));
  return compute;
}

}  // namespace lstmserve::server
