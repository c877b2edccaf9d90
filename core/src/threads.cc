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

}  // namespace lstmserve::core
