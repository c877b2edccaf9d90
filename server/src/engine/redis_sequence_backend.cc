// Sequences in Redis (or Valkey), over redis::Connection (plain TCP or TLS; hiredis' protocol
// functions). Per sequence key K:
//   lstmserve:seq:{K}    a hash: v (the record's version), b (the record); its TTL is the idle
//                        timeout, renewed by every write
//   lstmserve:trace:{K}  a string the last write or end left; lives an hour past the record
//   lstmserve:sequences  a sorted set of live record keys by expiry time (the open count and
//                        --max_sequences, across replicas)
// Writes are Lua scripts that compare the version and write in one step (Redis runs a
// script alone), so two replicas never both advance one sequence from the same version.
#include <algorithm>
#include <csignal>
#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

#include "lstmserve/core/status.h"
#include "lstmserve/server/engine/sequence_backend.h"
#include "redis_connection.h"

namespace lstmserve::server {
namespace {

constexpr const char* kIndexKey = "lstmserve:sequences";

// KEYS: record, trace. Returns {version, bytes, trace} ('' where absent).
constexpr const char* kGetScript = R"lua(
local r = redis.call('HMGET', KEYS[1], 'v', 'b')
if r[1] then return {r[1], r[2] or '', ''} end
return {'', '', redis.call('GET', KEYS[2]) or ''}
)lua";

// KEYS: record, trace, index. ARGV: expected, version, bytes, ttl ms, trace, trace ms, max.
// Returns 1 (written), 0 (another version) or -1 (a new record past max).
constexpr const char* kPutScript = R"lua(
local v = redis.call('HGET', KEYS[1], 'v') or ''
if v ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if v == '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then return -1 end
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'b', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), KEYS[1])
return 1
)lua";

// KEYS: record, trace, index. ARGV: expected, trace, trace ms. Returns 1 or 0.
constexpr const char* kEndScript = R"lua(
local v = redis.call('HGET', KEYS[1], 'v') or ''
if v ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZREM', KEYS[3], KEYS[1])
return 1
)lua";

// KEYS: index. The live records.
constexpr const char* kCountScript = R"lua(
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
return redis.call('ZCARD', KEYS[1])
)lua";

using redis::Reply;
using Context = std::unique_ptr<redis::Connection>;

class RedisSequenceBackend final : public SequenceBackend {
 public:
  RedisSequenceBackend(RedisOptions options, std::string host, int port, int db, std::shared_ptr<redis::TlsContext> tls)
      : options_(std::move(options)), host_(std::move(host)), port_(port), db_(db), tls_(std::move(tls)) {}

