// Raises too-small thread stacks that a library asks for.
//
// civetweb (the HTTP server under prometheus-cpp's Exposer) gives each of its threads a
// fixed 100 KiB stack. glibc carves a thread's static TLS out of that stack, and the
// libraries linked here need more than it (OpenBLAS alone 60 KiB, LibTorch 10 KiB), so
// pthread_create fails with EINVAL and /metrics cannot start ("Cannot create threads").
// This definition in the executable takes precedence over glibc's for every library; it
// keeps any size of 1 MiB or more and raises smaller ones to 1 MiB.
#include <dlfcn.h>
#include <pthread.h>

#include <cstddef>

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) noexcept {
  using SetStackSize = int (*)(pthread_attr_t*, size_t);
  static const auto real = reinterpret_cast<SetStackSize>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  constexpr size_t kMinimum = size_t{1} << 20;
  return real(attr, size < kMinimum ? kMinimum : size);
}
