// A minimal epoll relay for one connection: what an event-driven relay costs with nothing else
// around it (relay_probe.py). Modes, to see whether per-thread kernel costs matter:
//   0  plain recv/send through glibc
//   1  unshare(CLONE_FILES) first: a descriptor table of its own (the kernel's light fdget)
//   2  raw syscall(): no glibc cancellation wrappers
// usage: epoll_relay LISTEN_PORT BACKEND_PORT IDLE_THREADS MODE MAX_SECONDS
#include "probe_net.hpp"

#include <sched.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: epoll_relay LISTEN_PORT BACKEND_PORT IDLE_THREADS MODE MAX_SECONDS\n");
    return 2;
  }
  const int listen_port = std::atoi(argv[1]), backend_port = std::atoi(argv[2]);
  const int idle_threads = std::atoi(argv[3]), mode = std::atoi(argv[4]);
  alarm(static_cast<unsigned>(std::atoi(argv[5])));  // a bound on the whole run, whatever happens
  std::signal(SIGPIPE, SIG_IGN);
  static std::mutex m;
  static std::condition_variable cv;
  for (int i = 0; i < idle_threads; ++i)
    std::thread([] {
      std::unique_lock l(m);
      cv.wait(l, [] { return false; });
    }).detach();
  const int c = probe::accept_one(listen_port);
  const int b = probe::connect_to(backend_port);
  if (mode == 1 && unshare(CLONE_FILES) != 0) {
    perror("epoll_relay: unshare");
    return 1;
  }
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;  // as suction's relay loop registers them
  ev.data.fd = c;
  epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
  ev.data.fd = b;
  epoll_ctl(ep, EPOLL_CTL_ADD, b, &ev);
  static char buf[16384];
  for (;;) {
    epoll_event evs[4];
    const int n = epoll_wait(ep, evs, 4, 5000);
    for (int i = 0; i < n; ++i) {
      const int from = evs[i].data.fd, to = from == c ? b : c;
      for (;;) {
        const ssize_t r = mode == 2 ? syscall(SYS_recvfrom, from, buf, sizeof buf, MSG_DONTWAIT, nullptr, nullptr)
                                    : recv(from, buf, sizeof buf, MSG_DONTWAIT);
        if (r == 0) return 0;
        if (r < 0) break;
        // A NOOP and its answer fit any socket buffer: no partial writes to keep.
        if (mode == 2) syscall(SYS_sendto, to, buf, r, MSG_NOSIGNAL, nullptr, 0);
        else send(to, buf, static_cast<size_t>(r), MSG_NOSIGNAL);
        if (r < static_cast<ssize_t>(sizeof buf)) break;
      }
    }
  }
}
