// Where sequences' records live: in this process (the embedded default) or in a Redis (or
// Valkey) that every replica shares. A backend stores opaque records under versions and
// compares versions on every write, so two replicas never both advance one step; the engine
// (SequenceStore) decides what the records mean.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lstmserve::server {

// A key's record as read, or why there is none.
struct BackendRecord {
  std::string version;  // empty: no record
  std::string bytes;
  // With no record: the trace the last write or end left (it outlives the record by the
  // backend's trace time), empty when none.
  std::string trace;
};

// Thread-safe. Operations fail with UNAVAILABLE (or DEADLINE_EXCEEDED) when the store cannot
// be reached; their messages name the store as Describe() does, never a password.
class SequenceBackend {
 public:
  virtual ~SequenceBackend() = default;

  virtual absl::StatusOr<BackendRecord> Get(const std::string& key) = 0;

  // Writes `bytes` under `version` if the key's version is `expected` (empty: no record);
  // the record expires `ttl` after this write, and `trace` stays for `ttl` plus the trace
  // time. A new record (`expected` empty) is refused with RESOURCE_EXHAUSTED when
  // `max_records` records are live. Returns false, writing nothing, when the version differs.
  virtual absl::StatusOr<bool> Put(const std::string& key, const std::string& expected, const std::string& version,
                                   const std::string& bytes, absl::Duration ttl, const std::string& trace,
                                   int64_t max_records) = 0;

  // Removes the record if its version is `expected`, leaving `trace`; false when it differs.
  virtual absl::StatusOr<bool> End(const std::string& key, const std::string& expected, const std::string& trace) = 0;

  // Records live now (for metrics).
  virtual absl::StatusOr<int64_t> Count() = 0;

  // "memory", or the store's address without its password ("redis://10.0.0.5:6379/0").
  virtual std::string Describe() const = 0;
  // Whether other processes share it (then a replica's copy of a record may be stale).
  virtual bool shared() const = 0;
};

// How long a trace outlives its record: within it, a client is told that its sequence ended
// or expired, rather than that it was never started.
inline constexpr absl::Duration kSequenceTraceTime = absl::Hours(1);

// The process's own store. Its traces take at most kMemoryTraceBytes: past it, the expired
// ones go, then others (any), so that sequences ended fast cannot grow the process.
inline constexpr int64_t kMemoryTraceBytes = int64_t{64} << 20;
std::unique_ptr<SequenceBackend> NewMemorySequenceBackend();

struct RedisOptions {
  std::string url;       // redis://HOST:PORT[/DB], or rediss:// for TLS
  std::string password;  // empty: none (AUTH otherwise)
  // rediss:// only: the CA to trust (empty: the system's), and a client certificate and key.
  struct Tls {
    std::string ca_file, cert_file, key_file;
  } tls;
  absl::Duration timeout = absl::Seconds(1);  // per operation, and to connect
  int connections = 8;                        // kept open at most
};
// A Redis (7 or later) or Valkey server; connects lazily, reconnects with backoff.
// INVALID_ARGUMENT for a malformed URL.
absl::StatusOr<std::unique_ptr<SequenceBackend>> NewRedisSequenceBackend(const RedisOptions& options);

}  // namespace lstmserve::server
