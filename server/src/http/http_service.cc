#include "lstmserve/server/http/http_service.h"

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

#include "lstmserve/core/status.h"
#include "lstmserve/server/log.h"
#include "lstmserve/server/options.h"

namespace lstmserve::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

// A request body that grows as its bytes arrive. Beast's string_body reserves what the
// Content-Length header claims as soon as the head is read, so a client that announces
// 64 MiB and sends one byte a second would hold 64 MiB; this one reserves at most 1 MiB
// ahead of the bytes.
struct GrowingBody {
  using value_type = std::string;
  static std::uint64_t size(const value_type& body) { return body.size(); }

  class reader {
   public:
    template <bool isRequest, class Fields>
    reader(http::header<isRequest, Fields>&, value_type& body) : body_(body) {}
    void init(const boost::optional<std::uint64_t>& length, beast::error_code& ec) {
      if (length) body_.reserve(static_cast<size_t>(std::min<std::uint64_t>(*length, 1 << 20)));
      ec = {};
    }
    template <class ConstBufferSequence>
    std::size_t put(const ConstBufferSequence& buffers, beast::error_code& ec) {
      const std::size_t n = asio::buffer_size(buffers);
      for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers); ++it) {
        const asio::const_buffer b(*it);
        body_.append(static_cast<const char*>(b.data()), b.size());
      }
      ec = {};
      return n;
    }
    void finish(beast::error_code& ec) { ec = {}; }

   private:
    value_type& body_;
  };
};

using Parser = http::request_parser<GrowingBody>;

// Inference bodies up to this size are decoded on the I/O thread that read them.
constexpr size_t kInlineDecodeBytes = 16 << 10;

std::string Str(beast::string_view s) { return std::string(s.data(), s.size()); }

std::chrono::nanoseconds Chrono(absl::Duration d) { return absl::ToChronoNanoseconds(d); }

// What the transport answers on its own (the request never reached the handler).
HttpResponse TransportError(int status, absl::string_view message) {
  HttpResponse response = HttpError(absl::InvalidArgumentError(message));
  response.status = status;
  return response;
}

// The answer to a request the parser refused.
HttpResponse ParseFailure(const beast::error_code& ec, const HttpLimits& limits) {
  if (ec == http::error::header_limit) {
    return TransportError(431, absl::StrCat("the request line and headers are over ", kMaxHttpHeadBytes, " bytes"));
  }
  if (ec == http::error::body_limit) {
    return TransportError(
        413, absl::StrCat("the body is over ", limits.max_body_bytes, " bytes (the server's --max_message_bytes)"));
  }
  if (ec == beast::error::timeout) {
    return TransportError(408, "the request did not arrive in time; the connection is closed");
  }
  return TransportError(400, absl::StrCat("the request is not valid HTTP/1.1: ", ec.message()));
}

// True when the peer has closed its side: a zero-byte peek. Bytes waiting (a pipelined
// request, a TLS record) mean it is still there.
bool PeerClosed(int fd) {
  char c;
  const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // On the session's strand: closes the connection if it waits for a request.
  virtual void StopIfIdle() = 0;
  // What it is doing, for the log of a drain that ran out of time.
  std::atomic<const char*> phase{"accepted"};
};

}  // namespace

struct HttpService::Impl {
  Impl(ServiceContext* context, const HttpLimits& l, int threads)
      : handler(context), limits(l), workers(static_cast<size_t>(threads)) {}

  HttpHandler handler;
  HttpLimits limits;
  std::string address;
  std::atomic<bool> stopping{false};

  // Declared before the io_context: sessions that its destruction releases unregister here.
  std::mutex mu;
  std::condition_variable changed;
  std::map<SessionBase*, std::weak_ptr<SessionBase>> sessions;  // guarded by mu
  int64_t inferring = 0;  // inferences handed to the engine and not answered; guarded by mu
  bool stopped = false;   // guarded by mu

  std::optional<ssl::context> tls;
  asio::io_context ioc;
  // Keeps the I/O threads in ioc.run() until Stop: a connection whose request is in the
  // engine has no operation pending on the io_context, and once the acceptor is closed
  // (draining) nothing else may be; without it run() would return and the answer, posted
  // later, would never be written (the drain then waited its whole grace).
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{ioc.get_executor()};
  std::optional<tcp::acceptor> acceptor;
  std::optional<asio::steady_timer> accept_retry;
  asio::thread_pool workers;  // inferences: decoding, and the batcher's inline runs
  std::vector<std::thread> io_threads;

