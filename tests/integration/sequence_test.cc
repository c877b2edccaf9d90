// Stored sequences through the v1 API, across two real servers that share a parameter store and
// a real Redis: GetSequence from any replica, and a Session that names a sequence id resumed on
// the other replica after its stream ended, equal to one uninterrupted run.
#include <csignal>
#include <filesystem>
#include <random>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include "../server/redis_process.h"
#include "lstmserve/client/client.h"
#include "server_process.h"

namespace lstmserve {
namespace {

using test_support::RedisProcess;

v1::ParameterSetSpec LstmSpec(int64_t layers, int64_t input, int64_t hidden, uint64_t seed) {
  v1::ParameterSetSpec spec;
  spec.set_seed(seed);
  auto* lstm = spec.mutable_lstm();
  lstm->set_num_layers(layers);
  lstm->set_input_size(input);
  lstm->set_hidden_size(hidden);
  lstm->set_bias(true);
  return spec;
}

class SharedSequenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(redis_.WaitReady()) << "redis-server did not start";
    store_ = std::filesystem::temp_directory_path() / absl::StrCat("lstmserve-seq-", std::random_device()());
    std::filesystem::create_directories(store_);
    for (int i = 0; i < 2; ++i) {
      std::filesystem::create_directories(store_ / absl::StrCat("log-", i));
      auto server = testing::ServerProcess::Start(store_.string(), {absl::StrCat("--sequence_store=", redis_.url())},
                                                  (store_ / absl::StrCat("log-", i)).string());
      ASSERT_TRUE(server.ok()) << server.status();
      servers_.push_back(*std::move(server));
      client::ClientOptions options;
      options.target = servers_.back()->address();
      clients_.push_back(client::Client::Connect(options));
    }
  }
  void TearDown() override {
    clients_.clear();
    servers_.clear();
    std::filesystem::remove_all(store_);
  }

  // Steps xs[from, to) of set "m" on a Session that names sequence `id` (starting it, or
  // resuming it), through `client`; the responses' step numbers must go on from `from`. Returns the last output
  // (undefined after a failure, which is reported).
  static at::Tensor ResumeAndStep(client::Client& client, int64_t batch, const std::string& id,
                                  const std::vector<at::Tensor>& xs, int from, int to) {
    auto session = client.OpenSession("m", batch, {}, /*return_state=*/false, id);
    EXPECT_TRUE(session.ok()) << session.status();
    if (!session.ok()) return {};
    at::Tensor last;
    for (int t = from; t < to; ++t) {
      auto out = (*session)->Step(xs[t]);
      EXPECT_TRUE(out.ok()) << out.status();
      if (!out.ok()) return {};
      EXPECT_EQ((*session)->last_step(), t);
      last = *out;
    }
    EXPECT_TRUE((*session)->Close().ok());
    return last;
  }

  static at::Tensor Randn(std::vector<int64_t> shape, uint64_t seed) {
    at::Generator gen = at::detail::createCPUGenerator(seed);
    return at::empty(shape).normal_(0, 1, gen);
  }

  RedisProcess redis_;
  std::filesystem::path store_;
  std::vector<std::unique_ptr<testing::ServerProcess>> servers_;
  std::vector<std::unique_ptr<client::Client>> clients_;
};

