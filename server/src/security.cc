#include "lstmserve/server/security.h"

#include <fstream>
#include <iterator>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lstmserve::server {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " ", path));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!absl::StrContains(text, "-----BEGIN ")) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, " is not PEM (no -----BEGIN line)"));
  }
  return text;
}

// The first certificate of the chain and the key, parsed, and the key the certificate's:
// gRPC would only fail to listen, which reads like a port in use.
absl::Status CheckKeyPair(const std::string& cert_pem, const std::string& key_pem, const TlsFiles& files) {
  std::unique_ptr<BIO, decltype(&BIO_free)> cert_bio(
      BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())), &BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr),
                                                   &X509_free);
  if (!cert) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_cert_file ", files.cert_file, " holds no PEM certificate OpenSSL can read"));
  }
  std::unique_ptr<BIO, decltype(&BIO_free)> key_bio(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())),
                                                    &BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr), &EVP_PKEY_free);
  if (!key) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_key_file ", files.key_file, " holds no unencrypted PEM private key OpenSSL can read"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls_key_file ", files.key_file, " is not the key of the certificate in --tls_cert_file ", files.cert_file));
  }
  return absl::OkStatus();
}

std::string Sha256(absl::string_view text) {
  std::string digest(SHA256_DIGEST_LENGTH, '\0');
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(),
         reinterpret_cast<unsigned char*>(digest.data()));
  return digest;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files) {
  if (files.cert_file.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto cert = ReadPem(files.cert_file, "--tls_cert_file");
  if (!cert.ok()) return cert.status();
  auto key = ReadPem(files.key_file, "--tls_key_file");
  if (!key.ok()) return key.status();
  if (absl::Status matched = CheckKeyPair(*cert, *key, files); !matched.ok()) return matched;
  pair.cert_chain = *std::move(cert);
  pair.private_key = *std::move(key);
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!files.client_ca_file.empty()) {
    auto ca = ReadPem(files.client_ca_file, "--tls_client_ca_file");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *std::move(ca);
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read --auth_tokens_file ", path));
  auto auth = std::unique_ptr<TokenAuthenticator>(new TokenAuthenticator());
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    absl::string_view token = absl::StripAsciiWhitespace(line);
    if (token.empty() || token.front() == '#') continue;
    if (token.size() < 16) {
      return absl::InvalidArgumentError(absl::StrCat("--auth_tokens_file ", path, " line ", line_number,
                                                     ": tokens must have at least 16 characters"));
    }
    auth->digests_.push_back(Sha256(token));
  }
  if (auth->digests_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--auth_tokens_file ", path, " holds no token"));
  }
  return auth;
}

absl::Status TokenAuthenticator::Check(std::optional<absl::string_view> authorization) const {
  if (!authorization.has_value()) {
    return absl::UnauthenticatedError(
        "this server needs a bearer token: send the header (gRPC metadata) 'authorization: Bearer TOKEN'");
  }
  absl::string_view value = *authorization;
  if (!absl::ConsumePrefix(&value, "Bearer ")) {
    return absl::UnauthenticatedError("the authorization header (gRPC metadata) must be 'Bearer TOKEN'");
  }
  const std::string digest = Sha256(absl::StripAsciiWhitespace(value));
  int matches = 0;
  for (const auto& known : digests_) {  // no early exit
    matches |= CRYPTO_memcmp(known.data(), digest.data(), digest.size()) == 0 ? 1 : 0;
  }
  if (matches == 0) return absl::UnauthenticatedError("the bearer token is not valid");
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSecretFile(const std::string& path, const char* flag) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", flag, " ", path));
  }
  std::string secret(absl::StripAsciiWhitespace(line));
  if (secret.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": its first line is empty"));
  return secret;
}

}  // namespace lstmserve::server