  void Accept();
  void OnAccept(tcp::socket socket);
  void Register(const std::shared_ptr<SessionBase>& session) {
    std::lock_guard<std::mutex> lock(mu);
    sessions.emplace(session.get(), session);
  }
  void Unregister(SessionBase* session) {
    std::lock_guard<std::mutex> lock(mu);
    sessions.erase(session);
    changed.notify_all();
  }
  size_t Open() {
    std::lock_guard<std::mutex> lock(mu);
    return sessions.size();
  }
  void InferenceBegins() {
    std::lock_guard<std::mutex> lock(mu);
    ++inferring;
  }
  // The last thing an inference's answer does with the service: Stop may return after it.
  void InferenceEnds() {
    std::lock_guard<std::mutex> lock(mu);
    --inferring;
    changed.notify_all();
  }
};

namespace {

// One connection, on its own strand: reads a request, answers it, reads the next.
template <class Stream>
class Session final : public SessionBase, public std::enable_shared_from_this<Session<Stream>> {
 public:
  Session(HttpService::Impl* impl, Stream stream, std::string peer)
      : impl_(impl), stream_(std::move(stream)), peer_(std::move(peer)), timer_(stream_.get_executor()) {}
  ~Session() override { impl_->Unregister(this); }

  void Start() {
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      ReadRequest();
    } else {
      Lowest().expires_after(Chrono(impl_->limits.header_timeout));
      stream_.async_handshake(ssl::stream_base::server, [self = this->shared_from_this()](beast::error_code ec) {
        if (ec) return;  // not TLS, or a certificate refused: nothing to answer in HTTP
        self->ReadRequest();
      });
    }
  }

  void StopIfIdle() override {
    asio::post(stream_.get_executor(), [self = this->shared_from_this()] {
      if (self->idle_) self->Lowest().cancel();
    });
  }

 private:
  beast::tcp_stream& Lowest() { return beast::get_lowest_layer(stream_); }

  // Waits (up to the idle limit) for a request's first bytes, then reads its head (up to
  // the header limit).
  void ReadRequest() {
    if (impl_->stopping) return Close();
    if (buffer_.size() > 0) return ReadHead();
    this->phase = "idle";
    idle_ = true;
    Lowest().expires_after(Chrono(impl_->limits.idle_timeout));
    stream_.async_read_some(buffer_.prepare(16 << 10),
                            [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
                              self->idle_ = false;
                              if (ec) return self->Close();  // gone, idle too long, or stopping
                              self->buffer_.commit(n);
                              self->ReadHead();
                            });
  }

  // A time limit on reading a request's head or body. Unlike the stream's own timeout, which
  // closes the socket, it only cancels the read, so that the client is told (408).
  void Arm(absl::Duration limit) {
    Lowest().expires_never();
    timed_out_ = false;
    const uint64_t armed = ++armed_;
    timer_.expires_after(Chrono(limit));
    timer_.async_wait([self = this->shared_from_this(), armed](beast::error_code ec) {
      // Disarmed, or fired for a read that has ended since (its handler was already queued).
      if (ec || armed != self->armed_) return;
      self->timed_out_ = true;
      beast::error_code ignored;
      self->Lowest().socket().cancel(ignored);
    });
  }
  // The error a read ended with, with a cancellation by Arm's timer told as a timeout.
  beast::error_code Disarm(beast::error_code ec) {
    ++armed_;
    timer_.cancel();
    if (timed_out_ && ec == asio::error::operation_aborted) return beast::error::timeout;
    return ec;
  }

