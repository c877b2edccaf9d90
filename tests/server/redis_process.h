// A real Redis for tests: Debian's redis-server on 127.0.0.1 and a free port, in a temporary
// folder of its own (nothing saved), SIGKILLed when the object goes. With TLS, its port
// speaks only TLS, with a certificate for 127.0.0.1 from a CA of its own (made by the
// openssl command), and it asks clients for a certificate from that CA.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace lstmserve::test_support {

class RedisProcess {
 public:
  enum class Transport { kTcp, kTls };
  // `port` 0: a free one.
  explicit RedisProcess(int port = 0, Transport transport = Transport::kTcp) : tls_(transport == Transport::kTls) {
    dir_ = std::filesystem::temp_directory_path() / absl::StrCat("lstmserve-redis-", std::random_device()());
    std::filesystem::create_directories(dir_);
    port_ = port != 0 ? port : FreePort();
    if (tls_ && !MakeCertificates()) return;  // WaitReady fails
    const std::string port_text = std::to_string(port_);
    std::vector<std::string> args = {"redis-server", "--bind", "127.0.0.1",  "--dir",  dir_.string(), "--save", "",
                                     "--appendonly", "no",     "--loglevel", "warning"};
    if (tls_) {
      for (const char* a : {"--port", "0", "--tls-port"}) args.push_back(a);
      args.push_back(port_text);
      for (auto [flag, file] : {std::pair{"--tls-cert-file", "server.crt"},
                                {"--tls-key-file", "server.key"},
                                {"--tls-ca-cert-file", "ca.crt"}}) {
        args.push_back(flag);
        args.push_back(path(file));
      }
      for (const char* a : {"--tls-auth-clients", "yes"}) args.push_back(a);
    } else {
      args.push_back("--port");
      args.push_back(port_text);
    }
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execvp("redis-server", argv.data());
      _exit(127);
    }
  }
  ~RedisProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::filesystem::remove_all(dir_);
  }
  std::string url() const { return absl::StrCat(tls_ ? "rediss" : "redis", "://127.0.0.1:", port_); }
  // With TLS: ca.crt, client.crt, client.key (and another CA, other-ca.crt) in its folder.
  std::string path(const std::string& file) const { return (dir_ / file).string(); }
  int port() const { return port_; }

  // Waits (up to 10 s) until the server accepts connections.
  bool WaitReady() const {
    for (int i = 0; i < 200; ++i) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(port_));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      const bool up = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      close(fd);
      if (up) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  // A CA, a server certificate for 127.0.0.1 and a client certificate signed by it, and an
  // unrelated CA.
  bool MakeCertificates() const {
    const std::string d = dir_.string();
    const std::string quiet = " >/dev/null 2>&1";
    auto key_and_request = [&](const std::string& name, const std::string& cn) {
      return absl::StrCat("openssl req -newkey rsa:2048 -nodes -keyout ", d, "/", name, ".key -out ", d, "/", name,
                          ".csr -subj /CN=", cn, quiet);
    };
    auto sign = [&](const std::string& name, const std::string& ext) {
      return absl::StrCat("openssl x509 -req -in ", d, "/", name, ".csr -CA ", d, "/ca.crt -CAkey ", d,
                          "/ca.key -CAcreateserial -days 2 -out ", d, "/", name, ".crt", ext, quiet);
    };
    const std::string ext = absl::StrCat(d, "/san.ext");
    const std::vector<std::string> commands = {
        absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=lstmserve-test-ca -keyout ", d,
                     "/ca.key -out ", d, "/ca.crt", quiet),
        absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca -keyout ", d,
                     "/other-ca.key -out ", d, "/other-ca.crt", quiet),
        absl::StrCat("echo subjectAltName=IP:127.0.0.1 > ", ext),
        key_and_request("server", "127.0.0.1"),
        sign("server", absl::StrCat(" -extfile ", ext)),
        key_and_request("client", "lstmserve"),
        sign("client", ""),
    };
    for (const auto& c : commands) {
      if (std::system(c.c_str()) != 0) return false;
    }
    return true;
  }

  static int FreePort() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t n = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
    close(fd);
    return ntohs(a.sin_port);
  }

 private:
  const bool tls_;
  std::filesystem::path dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace lstmserve::test_support
