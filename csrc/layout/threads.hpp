// One persistent pool of worker threads shared by every call. A call hands the pool a
// range of work items; the caller works too. If another call holds the pool (concurrent
// Python threads), the newcomer runs its items itself rather than queueing: no deadlock,
// no unbounded thread creation.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#if !defined(_WIN32)
#include <pthread.h>
#endif
#include <thread>
#include <vector>

namespace mpslayout {

// A borrowed callable (two pointers): the pool calls the caller's lambda without copying it
// into a std::function (no allocation, no type-erased copy on the way in).
class BodyRef {
 public:
  template <class F>
  BodyRef(const F& f)  // NOLINT: implicit on purpose, like std::function
      : obj_(&f), call_([](const void* o, int64_t b, int64_t e) { (*static_cast<const F*>(o))(b, e); }) {}
  void operator()(int64_t begin, int64_t end) const { call_(obj_, begin, end); }

 private:
  const void* obj_;
  void (*call_)(const void*, int64_t, int64_t);
};

class ThreadPool {
 public:
  using Body = BodyRef;

  static ThreadPool& instance() {
    static const bool registered = [] {
      // A forked child has none of the parent's workers (and maybe a locked mutex): it
      // starts with a fresh pool. The old one is leaked on purpose. (Windows cannot fork.)
#if !defined(_WIN32)
      pthread_atfork(nullptr, nullptr, [] { current() = new ThreadPool(); });
#endif
      return true;
    }();
    (void)registered;
    return *current();
  }

  // Runs body over [0, n) split in chunks of `grain` items, on up to `threads` threads.
  void run(int64_t n, int64_t grain, int threads, const Body& body) {
    if (n <= 0) return;
    threads = std::min(threads, kMaxThreads);
    grain = std::max<int64_t>(1, grain);
    const int64_t chunks = (n + grain - 1) / grain;
    threads = static_cast<int>(std::min<int64_t>(threads, chunks));
    std::unique_lock<std::mutex> busy(call_mutex_, std::try_to_lock);
    if (threads <= 1 || !busy.owns_lock()) {
      body(0, n);
      return;
    }
    ensure_workers(threads - 1);
    {
      std::lock_guard<std::mutex> lk(m_);
      body_ = &body;
      n_ = n;
      grain_ = grain;
      next_.store(0);
      active_ = threads - 1;
      running_ = 0;
      closed_ = false;
      ++generation_;
    }
    cv_.notify_all();
    work();
    // Close the job: a worker that wakes up late (a descheduled vCPU can take milliseconds)
    // finds it closed and goes back to sleep; only workers already inside are waited for.
    std::unique_lock<std::mutex> lk(m_);
    closed_ = true;
    done_cv_.wait(lk, [&] { return running_ == 0; });
    body_ = nullptr;
  }

 private:
  static constexpr int kMaxThreads = 256;
  ThreadPool() = default;

  static ThreadPool*& current() {
    static ThreadPool* pool = new ThreadPool();  // never destroyed: workers may outlive main
    return pool;
  }

  void work() {
    for (;;) {
      const int64_t begin = next_.fetch_add(grain_);
      if (begin >= n_) break;
      (*body_)(begin, std::min(n_, begin + grain_));
    }
  }

  void ensure_workers(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      const int index = static_cast<int>(workers_.size());
      workers_.emplace_back([this, index] { loop(index); });
      workers_.back().detach();
    }
  }

  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (index >= active_ || closed_) continue;  // not needed, or the job is done
        ++running_;
      }
      work();
      std::lock_guard<std::mutex> lk(m_);
      if (--running_ == 0) done_cv_.notify_one();
    }
  }

  std::mutex call_mutex_;  // one job at a time
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const Body* body_ = nullptr;
  int64_t n_ = 0, grain_ = 1;
  std::atomic<int64_t> next_{0};
  int active_ = 0, running_ = 0;
  bool closed_ = false;
  uint64_t generation_ = 0;
};

}  // namespace mpslayout