  void ReadHead() {
    this->phase = "reading a head";
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(kMaxHttpHeadBytes));
    parser_->body_limit(static_cast<std::uint64_t>(impl_->limits.max_body_bytes));
    Arm(impl_->limits.header_timeout);
    http::async_read_header(
        stream_, buffer_, *parser_,
        [self = this->shared_from_this()](beast::error_code ec, std::size_t) { self->OnHead(self->Disarm(ec)); });
  }

  void OnHead(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::operation_aborted) {
      return Close();
    }
    if (ec) return Fail(ec);
    const auto& message = parser_->get();
    head_ = HttpRequest();
    head_.method = Str(message.method_string());
    head_.target = Str(message.target());
    for (const auto& field : message) head_.headers.emplace_back(Str(field.name_string()), Str(field.value()));
    head_.peer = peer_;
    if (std::optional<HttpResponse> refused = impl_->handler.Admit(head_)) {
      // The body, if any, is not read: the connection cannot carry another request.
      keep_alive_ = parser_->is_done() && message.keep_alive();
      linger_ = !parser_->is_done();
      version_ = message.version();
      return Write(*std::move(refused));
    }
    const auto expect = head_.Header("Expect");
    if (expect && absl::EqualsIgnoreCase(*expect, "100-continue") && !parser_->is_done()) {
      auto go_on = std::make_shared<http::response<http::empty_body>>(http::status::continue_, 11);
      Lowest().expires_after(Chrono(impl_->limits.write_timeout));
      return http::async_write(stream_, *go_on,
                               [self = this->shared_from_this(), go_on](beast::error_code ec, std::size_t) {
                                 if (ec) return self->Close();
                                 self->ReadBody();
                               });
    }
    ReadBody();
  }

  void ReadBody() {
    this->phase = "reading a body";
    Arm(impl_->limits.body_timeout);
    http::async_read(stream_, buffer_, *parser_, [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
      self->OnBody(self->Disarm(ec));
    });
  }

  void OnBody(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::operation_aborted) {
      return Close();
    }
    if (ec) return Fail(ec);
    auto& message = parser_->get();
    keep_alive_ = message.keep_alive();
    version_ = message.version();
    HttpRequest request = std::move(head_);
    request.body = std::move(message.body());
    parser_.reset();
    Lowest().expires_never();
    auto self = this->shared_from_this();
    if (HttpHandler::Immediate(request)) {
      // Probes and metadata: answered here, on the I/O thread, never behind an inference.
      return impl_->handler.Handle(std::move(request), [self](HttpResponse r) { self->Write(std::move(r)); });
    }
    this->phase = "inferring";
    const int fd = Lowest().socket().native_handle();
    request.cancelled = [fd] { return PeerClosed(fd); };
    HttpService::Impl* impl = impl_;
    impl->InferenceBegins();
    // A small request is decoded and queued here: a hop to a worker costs more than its
    // decoding (perf_analyzer, S at c64: see README). A large one goes to a worker, so that
    // its decoding never holds the connections of this I/O thread.
    const bool small =
        request.body.size() <= kInlineDecodeBytes && HttpRouteName(request.method, request.target) == "ModelInfer";
    auto run = [impl, self, request = std::move(request)]() mutable {
      // The answer may come on the batcher's thread, after Stop has stopped the I/O threads
      // (then it is dropped with the io_context). The callback keeps no reference to the
      // session once called, so the session never ends on that thread after Stop returned.
      auto holder = std::make_shared<std::shared_ptr<Session>>(std::move(self));
      HttpHandler& handler = impl->handler;
      handler.Handle(std::move(request), [impl, holder](HttpResponse r) {
        std::shared_ptr<Session> session = std::move(*holder);
        if (session != nullptr) {
          auto executor = session->stream_.get_executor();
          asio::post(executor,
                     [session = std::move(session), r = std::move(r)]() mutable { session->Write(std::move(r)); });
        }
        impl->InferenceEnds();
      });
    };
    if (small) {
      run();
    } else {
      asio::post(impl->workers, std::move(run));
    }
  }

  // An answer the transport gives on its own; the connection closes after it.
  void Fail(const beast::error_code& ec) {
    keep_alive_ = false;
    linger_ = true;  // the client may still be sending: read on until it sees the answer
    HttpResponse response = ParseFailure(ec, impl_->limits);
    LogError(absl::StrCat("http=none peer=", peer_, " status=", response.status, " message=\"", ec.message(), "\""));
    Write(std::move(response));
  }

  void Write(HttpResponse answer) {
    this->phase = "writing";
    if (impl_->stopping) keep_alive_ = false;
    response_ = std::make_shared<http::response<http::string_body>>();
    auto& r = *response_;
    r.version(version_);
    r.result(static_cast<unsigned>(answer.status));
    if (answer.status == 499) r.reason("Client Closed Request");
    for (auto& [name, value] : answer.headers) r.set(name, value);
    if (!answer.content_type.empty()) r.set(http::field::content_type, answer.content_type);
    r.body() = std::move(answer.body);
    r.keep_alive(keep_alive_);
    r.prepare_payload();
    Lowest().expires_after(Chrono(impl_->limits.write_timeout));
    http::async_write(stream_, r, [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
      self->response_.reset();
      if (ec || !self->keep_alive_) return self->Close();
      self->ReadRequest();
    });
  }

  void Close() {
    beast::error_code ignored;
    if (!linger_) {
      // Idle, gone, or done: nothing more to say or to wait for.
      Lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
      return;
    }
    // After an answer to a request whose bytes were not all read: the answer is sent, and
    // what the client still sends is read and dropped (up to 2 s) so that closing does not
    // reset the connection before the client has read the answer.
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      Lowest().socket().shutdown(tcp::socket::shutdown_send, ignored);
    } else {
      stream_.next_layer().socket().shutdown(tcp::socket::shutdown_send, ignored);
    }
    this->phase = "lingering";
    Lowest().expires_after(std::chrono::seconds(2));
    Discard();
  }

  void Discard() {
    Lowest().async_read_some(asio::buffer(discard_),
                             [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                               if (!ec) self->Discard();
                             });
  }

  HttpService::Impl* impl_;
  Stream stream_;
  std::string peer_;
  beast::flat_buffer buffer_;
  std::optional<Parser> parser_;
  HttpRequest head_;
  std::shared_ptr<http::response<http::string_body>> response_;
  asio::steady_timer timer_;
  uint64_t armed_ = 0;  // which Arm the timer serves
  bool timed_out_ = false;
  bool idle_ = false;
  bool linger_ = false;
  bool keep_alive_ = true;
  std::array<char, 4096> discard_;
  unsigned version_ = 11;
};

}  // namespace

