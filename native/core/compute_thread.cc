// See compute_thread.h for why every call's work runs on one thread.
#include "core/compute_thread.h"

#include "core/common.h"

#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

namespace rt {

namespace {

struct Job {
  std::function<void()> task;
  std::function<void(std::exception_ptr)> done;
};

class ComputeThread {
 public:
  ComputeThread() { std::thread([this] { loop(); }).detach(); }

  void submit(Job job) {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(job));
    wake_.notify_one();
  }

 private:
  void loop() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return !queue_.empty(); });
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      std::exception_ptr error;
      try {
        job.task();
      } catch (...) {
        error = std::current_exception();
      }
      job.task = nullptr;  // the call's captures go before the caller learns it is done
      job.done(error);
    }
  }

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<Job> queue_;
};

}  // namespace

bool compute_thread_enabled() {
  static const bool on = env_choice("ROUNDTRIP_MEMORY_POLICY", {"on", "off"}) == "on";
  return on;
}

void submit_to_compute_thread(std::function<void()> task, std::function<void(std::exception_ptr)> done) {
  // Leaked on purpose: the detached thread outlives static destruction at process exit.
  static ComputeThread* thread = new ComputeThread();
  thread->submit(Job{std::move(task), std::move(done)});
}

}  // namespace rt
