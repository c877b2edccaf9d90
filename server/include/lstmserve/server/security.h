// Transport security and authentication of the server: TLS or mutual TLS credentials from
// PEM files, and bearer tokens read from a file.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lstmserve::server {

struct TlsFiles {
  std::string cert_file;       // the server's certificate chain (PEM); empty: no TLS
  std::string key_file;        // its private key (PEM)
  std::string client_ca_file;  // when set: mutual TLS, clients must present a certificate it signed
};

// Insecure credentials when `files.cert_file` is empty; else TLS, or mutual TLS with a
// client CA. INVALID_ARGUMENT naming a file that cannot be read or is not PEM, or a key that
// is not the key of the certificate (checked here: gRPC would only fail to listen).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files);

// Bearer tokens: a call must carry the header (gRPC metadata) "authorization: Bearer <token>"
// with one of the tokens; the same for every protocol. Tokens are kept as SHA-256 digests and compared in constant time
// (every digest, every byte), so neither the time taken nor memory reveals them. Thread-safe.
class TokenAuthenticator {
 public:
  // Reads one token per line (blank lines and lines starting with '#' skipped; at least
  // 16 characters each). INVALID_ARGUMENT for an unreadable file, no token, a short one.
  static absl::StatusOr<std::unique_ptr<TokenAuthenticator>> FromFile(const std::string& path);

  // Checks the value of a call's "authorization" header (gRPC metadata or HTTP header;
  // nullopt when the call has none). OK, or UNAUTHENTICATED saying what is wrong (never
  // echoing the token).
  absl::Status Check(std::optional<absl::string_view> authorization) const;

 private:
  std::vector<std::string> digests_;  // 32 bytes each
};

// The secret a file holds on its first line (surrounding blanks stripped), for `flag`'s
// messages. INVALID_ARGUMENT when the file cannot be read or its first line is empty.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path, const char* flag);

}  // namespace lstmserve::server