void HttpService::Impl::Accept() {
  acceptor->async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (stopping || ec == asio::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors, most likely: try again shortly rather than spin.
      LogError(absl::StrCat("http: accept failed: ", ec.message()));
      accept_retry->expires_after(std::chrono::milliseconds(50));
      accept_retry->async_wait([this](beast::error_code wait) {
        if (!wait && !stopping) Accept();
      });
      return;
    }
    OnAccept(std::move(socket));
    Accept();
  });
}

void HttpService::Impl::OnAccept(tcp::socket socket) {
  beast::error_code ec;
  socket.set_option(tcp::no_delay(true), ec);  // small answers must not wait for a delayed ACK
  const auto remote = socket.remote_endpoint(ec);
  std::string peer = ec ? "unknown" : absl::StrCat(remote.address().to_string(), ":", remote.port());
  if (Open() >= static_cast<size_t>(limits.max_connections)) {
    // Plain HTTP is told why in a best-effort write; a TLS client only sees the close.
    if (!tls) {
      const HttpResponse busy =
          HttpError(absl::UnavailableError("the server has too many connections open; try again"));
      const std::string answer =
          absl::StrCat("HTTP/1.1 503 Service Unavailable\r\nContent-Type: ", busy.content_type,
                       "\r\nConnection: close\r\nContent-Length: ", busy.body.size(), "\r\n\r\n", busy.body);
      (void)::send(socket.native_handle(), answer.data(), answer.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    socket.shutdown(tcp::socket::shutdown_both, ec);
    return;
  }
  if (tls) {
    using TlsStream = beast::ssl_stream<beast::tcp_stream>;
    auto session = std::make_shared<Session<TlsStream>>(this, TlsStream(beast::tcp_stream(std::move(socket)), *tls),
                                                        std::move(peer));
    Register(session);
    session->Start();
  } else {
    auto session =
        std::make_shared<Session<beast::tcp_stream>>(this, beast::tcp_stream(std::move(socket)), std::move(peer));
    Register(session);
    session->Start();
  }
}

absl::StatusOr<std::unique_ptr<HttpService>> HttpService::Start(const std::string& listen, int threads,
                                                                const HttpLimits& limits, const TlsFiles& tls,
                                                                ServiceContext* ctx) {
  std::string host;
  int port = 0;
  LSTMSERVE_RETURN_IF_ERROR(ParseHostPort(listen, &host, &port));
  auto impl = std::make_unique<Impl>(ctx, limits, threads);
  if (!tls.cert_file.empty()) {
    impl->tls.emplace(ssl::context::tls_server);
    beast::error_code ec;
    impl->tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                               ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1,
                           ec);
    if (!ec) impl->tls->use_certificate_chain_file(tls.cert_file, ec);
    if (!ec) impl->tls->use_private_key_file(tls.key_file, ssl::context::pem, ec);
    if (!ec && !tls.client_ca_file.empty()) {
      impl->tls->load_verify_file(tls.client_ca_file, ec);
      if (!ec) impl->tls->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert, ec);
    }
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the HTTP server cannot use --tls_cert_file, --tls_key_file or --tls_client_ca_file: ", ec.message()));
    }
  }
  absl::string_view bare = host;
  if (absl::ConsumePrefix(&bare, "[")) absl::ConsumeSuffix(&bare, "]");
  beast::error_code ec;
  tcp::resolver resolver(impl->ioc);
  const auto endpoints = resolver.resolve(std::string(bare), std::to_string(port), tcp::resolver::passive, ec);
  const auto cannot = [&](const beast::error_code& why) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", listen, " for HTTP: ", why.message(), " (in use, or not a local address?)"));
  };
  if (ec || endpoints.empty()) return cannot(ec);
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  impl->acceptor.emplace(impl->ioc);
  impl->acceptor->open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor->bind(endpoint, ec);
  if (!ec) impl->acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return cannot(ec);
  impl->address = absl::StrCat(host, ":", impl->acceptor->local_endpoint().port());
  impl->accept_retry.emplace(impl->ioc);
  impl->Accept();
  // Two I/O threads: reading, writing and the probes; inferences run on the workers.
  for (int i = 0; i < 2; ++i) impl->io_threads.emplace_back([io = &impl->ioc] { io->run(); });
  return std::unique_ptr<HttpService>(new HttpService(std::move(impl)));
}

