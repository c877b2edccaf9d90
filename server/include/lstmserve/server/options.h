// Options of the lstmserve server, filled from flags in main and validated once.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace lstmserve::server {

struct ServerOptions {
  // HOST:PORT to serve gRPC on; port 0 picks a free port.
  std::string listen = "0.0.0.0:50051";
  // HOST:PORT to serve Prometheus metrics on (HTTP, /metrics); port 0 picks a free port;
  // empty: no metrics endpoint.
  std::string metrics_listen = "0.0.0.0:9464";
  // HOST:PORT to serve the Open Inference Protocol's HTTP/REST API on (/v2/...); port 0 picks
  // a free port; empty: none. Connections are served by an event loop (any number may be
  // open); `http_threads` workers decode inference requests and run those computed inline.
  std::string http_listen = "0.0.0.0:8000";
  int http_threads = 64;
  // A kept-alive HTTP connection with no request this long is closed; a request's line and
  // headers must arrive within `http_header_timeout` of its first byte (else 408 and close).
  absl::Duration http_idle_timeout = absl::Seconds(60);
  absl::Duration http_header_timeout = absl::Seconds(10);
  // HTTP connections open at once; past it a new one is answered 503 and closed.
  int http_max_connections = 10000;
  // Folder of the parameter store (created if missing).
  std::string store_dir = "./lstmserve-data";
  // When set, the server serves this model directory read only instead of the store (a
  // KServe runtime: /mnt/models), see core::ParameterStore::OpenModelDir; a file that does
  // not check out stops the start.
  std::string model_dir;
  // "auto", "cpu", "cuda" or "cuda:N": where sets live and inference runs.
  std::string device = "auto";
  // LibTorch intra-op threads; 0 = every available core.
  int intra_op_threads = 0;
  // Dynamic batching (see batcher.h). Batch threads: 0 = 1 on the CPU (with the default
  // intra-op threads, all cores, one keeps batch threads x intra-op threads <= cores) and 2 on
  // a GPU (each has its own CUDA stream: one's copies overlap the other's compute).
  bool enable_batching = true;
  int num_batch_threads = 0;
  int64_t max_batch_size = 256;                // rows (sum of B) per core call
  int64_t batch_timeout_micros = 10000;        // under load, the longest a batch waits to fill
  int64_t inline_max_work = int64_t{1} << 21;  // lone small CPU requests run on gRPC's thread (0: never)
  int64_t max_queued_requests = 4096;          // beyond: RESOURCE_EXHAUSTED at once
  // The core path every inference call takes (core::LstmPathName): "auto" picks per call by
  // batch size, steps, dtype and storage; another name forces it (a set it cannot serve
  // answers FAILED_PRECONDITION).
  std::string lstm_path = "auto";
  // Sequences: Session streams open here, and stored sequences (the Open Inference
  // Protocol's) in the sequence store: at most this many of each; one not stepped this long
  // is ended (a stream cancelled, a stored one expired).
  int64_t max_sequences = 1024;
  absl::Duration sequence_idle_timeout = absl::Minutes(5);
  // Where stored sequences live: "memory" (this process) or "redis://HOST:PORT[/DB]" (a
  // Redis or Valkey every replica shares; then any replica continues any sequence).
  std::string sequence_store = "memory";
  std::string sequence_store_password_file;                  // the Redis password (AUTH), when it needs one
  std::string sequence_store_ca_file;                        // rediss://: the CA to trust (empty: the system's)
  std::string sequence_store_cert_file;                      // rediss://: a client certificate
  std::string sequence_store_key_file;                       //   and its key
  absl::Duration sequence_store_timeout = absl::Seconds(1);  // per store operation
  // Largest gRPC message in either direction.
  int64_t max_message_bytes = int64_t{64} << 20;
  // Largest tensor in a request, in elements.
  int64_t max_tensor_elements = int64_t{1} << 26;
  // Largest parameter set, in bytes.
  int64_t max_set_bytes = int64_t{1} << 30;
  // All parameter sets held in memory together, in bytes.
  int64_t max_total_set_bytes = int64_t{4} << 30;
  // Most tensors in one set.
  int64_t max_tensors_per_set = 4096;
  // On SIGTERM/SIGINT: how long calls in flight may take to finish.
  absl::Duration drain_timeout = absl::Seconds(10);
  // Whether to serve gRPC server reflection.
  bool reflection = true;
  // TLS: the server's certificate chain and key (PEM); both or neither. With a client CA,
  // mutual TLS: every client must present a certificate that CA signed.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // Bearer tokens, one per line: every call but health must carry one.
  std::string auth_tokens_file;

  // INVALID_ARGUMENT naming the first bad option.
  absl::Status Validate() const;
};

// Splits "HOST:PORT" ("[::1]:50051" too). INVALID_ARGUMENT if malformed.
absl::Status ParseHostPort(const std::string& address, std::string* host, int* port);

}  // namespace lstmserve::server
