// The sequence store and its backends: records, versions, traces, limits and expiry, on the
// process's memory and on a real Redis (redis-server, started here on 127.0.0.1).
#include "lstmserve/server/engine/sequence_store.h"

#include <atomic>
#include <random>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include "redis_process.h"

namespace lstmserve::server {
namespace {

using test_support::RedisProcess;

// Waits (up to 10 s) until `backend` reaches its server (past any reconnect backoff).
bool Reaches(SequenceBackend& backend) {
  for (int i = 0; i < 200; ++i) {
    if (backend.Count().ok()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

core::LstmState StateOf(float v) {
  core::LstmState s;
  s.c = {at::full({1, 2}, v), at::full({1, 2}, v + 1)};
  s.h = {at::full({1, 2}, -v), at::full({1, 2}, -v - 1)};
  return s;
}

SequenceRecord RecordOf(float v, uint64_t steps) {
  SequenceRecord r;
  r.set_id = "set";
  r.set_checksum = "sha256:abc";
  r.steps = steps;
  r.state = StateOf(v);
  r.last_step = steps - 1;
  r.last_request = std::string("\x01\x02\0\x03", 4);
  r.last_outputs = at::arange(6, at::kFloat).reshape({3, 1, 2});
  return r;
}

TEST(SequenceRecordTest, EncodesAndDecodesEveryFieldBitForBit) {
  const SequenceRecord r = RecordOf(1.5f, 7);
  auto back = DecodeSequenceRecord(EncodeSequenceRecord(r));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->set_id, r.set_id);
  EXPECT_EQ(back->set_checksum, r.set_checksum);
  EXPECT_EQ(back->steps, 7u);
  EXPECT_EQ(back->last_step, 6u);
  EXPECT_EQ(back->last_request, r.last_request);
  ASSERT_EQ(back->state.c.size(), 2u);
  for (size_t l = 0; l < 2; ++l) {
    EXPECT_TRUE(at::equal(back->state.c[l], r.state.c[l]));
    EXPECT_TRUE(at::equal(back->state.h[l], r.state.h[l]));
  }
  EXPECT_TRUE(at::equal(back->last_outputs, r.last_outputs));
  SequenceRecord no_outputs = r;
  no_outputs.last_outputs = at::Tensor();
  auto again = DecodeSequenceRecord(EncodeSequenceRecord(no_outputs));
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->last_outputs.defined());
}

TEST(SequenceRecordTest, DamagedBytesAreDataLossNeverACrash) {
  const std::string bytes = EncodeSequenceRecord(RecordOf(2, 3));
  for (size_t cut = 0; cut < bytes.size(); cut += 3) {
    EXPECT_EQ(DecodeSequenceRecord(bytes.substr(0, cut)).status().code(), absl::StatusCode::kDataLoss) << cut;
  }
  EXPECT_EQ(DecodeSequenceRecord(bytes + "x").status().code(), absl::StatusCode::kDataLoss);
  std::mt19937 rng(1);
  for (int i = 0; i < 500; ++i) {
    std::string damaged = bytes;
    damaged[rng() % damaged.size()] = static_cast<char>(rng());
    (void)DecodeSequenceRecord(damaged);  // any status, no crash, no huge allocation
  }
}

// The same cases on both backends.
class SequenceBackendTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "memory") {
      backend_ = NewMemorySequenceBackend();
      return;
    }
    const bool tls = GetParam() == "rediss";
    redis_ = std::make_unique<RedisProcess>(0, tls ? RedisProcess::Transport::kTls : RedisProcess::Transport::kTcp);
    RedisOptions options;
    options.url = redis_->url();
    if (tls) options.tls = {redis_->path("ca.crt"), redis_->path("client.crt"), redis_->path("client.key")};
    auto made = NewRedisSequenceBackend(options);
    ASSERT_TRUE(made.ok()) << made.status();
    backend_ = *std::move(made);
    ASSERT_TRUE(Reaches(*backend_)) << "redis-server did not start";
  }

  std::unique_ptr<RedisProcess> redis_;
  std::unique_ptr<SequenceBackend> backend_;
};

