// IoThread: an event-loop thread that serves several vrings of one session
// (BackendOptions::iothreads), in the spirit of QEMU's IOThread/AioContext.
//
// Its loop: one turn (Vring::turn) of every ring that has something to do,
// then one poll() over the wait sets of all its rings (Vring::prepare_wait:
// control, kick, back-end channel, device completions) and its own control
// eventfd; a ring whose fds fired or whose timeout passed gets the next
// turn. A ring inside its busy-poll window returns Next::kPoll instead of
// spinning, so it never starves the others: the thread then polls without
// sleeping. Each ring's device queue (vdma-blk: its own io_uring) is used by
// this thread only, so the data path takes no lock; the session thread only
// hands rings over (attach) and takes them back (detach), under the mutex.
//
// A ring asked to stop (Vring::stop_worker) is quiesced by this thread, as a
// ring's own worker does at its end: the thread waits for that ring's
// requests in flight, so its other rings pause meanwhile (as QEMU's drain
// of one AioContext does).
#pragma once

#include <poll.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "vdma/base/result.h"
#include "vdma/base/event_fd.h"
#include "vring.h"

namespace vdma::vhost_user {

class IoThread {
 public:
  // Starts the thread, named `name` (at most 15 characters are kept).
  // Errors: BaseErrc::kSystem (eventfd, thread).
  [[nodiscard]] static Result<std::unique_ptr<IoThread>> create(std::string name);
  // Precondition: no ring is attached.
  ~IoThread();
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;

  // Session thread: the ring's worker state is set up (Vring::start); from
  // now on this thread serves it.
  void attach(Vring& v);
  // Session thread, after v's stop flag was set: returns once this thread
  // has quiesced v and no longer touches it.
  void detach(Vring& v);

  [[nodiscard]] const std::string& name() const noexcept { return name_; }

 private:
  IoThread(EventFd control, std::string name) noexcept : control_(std::move(control)), name_(std::move(name)) {}
  void main();

  // The thread's view of one ring.
  struct Member {
    Vring* ring = nullptr;
    Vring::Next next = Vring::Next::kAgain;
    bool run = true;       // gets a turn in the next round
    bool waiting = false;  // its wait set is in the poll below
    bool has_deadline = false;
    std::chrono::steady_clock::time_point deadline{};
    size_t first_fd = 0;   // its wait set's place in the poll array
    Vring::WaitSet wait;
  };

  EventFd control_;  // attach, detach, exit
  std::string name_;
  std::mutex mu_;
  std::condition_variable let_go_;
  std::vector<Vring*> rings_;  // guarded by mu_: attached and not let go yet
  uint64_t generation_ = 0;    // guarded by mu_: changes with rings_
  bool exit_ = false;          // guarded by mu_
  std::thread thread_;
};

}  // namespace vdma::vhost_user
