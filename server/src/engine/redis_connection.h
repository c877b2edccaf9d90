// One connection to a Redis (or Valkey) server, plain TCP or TLS (OpenSSL), with a time
// limit on every operation. Commands are written and replies parsed by hiredis' protocol
// functions (redisFormatCommandArgv, redisReader), which Debian 12's hiredis 0.14 has; its
// own connections have no TLS, so the socket is this file's.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <hiredis/hiredis.h>
#include <openssl/ssl.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "lstmserve/server/engine/sequence_backend.h"

namespace lstmserve::server::redis {

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

// The TLS settings every connection of a store shares. INVALID_ARGUMENT naming a file that
// cannot be read or a certificate that does not match its key.
class TlsContext {
 public:
  static absl::StatusOr<std::shared_ptr<TlsContext>> Create(const RedisOptions::Tls& files);
  ~TlsContext();
  SSL_CTX* get() const { return ctx_; }

 private:
  explicit TlsContext(SSL_CTX* ctx) : ctx_(ctx) {}
  SSL_CTX* ctx_;
};

class Connection {
 public:
  // Connects (and, with `tls`, handshakes and checks the server's certificate against
  // `host`) within `timeout`. The error's message says what failed, for the caller to
  // prefix with the store's name.
  static absl::StatusOr<std::unique_ptr<Connection>> Open(const std::string& host, int port, absl::Duration timeout,
                                                          std::shared_ptr<TlsContext> tls);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // One command and its reply; nullptr when the connection failed (then `broken()`, and
  // `error()` says why; `timed_out()` when the server did not answer in time).
  Reply Command(const std::vector<std::string>& args);

  bool broken() const { return !error_.empty(); }
  bool timed_out() const { return timed_out_; }
  const std::string& error() const { return error_; }

 private:
  Connection(int fd, SSL* ssl);
  bool WriteAll(const char* data, size_t size);
  // Some bytes into the reader; false on an error, the peer's close, or the time limit.
  bool ReadSome();
  void Fail(std::string why, bool timed_out = false);

  int fd_;
  SSL* ssl_;  // null for plain TCP
  redisReader* reader_;
  std::string error_;
  bool timed_out_ = false;
};

}  // namespace lstmserve::server::redis
