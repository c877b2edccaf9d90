#include "redis_connection.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "absl/strings/str_cat.h"

namespace lstmserve::server::redis {
namespace {

std::string SslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown TLS error" : out;
}

bool IsIpAddress(const std::string& host) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// A TCP connection within `timeout`, then blocking with `timeout` on each send and receive.
absl::StatusOr<int> ConnectTcp(const std::string& host, int port, absl::Duration timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.c_str(), absl::StrCat(port).c_str(), &hints, &found); rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  std::string last = "no address";
  const int timeout_ms = static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(timeout)));
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      last = std::strerror(errno);
      continue;
    }
    int rc = connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = poll(&p, 1, timeout_ms);
      if (rc == 0) {
        close(fd);
        last = absl::StrCat("no connection within ", absl::FormatDuration(timeout));
        continue;
      }
      int err = 0;
      socklen_t len = sizeof(err);
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      errno = err;
      rc = err == 0 ? 0 : -1;
    }
    if (rc != 0) {
      last = std::strerror(errno);
      close(fd);
      continue;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    const timeval tv = absl::ToTimeval(timeout);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    freeaddrinfo(found);
    return fd;
  }
  freeaddrinfo(found);
  return absl::UnavailableError(last);
}

}  // namespace

absl::StatusOr<std::shared_ptr<TlsContext>> TlsContext::Create(const RedisOptions::Tls& files) {
  if (files.cert_file.empty() != files.key_file.empty()) {
    return absl::InvalidArgumentError(
        "--sequence_store_cert_file and --sequence_store_key_file go together: give both or neither");
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) return absl::InternalError(absl::StrCat("TLS: ", SslErrors()));
  std::shared_ptr<TlsContext> out(new TlsContext(ctx));
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (files.ca_file.empty()) {
    if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("TLS: the system's CA certificates: ", SslErrors()));
    }
  } else if (SSL_CTX_load_verify_locations(ctx, files.ca_file.c_str(), nullptr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--sequence_store_ca_file '", files.ca_file, "' is not a readable PEM CA file: ", SslErrors()));
  }
  if (!files.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, files.cert_file.c_str()) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("--sequence_store_cert_file '", files.cert_file,
                                                     "' is not a readable PEM certificate: ", SslErrors()));
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, files.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--sequence_store_key_file '", files.key_file,
                       "' is not the readable PEM key of the certificate: ", SslErrors()));
    }
  }
  return out;
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open(const std::string& host, int port, absl::Duration timeout,
                                                             std::shared_ptr<TlsContext> tls) {
  absl::StatusOr<int> fd = ConnectTcp(host, port, timeout);
  if (!fd.ok()) return fd.status();
  if (tls == nullptr) return std::unique_ptr<Connection>(new Connection(*fd, nullptr));
  SSL* ssl = SSL_new(tls->get());
  if (ssl == nullptr) {
    close(*fd);
    return absl::UnavailableError(absl::StrCat("TLS: ", SslErrors()));
  }
  std::unique_ptr<Connection> c(new Connection(*fd, ssl));
  SSL_set_fd(ssl, *fd);
  // The certificate must name the host: its IP address, or its DNS name (also sent as SNI).
  if (IsIpAddress(host)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl, host.c_str());
    SSL_set1_host(ssl, host.c_str());
  }
  ERR_clear_error();
  if (SSL_connect(ssl) != 1) {
    const long verified = SSL_get_verify_result(ssl);
    if (verified != X509_V_OK) {
      return absl::UnavailableError(absl::StrCat("TLS: the server's certificate is not trusted for ", host, " (",
                                                 X509_verify_cert_error_string(verified), ")"));
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return absl::UnavailableError(
          absl::StrCat("TLS: no handshake within ", absl::FormatDuration(timeout), " (is the port TLS?)"));
    }
    return absl::UnavailableError(absl::StrCat("TLS handshake failed: ", SslErrors()));
  }
  return c;
}

Connection::Connection(int fd, SSL* ssl) : fd_(fd), ssl_(ssl), reader_(redisReaderCreate()) {}

Connection::~Connection() {
  if (ssl_ != nullptr) {
    if (!broken()) SSL_shutdown(ssl_);  // close_notify, without waiting for the answer
    SSL_free(ssl_);
  }
  close(fd_);
  redisReaderFree(reader_);
}

void Connection::Fail(std::string why, bool timed_out) {
  if (error_.empty()) {
    error_ = std::move(why);
    timed_out_ = timed_out;
  }
}

bool Connection::WriteAll(const char* data, size_t size) {
  while (size > 0) {
    ssize_t n;
    if (ssl_ != nullptr) {
      ERR_clear_error();
      const int w = SSL_write(ssl_, data, static_cast<int>(std::min<size_t>(size, 1 << 30)));
      if (w <= 0) {
        const bool timeout = errno == EAGAIN || errno == EWOULDBLOCK;
        Fail(timeout ? "write timed out" : absl::StrCat("TLS write failed: ", SslErrors()), timeout);
        return false;
      }
      n = w;
    } else {
      n = send(fd_, data, size, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        const bool timeout = errno == EAGAIN || errno == EWOULDBLOCK;
        Fail(timeout ? "write timed out" : std::strerror(errno), timeout);
        return false;
      }
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

bool Connection::ReadSome() {
  char buf[16384];
  ssize_t n;
  if (ssl_ != nullptr) {
    ERR_clear_error();
    errno = 0;
    const int r = SSL_read(ssl_, buf, sizeof(buf));
    if (r <= 0) {
      const int kind = SSL_get_error(ssl_, r);
      const bool timeout = errno == EAGAIN || errno == EWOULDBLOCK;
      Fail(timeout                         ? "read timed out"
           : kind == SSL_ERROR_ZERO_RETURN ? "connection closed by the server"
                                           : absl::StrCat("TLS read failed: ", SslErrors()),
           timeout);
      return false;
    }
    n = r;
  } else {
    do {
      n = recv(fd_, buf, sizeof(buf), 0);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
      const bool timeout = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
      Fail(n == 0 ? "connection closed by the server" : timeout ? "read timed out" : std::strerror(errno), timeout);
      return false;
    }
  }
  if (redisReaderFeed(reader_, buf, static_cast<size_t>(n)) != REDIS_OK) {
    Fail(absl::StrCat("protocol error: ", reader_->errstr));
    return false;
  }
  return true;
}

Reply Connection::Command(const std::vector<std::string>& args) {
  if (broken()) return nullptr;
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  char* command = nullptr;
  const int size = redisFormatCommandArgv(&command, static_cast<int>(args.size()), argv.data(), lens.data());
  if (size < 0) {
    Fail("out of memory");
    return nullptr;
  }
  const bool written = WriteAll(command, static_cast<size_t>(size));
  redisFreeCommand(command);
  if (!written) return nullptr;
  for (;;) {
    void* reply = nullptr;
    if (redisReaderGetReply(reader_, &reply) != REDIS_OK) {
      Fail(absl::StrCat("protocol error: ", reader_->errstr));
      return nullptr;
    }
    if (reply != nullptr) return Reply(static_cast<redisReply*>(reply));
    if (!ReadSome()) return nullptr;
  }
}

}  // namespace lstmserve::server::redis
