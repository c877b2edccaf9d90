#include "lstmserve/server/engine/sequence_store.h"

#include <atomic>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"

namespace lstmserve::server {
namespace {

core::LstmState StateOf(float v) {
  core::LstmState s;
  s.c = {at::full({1, 2}, v)};
  s.h = {at::full({1, 2}, -v)};
  return s;
}

TEST(SequenceStoreTest, AStartedSequenceKeepsTheStateItsLastRequestLeft) {
  SequenceStore store(8, absl::Minutes(1));
  auto first = store.Acquire("u:1", "set", /*start=*/true);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->c.empty());  // zeros (or the request's own)
  store.Release("u:1", StateOf(1), /*end=*/false);
  auto second = store.Acquire("u:1", "set", false);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->c[0][0][0].item<float>(), 1);
  store.Release("u:1", StateOf(2), /*end=*/true);
  auto after_end = store.Acquire("u:1", "set", false);
  EXPECT_TRUE(absl::IsInvalidArgument(after_end.status())) << after_end.status();
  EXPECT_NE(after_end.status().message().find("sequence 1 is not open"), std::string::npos)
      << after_end.status().message();
  EXPECT_EQ(store.stats().active, 0);
}

TEST(SequenceStoreTest, OneRequestAtATimeOneSetAndAFailureKeepsThePreviousState) {
  SequenceStore store(8, absl::Minutes(1));
  ASSERT_TRUE(store.Acquire("s:a", "set", true).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(store.Acquire("s:a", "set", false).status()));
  EXPECT_TRUE(absl::IsFailedPrecondition(store.Acquire("s:a", "set", true).status()));
  store.Release("s:a", StateOf(3), false);
  EXPECT_TRUE(absl::IsInvalidArgument(store.Acquire("s:a", "other", false).status()));
  ASSERT_TRUE(store.Acquire("s:a", "set", false).ok());
  store.Release("s:a", absl::InvalidArgumentError("bad input"), false);
  auto kept = store.Acquire("s:a", "set", false);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->c[0][0][0].item<float>(), 3);
  store.Release("s:a", *kept, false);
  // A start that fails leaves nothing behind.
  ASSERT_TRUE(store.Acquire("s:b", "set", true).ok());
  store.Release("s:b", absl::InvalidArgumentError("bad input"), false);
  EXPECT_TRUE(absl::IsInvalidArgument(store.Acquire("s:b", "set", false).status()));
  EXPECT_EQ(store.stats().active, 1);
}

TEST(SequenceStoreTest, StreamsAndSequencesShareOneLimit) {
  SequenceStore store(2, absl::Minutes(1));
  ASSERT_TRUE(store.Open("stream:1", [] {}).ok());
  ASSERT_TRUE(store.Acquire("u:7", "set", true).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(store.Open("stream:2", [] {})));
  EXPECT_TRUE(absl::IsResourceExhausted(store.Acquire("u:8", "set", true).status()));
  EXPECT_EQ(store.stats().rejected, 2);
  store.Close("stream:1");
  EXPECT_TRUE(store.Acquire("u:8", "set", true).ok());
  // A stream's key is not a sequence that requests can continue.
  store.Release("u:8", StateOf(1), /*end=*/true);
  ASSERT_TRUE(store.Open("stream:3", [] {}).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(store.Acquire("stream:3", "set", false).status()));
}

TEST(SequenceStoreTest, IdleOnesAreEndedButNotWhileARequestIsInFlight) {
  SequenceStore store(8, absl::Milliseconds(200));
  std::atomic<int> idle_calls{0};
  ASSERT_TRUE(store.Open("stream:1", [&] { ++idle_calls; }).ok());
  ASSERT_TRUE(store.Acquire("u:1", "set", true).ok());
  store.Release("u:1", StateOf(1), false);
  ASSERT_TRUE(store.Acquire("u:2", "set", true).ok());  // in flight throughout
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (store.stats().idle_cancelled < 2 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(idle_calls.load(), 1);  // once, however long it stays
  EXPECT_EQ(store.stats().idle_cancelled, 2);
  EXPECT_TRUE(absl::IsInvalidArgument(store.Acquire("u:1", "set", false).status()));
  store.Release("u:2", StateOf(2), false);  // the in-flight one survived
  EXPECT_TRUE(store.Acquire("u:2", "set", false).ok());
}

}  // namespace
}  // namespace lstmserve::server
