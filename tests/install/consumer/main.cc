// Prints the health of the server at argv[1] through the installed C++ client.
#include <cstdio>
#include <string>

#include "lstmserve/client/client.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer HOST:PORT\n");
    return 2;
  }
  lstmserve::client::ClientOptions options;
  options.target = argv[1];
  auto client = lstmserve::client::Client::Connect(options);
  auto health = client->Health();
  if (!health.ok()) {
    std::fprintf(stderr, "consumer: %s\n", std::string(health.status().message()).c_str());
    return 1;
  }
  std::printf("%s\n", health->c_str());
  return 0;
}