TEST_F(SharedSequenceTest, ASessionNamingASequenceIsResumedOnAnotherReplicaAndEqualsOneRun) {
  ASSERT_TRUE(clients_[0]->Create(LstmSpec(2, 3, 5, 4), "m").ok());
  std::vector<at::Tensor> xs;
  for (int t = 0; t < 5; ++t) xs.push_back(Randn({2, 3}, 10 + t));

  v1::GetSequenceRequest get;
  get.set_string_id("conversation-1");
  auto none = clients_[1]->GetSequence(get);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound) << none.status();
  EXPECT_TRUE(absl::StrContains(none.status().message(), "was never started")) << none.status();

  // Three steps on replica 0; the stream ends (as a dropped connection would end it).
  ASSERT_TRUE(ResumeAndStep(*clients_[0], 2, "conversation-1", xs, 0, 3).defined());
  // Replica 1 sees it: its set, 3 steps, B = 2, its state.
  get.set_include_state(true);
  auto seen = clients_[1]->GetSequence(get);
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->parameter_set_id(), "m");
  EXPECT_EQ(seen->sequence_step(), 3u);
  EXPECT_EQ(seen->batch_size(), 2);
  EXPECT_EQ(seen->c_size(), 2);
  EXPECT_EQ(seen->h_size(), 2);
  EXPECT_TRUE(absl::StartsWith(seen->parameter_set_checksum(), "sha256:")) << seen->parameter_set_checksum();

  // Resumed on replica 1: its steps are numbered on from 3, and the whole equals one Run.
  const at::Tensor last = ResumeAndStep(*clients_[1], 2, "conversation-1", xs, 3, 5);
  ASSERT_TRUE(last.defined());
  auto run = clients_[0]->Run("m", at::stack(xs));
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_TRUE(at::allclose(last, run->outputs[4], 1e-5, 1e-6)) << (last - run->outputs[4]).abs().max();

  // A resume that brings its own state, or another batch size, is refused with the reason.
  core::LstmState state;
  state.c = {at::zeros({2, 5}), at::zeros({2, 5})};
  state.h = state.c;
  for (auto [batch, given] : {std::pair<int64_t, bool>{2, true}, {3, false}}) {
    auto session = clients_[0]->OpenSession("m", batch, given ? state : core::LstmState(), false, "conversation-1");
    ASSERT_TRUE(session.ok()) << session.status();
    auto out = (*session)->Step(Randn({batch, 3}, 1));
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << out.status();
    EXPECT_TRUE(absl::StrContains(out.status().message(), given ? "give no start.c and start.h" : "batch size 2"))
        << out.status();
  }
}

// A Session that names no sequence is kept in the store under an id the server names: when
// its replica dies, a new Session naming that id goes on from the last acknowledged step on
// the other replica; a session its client closes ends its sequence.
TEST_F(SharedSequenceTest, ASessionWithoutAnIdSurvivesItsReplicaUnderTheIdTheServerNamed) {
  ASSERT_TRUE(clients_[1]->Create(LstmSpec(1, 3, 4, 8), "m").ok());
  std::vector<at::Tensor> xs;
  for (int t = 0; t < 5; ++t) xs.push_back(Randn({1, 3}, 30 + t));
  std::string id;
  {
    auto session = clients_[0]->OpenSession("m", 1);
    ASSERT_TRUE(session.ok()) << session.status();
    for (int t = 0; t < 3; ++t) {
      ASSERT_TRUE((*session)->Step(xs[t]).ok());
      if (t == 0) id = (*session)->sequence_id();
      EXPECT_EQ((*session)->sequence_id(), id) << "one id for the whole session";
    }
    EXPECT_TRUE(absl::StartsWith(id, "session-") && id.size() == 8 + 32) << id;
    servers_[0]->Stop(SIGKILL);  // the replica dies with the stream open
    EXPECT_FALSE((*session)->Step(xs[3]).ok());
  }
  v1::GetSequenceRequest get;
  get.set_string_id(id);
  auto seen = clients_[1]->GetSequence(get);
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->sequence_step(), 3u);
  const at::Tensor last = ResumeAndStep(*clients_[1], 1, id, xs, 3, 5);
  ASSERT_TRUE(last.defined());
  auto run = clients_[1]->Run("m", at::stack(xs));
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_TRUE(at::allclose(last, run->outputs[4], 1e-5, 1e-6)) << (last - run->outputs[4]).abs().max();

  // Closed by its client: the sequence the server named ends with it.
  std::string closed;
  {
    auto session = clients_[1]->OpenSession("m", 1);
    ASSERT_TRUE(session.ok()) << session.status();
    ASSERT_TRUE((*session)->Step(xs[0]).ok());
    ASSERT_TRUE((*session)->Step(xs[1]).ok());
    closed = (*session)->sequence_id();
    EXPECT_NE(closed, id);
    ASSERT_TRUE((*session)->Close().ok());
  }
  get.set_string_id(closed);
  auto gone = clients_[1]->GetSequence(get);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound) << gone.status();
  EXPECT_TRUE(absl::StrContains(gone.status().message(), "ended after 2 steps")) << gone.status();
}

