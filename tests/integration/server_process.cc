#include "server_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lstmserve::testing {

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(const std::string& store_dir,
                                                                    const std::vector<std::string>& flags,
                                                                    const std::string& log_dir) {
  int out[2];
  if (pipe(out) != 0) return absl::InternalError("pipe failed");
  std::vector<std::string> args = {LSTMSERVE_SERVER_BINARY,        "--listen=127.0.0.1:0",
                                   "--metrics_listen=127.0.0.1:0", "--http_listen=127.0.0.1:0",
                                   "--store_dir=" + store_dir,     "--threads=1"};
  args.insert(args.end(), flags.begin(), flags.end());
  std::filesystem::create_directories(store_dir);
  const std::string log_path = (log_dir.empty() ? store_dir : log_dir) + "/server.log";
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    if (FILE* log = std::fopen(log_path.c_str(), "w")) dup2(fileno(log), STDERR_FILENO);
    close(out[0]);
    close(out[1]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  auto server = std::unique_ptr<ServerProcess>(new ServerProcess());
  server->pid_ = pid;
  server->log_path_ = log_path;
  std::string buffer;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{out[0], POLLIN, 0};
    if (poll(&p, 1, 200) > 0) {
      char chunk[256];
      const ssize_t n = read(out[0], chunk, sizeof(chunk));
      if (n <= 0) break;
      buffer.append(chunk, static_cast<size_t>(n));
      const auto at = buffer.find("listening on ");
      const auto end = at == std::string::npos ? std::string::npos : buffer.find('\n', at);
      if (end != std::string::npos) {
        server->address_ = buffer.substr(at + 13, end - at - 13);
        // The server prints its lines in one write.
        auto line = [&](const std::string& prefix) {
          const auto from = buffer.find(prefix, end);
          const auto to = from == std::string::npos ? std::string::npos : buffer.find('\n', from);
          return to == std::string::npos ? std::string()
                                         : buffer.substr(from + prefix.size(), to - from - prefix.size());
        };
        server->metrics_address_ = line("metrics on ");
        server->http_address_ = line("http on ");
        close(out[0]);
        return server;
      }
    }
  }
  close(out[0]);
  return absl::DeadlineExceededError(absl::StrCat("lstmserve did not print 'listening on'; it printed: ", buffer));
}

absl::StatusOr<std::string> ServerProcess::ScrapeMetrics() const {
  const auto colon = metrics_address_.rfind(':');
  if (colon == std::string::npos) return absl::FailedPreconditionError("no metrics address");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(metrics_address_.substr(colon + 1))));
  if (inet_pton(AF_INET, metrics_address_.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError("metrics address is not IPv4");
  }
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (fd >= 0) close(fd);
    return absl::UnavailableError("cannot connect to the metrics endpoint");
  }
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char chunk[4096];
  for (ssize_t n; (n = read(fd, chunk, sizeof(chunk))) > 0;) response.append(chunk, static_cast<size_t>(n));
  close(fd);
  const auto body = response.find("\r\n\r\n");
  if (body == std::string::npos) return absl::DataLossError("no HTTP body");
  return response.substr(body + 4);
}

double ServerProcess::MetricValue(const std::string& scrape, const std::string& series) {
  size_t at = 0;
  while ((at = scrape.find(series, at)) != std::string::npos) {
    const bool line_start = at == 0 || scrape[at - 1] == '\n';
    const size_t after = at + series.size();
    if (line_start && after < scrape.size() && scrape[after] == ' ') return std::stod(scrape.substr(after + 1));
    at = after;
  }
  return -1;
}

bool ServerProcess::WaitForMetric(const std::string& series, double at_least, int timeout_ms) const {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    auto scrape = ScrapeMetrics();
    if (scrape.ok() && MetricValue(*scrape, series) >= at_least) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

std::string ServerProcess::Log() const {
  std::ifstream in(log_path_);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

int ServerProcess::Stop(int signal, int timeout_s) {
  if (pid_ <= 0) return -1;
  kill(pid_, signal);
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    const pid_t done = waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Stop(SIGKILL, 10);
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/lstmserve-test-XXXXXX";
  path_ = mkdtemp(tmpl);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace lstmserve::testing
