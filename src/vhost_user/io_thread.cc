#include "io_thread.h"

#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include <spdlog/spdlog.h>

#include "vdma/base/check.h"

namespace vdma::vhost_user {

Result<std::unique_ptr<IoThread>> IoThread::create(std::string name) {
  auto control = EventFd::create();
  if (!control) return std::move(control).error().with_context("I/O thread");
  if (name.size() > 15) name.resize(15);  // the kernel's limit for a thread name
  std::unique_ptr<IoThread> t(new IoThread(std::move(*control), std::move(name)));
  try {
    t->thread_ = std::thread([p = t.get()] { p->main(); });
  } catch (const std::system_error& e) {
    return make_error(BaseErrc::kSystem, "cannot start I/O thread {}: {}", t->name_, e.what());
  }
  (void)::pthread_setname_np(t->thread_.native_handle(), t->name_.c_str());
  return t;
}

IoThread::~IoThread() {
  {
    std::lock_guard lock(mu_);
    VDMA_CHECK(rings_.empty(), "I/O thread destroyed while it serves a ring");
    exit_ = true;
  }
  (void)control_.signal();
  if (thread_.joinable()) thread_.join();
}

void IoThread::attach(Vring& v) {
  {
    std::lock_guard lock(mu_);
    rings_.push_back(&v);
    ++generation_;
  }
  (void)control_.signal();
}

void IoThread::detach(Vring& v) {
  // The ring's control eventfd is polled only once the thread has taken the
  // ring up; its own one is polled always.
  (void)control_.signal();
  std::unique_lock lock(mu_);
  let_go_.wait(lock, [&] { return std::find(rings_.begin(), rings_.end(), &v) == rings_.end(); });
}

void IoThread::main() {
  std::vector<Member> members;
  std::vector<pollfd> fds;
  uint64_t seen_generation = ~uint64_t{0};
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (exit_) return;
      if (generation_ != seen_generation) {
        // Rings handed over since the last round join with a turn at once;
        // the others keep their state.
        std::vector<Member> now;
        now.reserve(rings_.size());
        for (Vring* v : rings_) {
          auto it = std::find_if(members.begin(), members.end(), [v](const Member& m) { return m.ring == v; });
          if (it != members.end()) {
            now.push_back(*it);
          } else {
            Member m;
            m.ring = v;
            now.push_back(m);
            v->stat_running_.store(true, std::memory_order_relaxed);
          }
        }
        members = std::move(now);
        seen_generation = generation_;
      }
    }

    // Rings asked to stop: wait for their requests in flight, publish what
    // is done, and let them go (Vring::stop_worker waits for that).
    for (size_t i = 0; i < members.size();) {
      Vring& v = *members[i].ring;
      if (!v.stop_.load(std::memory_order_acquire)) {
        ++i;
        continue;
      }
      v.quiesce();
      v.stat_running_.store(false, std::memory_order_relaxed);
      members.erase(members.begin() + static_cast<std::ptrdiff_t>(i));
      {
        // The next round rebuilds the members from rings_ (a ring attached
        // meanwhile is picked up then).
        std::lock_guard lock(mu_);
        rings_.erase(std::find(rings_.begin(), rings_.end(), &v));
        ++generation_;
      }
      let_go_.notify_all();
    }

    for (Member& m : members) {
      if (!m.run) continue;
      m.run = false;
      m.next = m.ring->turn();
    }

    // One poll over every ring that sleeps; a ring that wants another turn
    // at once (kAgain, kPoll, an UPDATE that raced its walk, a stop) makes
    // it a poll without sleeping.
    fds.clear();
    fds.push_back({control_.fd(), POLLIN, 0});
    bool again = false;
    int timeout_ms = -1;
    auto now = std::chrono::steady_clock::now();
    for (Member& m : members) {
      m.waiting = false;
      m.has_deadline = false;
      if (m.ring->stop_.load(std::memory_order_relaxed) || m.next == Vring::Next::kAgain ||
          m.next == Vring::Next::kPoll || !m.ring->prepare_wait(m.next, m.wait)) {
        m.run = true;
        again = true;
        continue;
      }
      m.waiting = true;
      m.first_fd = fds.size();
      fds.insert(fds.end(), std::begin(m.wait.fds), std::end(m.wait.fds));
      if (m.wait.timeout_ms >= 0) {
        m.has_deadline = true;
        m.deadline = now + std::chrono::milliseconds(m.wait.timeout_ms);
        timeout_ms = timeout_ms < 0 ? m.wait.timeout_ms : std::min(timeout_ms, m.wait.timeout_ms);
      }
    }
    if (again) timeout_ms = 0;
    int r = 0;
    do {
      r = ::poll(fds.data(), fds.size(), timeout_ms);
    } while (r < 0 && errno == EINTR);
    if (r < 0) spdlog::error("vhost-user I/O thread {}: poll: {}", name_, std::strerror(errno));
    if ((fds[0].revents & POLLIN) != 0) (void)control_.drain();
    now = std::chrono::steady_clock::now();
    for (Member& m : members) {
      if (!m.waiting) continue;
      bool fired = false;
      for (size_t k = 0; k < std::size(m.wait.fds); ++k) {
        m.wait.fds[k].revents = fds[m.first_fd + k].revents;
        fired = fired || m.wait.fds[k].revents != 0;
      }
      // A failed poll puts every ring that waited in it in NEEDS_RESET (as
      // a ring's own worker does); each then waits for its stop.
      m.ring->finish_wait(m.wait, r);
      if (fired || r < 0 || (m.has_deadline && now >= m.deadline)) m.run = true;
    }
  }
}

}  // namespace vdma::vhost_user