HttpService::HttpService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpService::~HttpService() { Stop(); }

const std::string& HttpService::address() const { return impl_->address; }

void HttpService::Stop(absl::Duration grace) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
  }
  impl_->stopping = true;
  asio::post(impl_->ioc, [impl = impl_.get()] {
    beast::error_code ignored;
    impl->acceptor->close(ignored);
    impl->accept_retry->cancel();
  });
  std::vector<std::shared_ptr<SessionBase>> open;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    for (auto& [raw, weak] : impl_->sessions) {
      if (auto session = weak.lock()) open.push_back(std::move(session));
    }
  }
  for (auto& session : open) session->StopIfIdle();
  open.clear();
  {
    // What is being read or handled is answered (with Connection: close), up to `grace`.
    std::unique_lock<std::mutex> lock(impl_->mu);
    if (!impl_->changed.wait_for(lock, absl::ToChronoMilliseconds(grace), [&] { return impl_->sessions.empty(); })) {
      std::map<std::string, int> phases;
      for (auto& [raw, weak] : impl_->sessions) ++phases[raw->phase.load()];
      std::string text;
      for (const auto& [phase, n] : phases) absl::StrAppend(&text, text.empty() ? "" : ", ", n, " ", phase);
      LogError(absl::StrCat("http: ", impl_->sessions.size(), " connections still open after the drain's ",
                            absl::FormatDuration(grace), " (", text, "); closed"));
    }
  }
  impl_->work.reset();
  impl_->ioc.stop();
  for (auto& thread : impl_->io_threads) thread.join();
  impl_->workers.join();
  {
    // Inferences still in the engine answer into the stopped io_context; their answers are
    // dropped with it. Waits for the batcher to let go of them.
    std::unique_lock<std::mutex> lock(impl_->mu);
    impl_->changed.wait(lock, [&] { return impl_->inferring == 0; });
  }
}

}  // namespace lstmserve::server
