// Intra-op threading for LibTorch and the core's kernels.
#pragma once

namespace lstmserve::core {

// Cores this process may run on (sched_getaffinity, so cgroup/cpuset limits count).
int AvailableCores();

// Sets LibTorch's intra-op threads (BLAS included). `threads` <= 0 means AvailableCores().
// LibTorch 1.13 starts with 1 thread on these machines, so call this once at start-up.
// Returns the number set.
int SetIntraOpThreads(int threads);

}  // namespace lstmserve::core