// SIGTERM ends an open Session at its step boundary (not after --drain_timeout) with
// UNAVAILABLE naming its sequence, which goes on from the other replica.
TEST_F(SharedSequenceTest, ADrainEndsAnOpenSessionAtOnceAndItsSequenceGoesOnElsewhere) {
  clients_[0].reset();
  servers_[0].reset();
  auto draining = testing::ServerProcess::Start(
      store_.string(), {absl::StrCat("--sequence_store=", redis_.url()), "--drain_timeout=60s"},
      (store_ / "log-0").string());
  ASSERT_TRUE(draining.ok()) << draining.status();
  servers_[0] = *std::move(draining);
  client::ClientOptions options;
  options.target = servers_[0]->address();
  clients_[0] = client::Client::Connect(options);
  ASSERT_TRUE(clients_[1]->Create(LstmSpec(1, 3, 4, 9), "m").ok());
  std::vector<at::Tensor> xs;
  for (int t = 0; t < 4; ++t) xs.push_back(Randn({1, 3}, 40 + t));
  auto session = clients_[0]->OpenSession("m", 1);
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_TRUE((*session)->Step(xs[0]).ok());
  ASSERT_TRUE((*session)->Step(xs[1]).ok());
  const std::string id = (*session)->sequence_id();
  const absl::Time began = absl::Now();
  EXPECT_EQ(servers_[0]->Stop(SIGTERM, 90), 0);
  // (gRPC's own shutdown waits about 4 s for the client's idle connection to close.)
  EXPECT_LT(absl::Now() - began, absl::Seconds(30)) << "the drain waited for the open session:\n" << servers_[0]->Log();
  auto refused = (*session)->Step(xs[2]);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), absl::StrCat("sequence ", id, " is kept at 2 steps")))
      << refused.status();
  session->reset();

  const at::Tensor last = ResumeAndStep(*clients_[1], 1, id, xs, 2, 4);
  ASSERT_TRUE(last.defined());
  auto run = clients_[1]->Run("m", at::stack(xs));
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_TRUE(at::allclose(last, run->outputs[3], 1e-5, 1e-6)) << (last - run->outputs[3]).abs().max();
}

TEST_F(SharedSequenceTest, GetSequenceRefusesAnIdItCannotTake) {
  v1::GetSequenceRequest none;
  EXPECT_EQ(clients_[0]->GetSequence(none).status().code(), absl::StatusCode::kInvalidArgument);
  v1::GetSequenceRequest zero;
  zero.set_uint64_id(0);
  EXPECT_EQ(clients_[0]->GetSequence(zero).status().code(), absl::StatusCode::kInvalidArgument);
  v1::GetSequenceRequest long_id;
  long_id.set_string_id(std::string(300, 'x'));
  auto got = clients_[0]->GetSequence(long_id);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(got.status().message(), "at most 256")) << got.status();
}

// The server over rediss://, with the CA and a client certificate from its flags.
TEST(SharedSequenceTlsTest, AServerKeepsItsSequencesInARedisOverTls) {
  RedisProcess redis(0, RedisProcess::Transport::kTls);
  ASSERT_TRUE(redis.WaitReady()) << "redis-server with TLS did not start";
  testing::TempDir store;
  auto server = testing::ServerProcess::Start(
      store.path(),
      {absl::StrCat("--sequence_store=", redis.url()), absl::StrCat("--sequence_store_ca_file=", redis.path("ca.crt")),
       absl::StrCat("--sequence_store_cert_file=", redis.path("client.crt")),
       absl::StrCat("--sequence_store_key_file=", redis.path("client.key"))});
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_TRUE(absl::StrContains((*server)->Log(), absl::StrCat("sequence store ", redis.url(), "/0: 0 sequences open")))
      << (*server)->Log();
  client::ClientOptions options;
  options.target = (*server)->address();
  auto client = client::Client::Connect(options);
  ASSERT_TRUE(client->Create(LstmSpec(1, 2, 3, 5), "m").ok());
  auto session = client->OpenSession("m", 1);
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_TRUE((*session)->Step(at::ones({1, 2})).ok());
  ASSERT_TRUE((*session)->Step(at::ones({1, 2})).ok());
  v1::GetSequenceRequest get;
  get.set_string_id((*session)->sequence_id());
  auto seen = client->GetSequence(get);
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->sequence_step(), 2u);
}

}  // namespace
}  // namespace lstmserve
