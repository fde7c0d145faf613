// The plaintext relay after login, on an epoll loop of its own (one thread
// per io thread), outside Asio's reactor.
//
// Why: Asio's reactor pays one system call per wait that the relay does not
// need (a speculative recv that returns EAGAIN, or an epoll_ctl re-arming the
// descriptor), 8 per relayed command against nginx's 6. Here both sockets are
// registered once, edge-triggered, with EPOLLRDHUP, and a short read means
// the socket is drained until the next edge (nginx's rule): per command one
// epoll_wait, one recv and one send each way. Streaming bursts move through
// a kernel pipe (splice(2)), so a large FETCH is not copied through user space.
//
// Idle relays (no byte either way for `idle`) are ended by the loop itself,
// swept every idle_sweep_interval() in epoll_wait's timeout: no timer
// descriptor, no wake-up while nothing is relayed.
//
// Threading: add() and ticket::stop() may be called from any thread; they
// queue a command and wake the loop. Everything else (the descriptors, the
// buffers, the pipes) belongs to the loop's thread alone. on_end runs there,
// once per relay, after both descriptors are closed.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "proxy/relay_control.hpp"

namespace suction::proxy {

class relay_loop {
 public:
  // One relay on the loop, as the session and the daemon see it. Lives in the
  // session's frame until on_end has run; neither copied nor moved.
  class ticket : public relay_control {
   public:
    ticket() = default;
    ticket(const ticket&) = delete;
    ticket& operator=(const ticket&) = delete;
    void stop(std::string reason) override;  // any thread; nothing once ended
    std::chrono::steady_clock::time_point last_activity() const override;

   private:
    friend class relay_loop;
    relay_loop* loop_ = nullptr;
    std::uint64_t id_ = 0;
    std::atomic<std::chrono::steady_clock::rep> last_activity_{0};
  };

  // Starts the loop's thread, named `thread_name` (top -H); relays idle for
  // `idle` end with "idle". Throws std::system_error when the kernel gives no
  // epoll or eventfd descriptor.
  relay_loop(const std::string& thread_name, std::chrono::milliseconds idle);
  // Stops and joins the thread, then closes what is still relayed without
  // calling its on_end (the sessions' io threads are gone by then).
  ~relay_loop();
  relay_loop(const relay_loop&) = delete;
  relay_loop& operator=(const relay_loop&) = delete;

  // Takes both connected plaintext sockets (made non-blocking here) and
  // relays between them: `to_backend` and `to_client` are written first
  // (what was read during login). When the relay ends it closes both and
  // calls on_end(result) on the loop's thread.
  void add(ticket& t, int client_fd, int backend_fd, std::string to_backend, std::string to_client,
           std::function<void(relay_result)> on_end);

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

}  // namespace suction::proxy
