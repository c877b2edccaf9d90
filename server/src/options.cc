#include "lstmserve/server/options.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "lstmserve/core/stacked_lstm.h"

namespace lstmserve::server {

absl::Status ParseHostPort(const std::string& address, std::string* host, int* port) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not HOST:PORT"));
  }
  int p = -1;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 || p > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", address, "' has no port in 0..65535"));
  }
  *host = address.substr(0, colon);
  *port = p;
  return absl::OkStatus();
}

absl::Status ServerOptions::Validate() const {
  std::string host;
  int port = 0;
  if (auto s = ParseHostPort(listen, &host, &port); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--listen: ", s.message()));
  }
  if (!metrics_listen.empty()) {
    if (auto s = ParseHostPort(metrics_listen, &host, &port); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--metrics_listen: ", s.message(), " (or empty for none)"));
    }
  }
  if (!http_listen.empty()) {
    if (auto s = ParseHostPort(http_listen, &host, &port); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--http_listen: ", s.message(), " (or empty for none)"));
    }
  }
  if (http_threads < 1 || http_threads > 4096) return absl::InvalidArgumentError("--http_threads must be in [1, 4096]");
  if (http_idle_timeout <= absl::ZeroDuration() || http_idle_timeout > absl::Hours(24)) {
    return absl::InvalidArgumentError("--http_idle_timeout must be in (0, 24h]");
  }
  if (http_max_connections < 1 || http_max_connections > 1000000) {
    return absl::InvalidArgumentError("--http_max_connections must be in [1, 1000000]");
  }
  if (http_header_timeout <= absl::ZeroDuration() || http_header_timeout > absl::Hours(1)) {
    return absl::InvalidArgumentError("--http_header_timeout must be in (0, 1h]");
  }
  if (store_dir.empty()) return absl::InvalidArgumentError("--store_dir must not be empty");
  if (intra_op_threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (num_batch_threads < 0 || num_batch_threads > 256) {
    return absl::InvalidArgumentError("--num_batch_threads must be in [0, 256] (0: 1 on the CPU, 2 on a GPU)");
  }
  if (max_batch_size < 1) return absl::InvalidArgumentError("--max_batch_size must be >= 1");
  if (inline_max_work < 0) return absl::InvalidArgumentError("--inline_max_work must be >= 0 (0: never)");
  if (batch_timeout_micros < 0 || batch_timeout_micros > 10'000'000) {
    return absl::InvalidArgumentError("--batch_timeout_micros must be in [0, 10000000]");
  }
  if (max_queued_requests < 1) return absl::InvalidArgumentError("--max_queued_requests must be >= 1");
  if (auto path = core::ParseLstmPath(lstm_path); !path.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--lstm_path: ", path.status().message()));
  }
  if (max_sequences < 0) return absl::InvalidArgumentError("--max_sequences must be >= 0");
  if (sequence_idle_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--sequence_idle_timeout must be > 0");
  }
  if (sequence_store != "memory" && !absl::StartsWith(sequence_store, "redis://") &&
      !absl::StartsWith(sequence_store, "rediss://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--sequence_store is '", sequence_store,
                     "'; expected memory, redis://HOST:PORT[/DB] or rediss://HOST:PORT[/DB]"));
  }
  if (sequence_store == "memory" && !sequence_store_password_file.empty()) {
    return absl::InvalidArgumentError("--sequence_store_password_file is for a redis:// --sequence_store");
  }
  if (!absl::StartsWith(sequence_store, "rediss://") &&
      (!sequence_store_ca_file.empty() || !sequence_store_cert_file.empty() || !sequence_store_key_file.empty())) {
    return absl::InvalidArgumentError(
        "--sequence_store_ca_file, --sequence_store_cert_file and --sequence_store_key_file are for a rediss:// "
        "(TLS) --sequence_store");
  }
  if (sequence_store_cert_file.empty() != sequence_store_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--sequence_store_cert_file and --sequence_store_key_file go together: give both or neither");
  }
  if (sequence_store_timeout <= absl::ZeroDuration() || sequence_store_timeout > absl::Minutes(1)) {
    return absl::InvalidArgumentError("--sequence_store_timeout must be in (0, 1m]");
  }
  if (max_message_bytes < 1024 || max_message_bytes > (int64_t{2} << 30) - 1) {
    return absl::InvalidArgumentError("--max_message_bytes must be in [1024, 2^31 - 1]");
  }
  if (max_tensor_elements < 1) return absl::InvalidArgumentError("--max_tensor_elements must be >= 1");
  if (max_set_bytes < 1) return absl::InvalidArgumentError("--max_set_bytes must be >= 1");
  if (max_total_set_bytes < max_set_bytes) {
    return absl::InvalidArgumentError("--max_total_set_bytes must be >= --max_set_bytes");
  }
  if (max_tensors_per_set < 1) return absl::InvalidArgumentError("--max_tensors_per_set must be >= 1");
  if (tls_cert_file.empty() != tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert_file and --tls_key_file go together");
  }
  if (!tls_client_ca_file.empty() && tls_cert_file.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca_file (mutual TLS) needs --tls_cert_file and --tls_key_file");
  }
  if (drain_timeout < absl::ZeroDuration()) return absl::InvalidArgumentError("--drain_timeout must be >= 0");
  return absl::OkStatus();
}

}  // namespace lstmserve::server