  absl::StatusOr<BackendRecord> Get(const std::string& key) override {
    LSTMSERVE_ASSIGN_OR_RETURN(Reply reply, (Eval(kGetScript, {RecordKey(key), TraceKey(key)}, {})));
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) return Unexpected("Get");
    BackendRecord out;
    out.version.assign(reply->element[0]->str, reply->element[0]->len);
    out.bytes.assign(reply->element[1]->str, reply->element[1]->len);
    out.trace.assign(reply->element[2]->str, reply->element[2]->len);
    return out;
  }

  absl::StatusOr<bool> Put(const std::string& key, const std::string& expected, const std::string& version,
                           const std::string& bytes, absl::Duration ttl, const std::string& trace,
                           int64_t max_records) override {
    const int64_t ttl_ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(ttl));
    LSTMSERVE_ASSIGN_OR_RETURN(Reply reply, (Eval(kPutScript, {RecordKey(key), TraceKey(key), kIndexKey},
                                                  {expected, version, bytes, absl::StrCat(ttl_ms), trace,
                                                   absl::StrCat(ttl_ms + absl::ToInt64Milliseconds(kSequenceTraceTime)),
                                                   absl::StrCat(max_records)})));
    if (reply->type != REDIS_REPLY_INTEGER) return Unexpected("Put");
    if (reply->integer < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat(max_records, " sequences are open in ", Describe(), " (--max_sequences)"));
    }
    return reply->integer == 1;
  }

  absl::StatusOr<bool> End(const std::string& key, const std::string& expected, const std::string& trace) override {
    LSTMSERVE_ASSIGN_OR_RETURN(Reply reply,
                               (Eval(kEndScript, {RecordKey(key), TraceKey(key), kIndexKey},
                                     {expected, trace, absl::StrCat(absl::ToInt64Milliseconds(kSequenceTraceTime))})));
    if (reply->type != REDIS_REPLY_INTEGER) return Unexpected("End");
    return reply->integer == 1;
  }

  absl::StatusOr<int64_t> Count() override {
    LSTMSERVE_ASSIGN_OR_RETURN(Reply reply, (Eval(kCountScript, {kIndexKey}, {})));
    if (reply->type != REDIS_REPLY_INTEGER) return Unexpected("Count");
    return static_cast<int64_t>(reply->integer);
  }

  std::string Describe() const override {
    return absl::StrCat(tls_ ? "rediss://" : "redis://", host_, ":", port_, "/", db_);
  }
  bool shared() const override { return true; }

 private:
  static std::string RecordKey(const std::string& key) { return absl::StrCat("lstmserve:seq:{", key, "}"); }
  static std::string TraceKey(const std::string& key) { return absl::StrCat("lstmserve:trace:{", key, "}"); }

  absl::Status Unexpected(const char* what) const {
    return absl::UnavailableError(
        absl::StrCat("the sequence store ", Describe(), " gave an unexpected reply to ", what));
  }

  // One command on a connection; nullptr when the connection failed.
  static Reply Command(redis::Connection* c, const std::vector<std::string>& args) { return c->Command(args); }

  absl::StatusOr<Context> Connect() {
    {
      absl::MutexLock lock(&mu_);
      if (absl::Now() < retry_after_) {
        return absl::UnavailableError(absl::StrCat("the sequence store ", Describe(), " is unreachable (", last_error_,
                                                   "); retrying the connection"));
      }
    }
    absl::StatusOr<Context> opened = redis::Connection::Open(host_, port_, options_.timeout, tls_);
    Context c;
    absl::Status status;
    if (!opened.ok()) {
      status = absl::UnavailableError(
          absl::StrCat("cannot connect to the sequence store ", Describe(), ": ", opened.status().message()));
    } else {
      c = *std::move(opened);
      if (!options_.password.empty()) status = Check(c.get(), Command(c.get(), {"AUTH", options_.password}), "AUTH");
      if (status.ok() && db_ != 0) status = Check(c.get(), Command(c.get(), {"SELECT", absl::StrCat(db_)}), "SELECT");
    }
    absl::MutexLock lock(&mu_);
    if (!status.ok()) {
      backoff_ = std::min(absl::Seconds(2), std::max(absl::Milliseconds(50), backoff_ * 2));
      retry_after_ = absl::Now() + backoff_;
      last_error_ = std::string(status.message());
      return status;
    }
    backoff_ = absl::ZeroDuration();
    return c;
  }

  absl::Status Check(redis::Connection* c, const Reply& reply, const char* what) const {
    if (reply == nullptr) return ConnectionError(c, what);
    if (reply->type == REDIS_REPLY_ERROR) {
      return absl::UnavailableError(absl::StrCat("the sequence store ", Describe(), " refused ", what, ": ",
                                                 std::string(reply->str, reply->len)));
    }
    return absl::OkStatus();
  }

  absl::Status ConnectionError(redis::Connection* c, const char* what) const {
    const std::string detail = c->broken() ? c->error() : "connection lost";
    if (c->timed_out()) {
      return absl::DeadlineExceededError(absl::StrCat("the sequence store ", Describe(), " did not answer ", what,
                                                      " within ", absl::FormatDuration(options_.timeout)));
    }
    return absl::UnavailableError(absl::StrCat("the sequence store ", Describe(), " failed on ", what, ": ", detail));
  }

  // Runs a script (by its SHA once loaded) on a pooled connection. A connection that fails
  // is dropped; an operation that failed on a connection kept from before is tried once
  // more on a new one (the server may have restarted since).
  absl::StatusOr<Reply> Eval(const char* script, const std::vector<std::string>& keys,
                             const std::vector<std::string>& args) {
    for (int attempt = 0;; ++attempt) {
      Context c;
      bool reused = false;
      {
        absl::MutexLock lock(&mu_);
        if (!idle_.empty()) {
          c = std::move(idle_.back());
          idle_.pop_back();
          reused = true;
        }
      }
      if (c == nullptr) {
        absl::StatusOr<Context> made = Connect();
        if (!made.ok()) return made.status();
        c = *std::move(made);
      }
      absl::StatusOr<Reply> reply = EvalOn(c.get(), script, keys, args);
      if (reply.ok()) {
        absl::MutexLock lock(&mu_);
        if (static_cast<int>(idle_.size()) < options_.connections) idle_.push_back(std::move(c));
        return reply;
      }
      if (!c->broken()) {  // the server answered with an error: the connection is fine
        absl::MutexLock lock(&mu_);
        if (static_cast<int>(idle_.size()) < options_.connections) idle_.push_back(std::move(c));
        return reply.status();
      }
      if (!reused || attempt > 0) return reply.status();
    }
  }

  absl::StatusOr<Reply> EvalOn(redis::Connection* c, const char* script, const std::vector<std::string>& keys,
                               const std::vector<std::string>& args) {
    std::string sha;
    {
      absl::MutexLock lock(&mu_);
      if (auto it = shas_.find(script); it != shas_.end()) sha = it->second;
    }
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (sha.empty()) {
        Reply loaded = Command(c, {"SCRIPT", "LOAD", script});
        LSTMSERVE_RETURN_IF_ERROR(Check(c, loaded, "SCRIPT LOAD"));
        sha.assign(loaded->str, loaded->len);
        absl::MutexLock lock(&mu_);
        shas_[script] = sha;
      }
      std::vector<std::string> argv = {"EVALSHA", sha, absl::StrCat(keys.size())};
      argv.insert(argv.end(), keys.begin(), keys.end());
      argv.insert(argv.end(), args.begin(), args.end());
      Reply reply = Command(c, argv);
      if (reply != nullptr && reply->type == REDIS_REPLY_ERROR &&
          absl::StartsWith(absl::string_view(reply->str, reply->len), "NOSCRIPT")) {
        sha.clear();  // the server restarted without its script cache: load it again
        continue;
      }
      LSTMSERVE_RETURN_IF_ERROR(Check(c, reply, "a script"));
      return reply;
    }
    return absl::UnavailableError(absl::StrCat("the sequence store ", Describe(), " keeps forgetting its scripts"));
  }

  const RedisOptions options_;
  const std::string host_;
  const int port_;
  const int db_;
  const std::shared_ptr<redis::TlsContext> tls_;  // rediss:// only
  absl::Mutex mu_;
  std::vector<Context> idle_ ABSL_GUARDED_BY(mu_);
  std::map<const char*, std::string> shas_ ABSL_GUARDED_BY(mu_);
  absl::Time retry_after_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Duration backoff_ ABSL_GUARDED_BY(mu_);
  std::string last_error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<SequenceBackend>> NewRedisSequenceBackend(const RedisOptions& options) {
  absl::string_view rest = options.url;
  const bool tls = absl::ConsumePrefix(&rest, "rediss://");
  if (!tls && !absl::ConsumePrefix(&rest, "redis://")) {
    return absl::InvalidArgumentError(absl::StrCat("--sequence_store is '", options.url,
                                                   "'; expected memory, redis://HOST:PORT[/DB] or rediss://..."));
  }
  const bool tls_files =
      !options.tls.ca_file.empty() || !options.tls.cert_file.empty() || !options.tls.key_file.empty();
  if (!tls && tls_files) {
    return absl::InvalidArgumentError(
        "--sequence_store_ca_file, --sequence_store_cert_file and --sequence_store_key_file are for a rediss:// "
        "(TLS) --sequence_store");
  }
  if (absl::StrContains(rest, '@')) {
    return absl::InvalidArgumentError(
        "--sequence_store must not carry a password (it would show in ps and logs): put it in "
        "--sequence_store_password_file");
  }
  std::string db_text;
  if (size_t slash = rest.find('/'); slash != absl::string_view::npos) {
    db_text = std::string(rest.substr(slash + 1));
    rest = rest.substr(0, slash);
  }
  int db = 0;
  if (!db_text.empty() && (!absl::SimpleAtoi(db_text, &db) || db < 0 || db > 1000000)) {
    return absl::InvalidArgumentError(absl::StrCat("--sequence_store's database '", db_text, "' is not a number"));
  }
  const size_t colon = rest.rfind(':');
  int port = 6379;
  std::string host(rest);
  if (colon != absl::string_view::npos) {
    host = std::string(rest.substr(0, colon));
    if (!absl::SimpleAtoi(rest.substr(colon + 1), &port) || port < 1 || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("--sequence_store's port in '", options.url, "' is not 1 to 65535"));
    }
  }
  if (host.empty()) return absl::InvalidArgumentError(absl::StrCat("--sequence_store '", options.url, "' has no host"));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);  // [::1]
  std::shared_ptr<redis::TlsContext> context;
  if (tls) {
    LSTMSERVE_ASSIGN_OR_RETURN(context, redis::TlsContext::Create(options.tls));
  }
  // A write to a connection the server closed must fail, not end the process.
  struct sigaction old {};
  if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
  return std::unique_ptr<SequenceBackend>(
      new RedisSequenceBackend(options, std::move(host), port, db, std::move(context)));
}

}  // namespace lstmserve::server