TEST_P(SequenceBackendTest, WritesCompareTheVersionAndEndsLeaveATrace) {
  SequenceBackend& b = *backend_;
  auto empty = b.Get("u:1");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->version.empty());
  EXPECT_TRUE(empty->trace.empty());
  ASSERT_TRUE(*b.Put("u:1", "", "v1", std::string("a\0b", 3), absl::Minutes(1), "L1", 10));
  EXPECT_FALSE(*b.Put("u:1", "", "v9", "lost", absl::Minutes(1), "L9", 10));  // already there
  EXPECT_FALSE(*b.Put("u:1", "v0", "v9", "lost", absl::Minutes(1), "L9", 10));
  auto got = b.Get("u:1");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->version, "v1");
  EXPECT_EQ(got->bytes, std::string("a\0b", 3));
  ASSERT_TRUE(*b.Put("u:1", "v1", "v2", "second", absl::Minutes(1), "L2", 10));
  EXPECT_EQ(*b.Count(), 1);
  EXPECT_FALSE(*b.End("u:1", "v1", "Estale"));
  ASSERT_TRUE(*b.End("u:1", "v2", "Efinal"));
  auto ended = b.Get("u:1");
  ASSERT_TRUE(ended.ok());
  EXPECT_TRUE(ended->version.empty());
  EXPECT_EQ(ended->trace, "Efinal");
  EXPECT_EQ(*b.Count(), 0);
}

TEST_P(SequenceBackendTest, ARecordExpiresAfterItsTtlButItsTraceStays) {
  SequenceBackend& b = *backend_;
  ASSERT_TRUE(*b.Put("s:x", "", "v1", "r", absl::Milliseconds(300), "L4", 10));
  absl::SleepFor(absl::Milliseconds(600));
  auto got = b.Get("s:x");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->version.empty());
  EXPECT_EQ(got->trace, "L4");
  EXPECT_EQ(*b.Count(), 0);
  // Expired, it can be started again.
  EXPECT_TRUE(*b.Put("s:x", "", "v2", "r", absl::Minutes(1), "L0", 10));
}

TEST_P(SequenceBackendTest, NewRecordsPastTheLimitAreRefusedAndUpdatesAreNot) {
  SequenceBackend& b = *backend_;
  ASSERT_TRUE(*b.Put("u:1", "", "a", "r", absl::Minutes(1), "L1", 2));
  ASSERT_TRUE(*b.Put("u:2", "", "b", "r", absl::Minutes(1), "L1", 2));
  auto third = b.Put("u:3", "", "c", "r", absl::Minutes(1), "L1", 2);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted) << third.status();
  EXPECT_TRUE(*b.Put("u:2", "b", "b2", "r", absl::Minutes(1), "L2", 2));
  ASSERT_TRUE(*b.End("u:1", "a", "E"));
  EXPECT_TRUE(*b.Put("u:3", "", "c", "r", absl::Minutes(1), "L1", 2));
}

TEST(MemorySequenceBackendTest, TracesOfEndedSequencesStayWithinTheirBound) {
  auto b = NewMemorySequenceBackend();
  const std::string big(1 << 20, 'r');  // an ended sequence's trace holds its final record
  const int ended = static_cast<int>(kMemoryTraceBytes / big.size()) + 16;
  for (int i = 0; i < ended; ++i) {
    const std::string key = absl::StrCat("s:", i);
    ASSERT_TRUE(*b->Put(key, "", "v", "r", absl::Minutes(1), "L1", 1 << 20));
    ASSERT_TRUE(*b->End(key, "v", big));
  }
  int64_t kept = 0;
  for (int i = 0; i < ended; ++i) kept += b->Get(absl::StrCat("s:", i))->trace.size();
  EXPECT_LE(kept, kMemoryTraceBytes);
  EXPECT_GT(kept, kMemoryTraceBytes / 2);
  EXPECT_EQ(b->Get(absl::StrCat("s:", ended - 1))->trace, big);  // the newest is kept
}

INSTANTIATE_TEST_SUITE_P(Backends, SequenceBackendTest, ::testing::Values("memory", "redis", "rediss"));

