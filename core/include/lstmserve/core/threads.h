// Intra-op threading for LibTorch and the core's kernels.
#pragma once

namespace lstmserve::core {

// Cores this process may run on (sched_getaffinity, so cgroup/cpuset limits count).
int AvailableCores();

// Sets LibTorch's intra-op threads (BLAS included). `threads` <= 0 means AvailableCores().
// LibTorch 1.13 starts with 1 thread on these machines, so call this once at start-up.
// Returns the number set.
int SetIntraOpThreads(int threads);

// Applies the configured intra-op thread count to the calling thread now, as ATen does on a
// thread's first parallel call. OpenMP's (and MKL's local) thread count is per thread, so a
// call that pins it, or whose bits depend on it, must come after this: were ATen's first
// parallel call to happen inside, it would change the count midway. Cheap after the first
// call on a thread.
void InitThreadsOnThisThread();

}  // namespace lstmserve::core
