// The batcher on a manual clock: deadlines and waits without sleeping.
#include "lstmserve/server/engine/batcher.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"

#include "lstmserve/core/parameter_set.h"
#include "lstmserve/server/engine/clock.h"

namespace lstmserve::server {
namespace {

std::shared_ptr<const SetEntry> SmallSet() {
  core::ParameterSetSpec spec;
  spec.lstm = core::LstmTemplate{1, 3, 4};
  spec.seed = 1;
  auto set = core::CreateParameterSet(spec, core::CreateLimits());
  EXPECT_TRUE(set.ok()) << set.status();
  auto entry = std::make_shared<SetEntry>();
  entry->stored.id = "m";
  entry->stored.set = *set;
  auto lstm = core::StackedLstm::FromParameterSet(entry->stored.set);
  EXPECT_TRUE(lstm.ok()) << lstm.status();
  entry->lstm.emplace(*std::move(lstm));
  return entry;
}

BatchJob Job(const std::shared_ptr<const SetEntry>& set,
             std::function<void(absl::StatusOr<core::SequenceResult>)> done) {
  BatchJob job;
  job.set = set;
  job.inputs = at::ones({1, 1, 3});
  job.done = std::move(done);
  return job;
}

TEST(BatcherClockTest, ARequestWhoseDeadlinePassesInTheQueueIsAnsweredAndNeverComputed) {
  // Ten years ahead: by the real clock the deadline below is far away, so only the batcher's
  // use of this clock can expire it.
  ManualClock clock(absl::Now() + absl::Hours(24 * 3650));
  BatchOptions options;
  options.inline_max_work = 0;  // everything through the queue and the one worker
  Batcher batcher(options, nullptr, &clock);
  const auto set = SmallSet();
  absl::Notification first_in_done, release_first, second_done;
  batcher.Submit(Job(set, [&](absl::StatusOr<core::SequenceResult> r) {
    EXPECT_TRUE(r.ok()) << r.status();
    first_in_done.Notify();
    release_first.WaitForNotification();  // the worker is held here
  }));
  first_in_done.WaitForNotification();
  absl::Status second = absl::OkStatus();
  BatchJob late = Job(set, [&](absl::StatusOr<core::SequenceResult> r) {
    second = r.status();
    second_done.Notify();
  });
  late.deadline = clock.Now() + absl::Milliseconds(5);
  batcher.Submit(std::move(late));
  clock.Advance(absl::Seconds(1));  // it waits, the clock passes its deadline
  release_first.Notify();
  second_done.WaitForNotification();
  EXPECT_TRUE(absl::IsDeadlineExceeded(second)) << second;
  const BatchStats stats = batcher.stats();
  EXPECT_EQ(stats.requests, 1);  // the first only
  EXPECT_EQ(stats.expired, 1);
}

TEST(BatcherClockTest, ALoneCallerNeverWaitsForTheClock) {
  // The clock never moves: a batch that waited on it for more requests would never start.
  ManualClock clock;
  BatchOptions options;
  options.inline_max_work = 0;
  options.batch_timeout = absl::Seconds(10);
  Batcher batcher(options, nullptr, &clock);
  const auto set = SmallSet();
  for (int i = 0; i < 20; ++i) {
    absl::Notification done;
    batcher.Submit(Job(set, [&](absl::StatusOr<core::SequenceResult> r) {
      EXPECT_TRUE(r.ok()) << r.status();
      done.Notify();
    }));
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30))) << "request " << i << " waited";
  }
  EXPECT_EQ(batcher.stats().requests, 20);
  EXPECT_EQ(batcher.stats().max_rows, 1);
}

TEST(BatcherClockTest, RequestsQueuedTogetherAreComputedInOneBatchWithoutTheClockMoving) {
  ManualClock clock;
  BatchOptions options;
  options.inline_max_work = 0;
  Batcher batcher(options, nullptr, &clock);
  const auto set = SmallSet();
  absl::Notification first_in_done, release_first;
  std::atomic<int> answered{0};
  batcher.Submit(Job(set, [&](absl::StatusOr<core::SequenceResult>) {
    first_in_done.Notify();
    release_first.WaitForNotification();
  }));
  first_in_done.WaitForNotification();
  absl::Notification all_done;
  for (int i = 0; i < 5; ++i) {
    batcher.Submit(Job(set, [&](absl::StatusOr<core::SequenceResult> r) {
      EXPECT_TRUE(r.ok()) << r.status();
      if (++answered == 5) all_done.Notify();
    }));
  }
  release_first.Notify();
  ASSERT_TRUE(all_done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  const BatchStats stats = batcher.stats();
  EXPECT_EQ(stats.batches, 2);  // the first alone, then the five queued behind it together
  EXPECT_EQ(stats.max_rows, 5);
}

}  // namespace
}  // namespace lstmserve::server