// rediss://: the server's certificate is checked against the CA and the host, and the
// client's is presented; whatever fails is UNAVAILABLE with the reason.
TEST(RedisSequenceBackendTest, TlsChecksTheServersCertificateAndPresentsTheClients) {
  RedisProcess redis(0, RedisProcess::Transport::kTls);
  ASSERT_TRUE(redis.WaitReady()) << "redis-server with TLS did not start";
  auto connect = [&](RedisOptions::Tls tls, const std::string& url) {
    RedisOptions options;
    options.url = url;
    options.tls = std::move(tls);
    auto made = NewRedisSequenceBackend(options);
    EXPECT_TRUE(made.ok()) << made.status();
    return made.ok() ? (*made)->Get("u:1").status() : made.status();
  };
  const std::string ca = redis.path("ca.crt"), cert = redis.path("client.crt"), key = redis.path("client.key");
  absl::Status other_ca = connect({redis.path("other-ca.crt"), cert, key}, redis.url());
  EXPECT_EQ(other_ca.code(), absl::StatusCode::kUnavailable) << other_ca;
  EXPECT_TRUE(absl::StrContains(other_ca.message(), "not trusted")) << other_ca;
  const std::string by_name = absl::StrCat("rediss://localhost:", redis.port());  // the certificate names 127.0.0.1
  absl::Status wrong_host = connect({ca, cert, key}, by_name);
  EXPECT_EQ(wrong_host.code(), absl::StatusCode::kUnavailable) << wrong_host;
  EXPECT_TRUE(absl::StrContains(wrong_host.message(), "not trusted for localhost")) << wrong_host;
  absl::Status no_client_cert = connect({ca, "", ""}, redis.url());
  EXPECT_EQ(no_client_cert.code(), absl::StatusCode::kUnavailable) << no_client_cert;
  EXPECT_TRUE(connect({ca, cert, key}, redis.url()).ok());

  // A plain Redis asked for TLS: no handshake.
  RedisProcess plain;
  ASSERT_TRUE(plain.WaitReady());
  absl::Status not_tls = connect({ca, cert, key}, absl::StrCat("rediss://127.0.0.1:", plain.port()));
  EXPECT_EQ(not_tls.code(), absl::StatusCode::kUnavailable) << not_tls;
}

TEST(RedisSequenceBackendTest, TlsFilesAreCheckedAtStart) {
  RedisProcess redis(0, RedisProcess::Transport::kTls);  // for its files
  const std::string ca = redis.path("ca.crt"), cert = redis.path("client.crt"), key = redis.path("client.key");
  struct Case {
    std::string url;
    RedisOptions::Tls tls;
    const char* says;
  };
  for (const Case& c : std::vector<Case>{{"redis://h:1", {ca, "", ""}, "are for a rediss://"},
                                         {"rediss://h:1", {"/nonexistent/ca.pem", "", ""}, "--sequence_store_ca_file"},
                                         {"rediss://h:1", {ca, cert, ""}, "give both or neither"},
                                         {"rediss://h:1", {ca, cert, ca}, "--sequence_store_key_file"}}) {
    RedisOptions options;
    options.url = c.url;
    options.tls = c.tls;
    auto made = NewRedisSequenceBackend(options);
    EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument) << c.url << " " << c.says;
    EXPECT_TRUE(absl::StrContains(made.status().message(), c.says)) << made.status();
  }
  RedisOptions fine;
  fine.url = "rediss://h:1";
  fine.tls = {ca, cert, key};
  auto made = NewRedisSequenceBackend(fine);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ((*made)->Describe(), "rediss://h:1/0");
}

TEST(RedisSequenceBackendTest, AnUnreachableStoreIsUnavailableNamedWithoutItsPassword) {
  const int port = RedisProcess::FreePort();
  RedisOptions options;
  options.url = absl::StrCat("redis://127.0.0.1:", port, "/2");
  options.password = "s3cret-password";
  auto made = NewRedisSequenceBackend(options);
  ASSERT_TRUE(made.ok());
  auto got = (*made)->Get("u:1");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  EXPECT_TRUE(absl::StrContains(got.status().message(), absl::StrCat("redis://127.0.0.1:", port, "/2")))
      << got.status();
  EXPECT_FALSE(absl::StrContains(got.status().message(), "s3cret")) << got.status();
  EXPECT_EQ((*made)->Describe(), absl::StrCat("redis://127.0.0.1:", port, "/2"));
}

TEST(RedisSequenceBackendTest, MalformedAddressesAreRefusedWithTheReason) {
  for (const char* url : {"http://x:1", "redis://", "redis://h:0", "redis://h:70000", "redis://h:1/x",
                          "redis://user:pw@h:1", "rediss://user:pw@h:1", "redis2://h:1"}) {
    RedisOptions options;
    options.url = url;
    auto made = NewRedisSequenceBackend(options);
    EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument) << url;
  }
}

TEST(RedisSequenceBackendTest, ARestartedServerIsReconnectedAndItsScriptsLoadedAgain) {
  auto redis = std::make_unique<RedisProcess>();
  RedisOptions options;
  options.url = redis->url();
  auto made = NewRedisSequenceBackend(options);
  ASSERT_TRUE(made.ok());
  SequenceBackend& b = **made;
  ASSERT_TRUE(Reaches(b));
  ASSERT_TRUE(*b.Put("u:1", "", "v1", "r", absl::Minutes(1), "L1", 10));
  // Gone: the pooled connections are dead; a call fails, and calls during the backoff fail fast.
  const int port = redis->port();
  redis.reset();
  EXPECT_EQ(b.Get("u:1").status().code(), absl::StatusCode::kUnavailable);
  const absl::Time began = absl::Now();
  EXPECT_EQ(b.Get("u:1").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - began, absl::Milliseconds(500));
  // A new server on the same port (nothing persisted, no scripts loaded): reached again.
  redis = std::make_unique<RedisProcess>(port);
  ASSERT_TRUE(Reaches(b));
  auto fresh = b.Get("u:1");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_TRUE(fresh->version.empty());
  EXPECT_TRUE(*b.Put("u:1", "", "v2", "r", absl::Minutes(1), "L1", 10));
}

