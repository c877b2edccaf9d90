#include "lstmserve/core/threads.h"

#include <sched.h>

#include <thread>

#include <ATen/Parallel.h>

namespace lstmserve::core {

int AvailableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

int SetIntraOpThreads(int threads) {
  const int n = threads > 0 ? threads : AvailableCores();
  at::set_num_threads(n);
  return n;
}

void InitThreadsOnThisThread() {
  // lazy_init_num_threads is inline with a thread_local flag: in LibTorch 2.x the library keeps
  // its own copy of that flag, which get_num_threads() runs (2.x's also sets MKL's local count).
  at::internal::lazy_init_num_threads();
  (void)at::get_num_threads();
}

}  // namespace lstmserve::core
