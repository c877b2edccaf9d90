// Runs the real lstmserve binary for a test: 127.0.0.1, an ephemeral port, a given store.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lstmserve::testing {

class ServerProcess {
 public:
  // Starts lstmserve and waits (up to 60 s) for its "listening on HOST:PORT" line. Its log
  // is server.log in `log_dir` (default: the store folder).
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const std::string& store_dir,
                                                              const std::vector<std::string>& flags = {},
                                                              const std::string& log_dir = "");
  ~ServerProcess();  // SIGKILL if still running

  const std::string& address() const { return address_; }
  // "HOST:PORT" of /metrics (empty if the flags turned it off).
  const std::string& metrics_address() const { return metrics_address_; }
  // "HOST:PORT" of the Open Inference Protocol's HTTP API (empty if the flags turned it off).
  const std::string& http_address() const { return http_address_; }
  // GET /metrics (HTTP/1.0 over a plain socket): the exposition text.
  absl::StatusOr<std::string> ScrapeMetrics() const;
  // The value of one series in a scrape, e.g. "lstmserve_batch_queue_wait_seconds_count";
  // -1 when absent.
  static double MetricValue(const std::string& scrape, const std::string& series);
  // Scrapes until `series` reaches `at_least` (up to `timeout_ms`); false if it never does.
  bool WaitForMetric(const std::string& series, double at_least, int timeout_ms = 10000) const;
  // The server's log (its stderr), kept in the store folder.
  std::string Log() const;
  pid_t pid() const { return pid_; }
  // Sends `signal` and waits (up to `timeout_s`); returns the exit status, or -1 if it had
  // to be killed or died of a signal.
  int Stop(int signal, int timeout_s = 30);

 private:
  pid_t pid_ = -1;
  std::string address_;
  std::string metrics_address_;
  std::string http_address_;
  std::string log_path_;
};

// A fresh temporary folder, removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace lstmserve::testing