TEST(SequenceStoreTest, CommitsCompareVersionsAndAnEndLeavesTheFinalRecordInItsTrace) {
  SequenceStore store(8, absl::Minutes(1));
  auto none = store.Load("u:1");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->record.has_value());
  auto v1 = store.Commit("u:1", "", RecordOf(1, 1), false);
  ASSERT_TRUE(v1.ok() && v1->has_value()) << v1.status();
  auto stale = store.Commit("u:1", "", RecordOf(9, 1), false);
  ASSERT_TRUE(stale.ok());
  EXPECT_FALSE(stale->has_value());  // another version is there
  auto loaded = store.Load("u:1");
  ASSERT_TRUE(loaded.ok() && loaded->record.has_value());
  EXPECT_EQ(loaded->version, **v1);
  EXPECT_EQ(loaded->record->state.c[0][0][0].item<float>(), 1);
  auto ended = store.Commit("u:1", **v1, RecordOf(2, 2), true);
  ASSERT_TRUE(ended.ok() && ended->has_value());
  auto after = store.Load("u:1");
  ASSERT_TRUE(after.ok());
  EXPECT_FALSE(after->record.has_value());
  const SequenceStore::Trace trace = SequenceStore::ReadTrace(after->trace);
  EXPECT_TRUE(trace.ended);
  EXPECT_EQ(trace.steps, 2u);
  ASSERT_TRUE(trace.final_record.has_value());
  EXPECT_EQ(trace.final_record->state.c[0][0][0].item<float>(), 2);
  EXPECT_EQ(store.backend_stats().conflicts, 1);
}

TEST(SequenceStoreTest, OneRequestOfASequenceAtATime) {
  SequenceStore store(8, absl::Minutes(1));
  ASSERT_TRUE(store.Claim("s:a", "a").ok());
  auto again = store.Claim("s:a", "a");
  EXPECT_TRUE(absl::IsFailedPrecondition(again)) << again;
  EXPECT_TRUE(absl::StrContains(again.message(), "in flight")) << again;
  EXPECT_TRUE(store.Claim("s:b", "b").ok());
  store.Unclaim("s:a");
  EXPECT_TRUE(store.Claim("s:a", "a").ok());
}

TEST(SequenceStoreTest, StoredSequencesHaveOneLimitAndStreamsAreNotCounted) {
  SequenceStore store(2, absl::Minutes(1));
  store.Open("stream:1", [] {});
  store.Open("stream:2", [] {});
  store.Open("stream:3", [] {});
  ASSERT_TRUE(store.Commit("u:1", "", RecordOf(1, 1), false).ok());
  ASSERT_TRUE(store.Commit("u:2", "", RecordOf(1, 1), false).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(store.Commit("u:3", "", RecordOf(1, 1), false).status()));
  EXPECT_EQ(store.stats().rejected, 1);
  EXPECT_EQ(store.stats().active, 2);
  auto loaded = store.Load("u:1");
  ASSERT_TRUE(loaded.ok() && loaded->record.has_value());
  ASSERT_TRUE(store.Commit("u:1", loaded->version, *loaded->record, /*end=*/true).ok());
  EXPECT_TRUE(store.Commit("u:3", "", RecordOf(1, 1), false).ok()) << "an ended sequence frees its place";
}

TEST(SequenceStoreTest, IdleStreamsAreCancelledOnceAndIdleRecordsExpire) {
  SequenceStore store(8, absl::Milliseconds(200));
  std::atomic<int> idle_calls{0};
  store.Open("stream:1", [&] { ++idle_calls; });
  ASSERT_TRUE(store.Commit("u:1", "", RecordOf(1, 5), false).ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (store.stats().idle_cancelled < 1 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(idle_calls.load(), 1);  // once, however long it stays
  auto expired = store.Load("u:1");
  ASSERT_TRUE(expired.ok());
  EXPECT_FALSE(expired->record.has_value());
  const SequenceStore::Trace trace = SequenceStore::ReadTrace(expired->trace);
  EXPECT_FALSE(trace.ended);
  EXPECT_EQ(trace.steps, 5u);
}

}  // namespace
}  // namespace lstmserve::server
