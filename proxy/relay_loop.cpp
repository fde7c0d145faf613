#include "proxy/relay_loop.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace suction::proxy {

namespace {

using clock = std::chrono::steady_clock;

// A command or an answer fits one read; a full one means a burst is
// streaming, which then moves through a pipe.
constexpr std::size_t kScratch = 16 * 1024;
// A wake-up that brings less than this ends the burst: back to small reads,
// and the pipe goes back to the pool.
constexpr std::size_t kStreamChunk = 16 * 1024;
// Reads per direction in one turn before the other relays get theirs: a fast
// stream cannot starve the loop (it gets another turn right after them).
constexpr int kReadsPerTurn = 16;
constexpr int kPipeSize = 1 << 20;
constexpr std::size_t kPipePool = 16;
constexpr std::uint32_t kEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

// Kernel pipes for splice(2), held by a relay only while a burst streams.
// Empty ones are kept for the next burst, so a burst costs no pipe2, fcntl
// and close calls. The loop's thread only.
class pipe_pool {
 public:
  struct pipe {
    int r = -1, w = -1;
    std::size_t size = 0;
  };
  pipe_pool() = default;
  pipe_pool(const pipe_pool&) = delete;
  pipe_pool& operator=(const pipe_pool&) = delete;
  ~pipe_pool() {
    for (auto& p : idle_) close_pipe(p);
  }
  // r < 0: no pipe to be had (descriptors exhausted); the caller copies instead.
  pipe get() {
    if (!idle_.empty()) {
      pipe p = idle_.back();
      idle_.pop_back();
      return p;
    }
    int fds[2];
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return {};
    ::fcntl(fds[1], F_SETPIPE_SZ, kPipeSize);  // best effort: fewer, larger moves
    const int size = ::fcntl(fds[1], F_GETPIPE_SZ);
    return {fds[0], fds[1], size > 0 ? static_cast<std::size_t>(size) : std::size_t(64 * 1024)};
  }
  // Only an empty pipe can serve another relay.
  void put(pipe p, bool empty) {
    if (p.r < 0) return;
    if (empty && idle_.size() < kPipePool) idle_.push_back(p);
    else close_pipe(p);
  }

 private:
  static void close_pipe(pipe& p) {
    ::close(p.r);
    ::close(p.w);
  }
  std::vector<pipe> idle_;
};

// One direction of a relay: bytes from `from` to `to`.
struct direction {
  int from = -1, to = -1;
  const char* from_name = "";
  const char* to_name = "";
  std::uint64_t* counter = nullptr;  // the relay_result's bytes for this way
  bool readable = true;    // no short read since the last edge on `from`
  bool peer_done = false;  // epoll saw `from`'s FIN or an error: read on until it shows
  bool eof = false;        // `from` read 0
  bool streaming = false;  // the last read was full: read through the pipe
  std::size_t wake_bytes = 0;  // read since the last edge
  std::string pending;         // read, not yet written (the copying path)
  std::size_t pending_off = 0;
  pipe_pool::pipe pipe;        // while streaming, or while it holds bytes
  std::size_t in_pipe = 0;
};

struct conn {
  std::uint64_t id = 0;
  relay_loop::ticket* t = nullptr;
  int client_fd = -1, backend_fd = -1;
  direction up, down;  // client to backend, backend to client
  std::function<void(relay_result)> on_end;
  relay_result result;
  bool ended = false;
  bool client_fin_passed = false;
};

bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

}  // namespace

struct relay_loop::impl {
  struct add_cmd {
    ticket* t;
    std::uint64_t id;
    int client_fd, backend_fd;
    std::string to_backend, to_client;
    std::function<void(relay_result)> on_end;
  };
  struct stop_cmd {
    std::uint64_t id;
    std::string reason;
  };

  int ep = -1, wake = -1;
  std::thread thread;
  const std::chrono::milliseconds idle;
  const std::chrono::milliseconds sweep_every = idle_sweep_interval(idle);

  explicit impl(std::chrono::milliseconds idle_limit) : idle(idle_limit) {}

  std::mutex m;  // guards what follows, up to the loop's own state
  std::vector<std::variant<add_cmd, stop_cmd>> commands;
  std::uint64_t next_id = 1;
  std::atomic<bool> quit{false};  // read after every batch: no lock on the relay path

  // The loop's thread only.
  std::unordered_map<std::uint64_t, std::unique_ptr<conn>> conns;
  std::vector<std::unique_ptr<conn>> finished;  // on_end called at the end of the batch
  std::vector<std::uint64_t> again;             // relays whose turn ran out with more to read
  pipe_pool pipes;
  std::array<char, kScratch> scratch{};
  // Read once per wake-up: what touch() stamps and the idle sweep compares,
  // so a relayed command costs one clock read, not one per read.
  clock::time_point now = clock::now();

  ~impl() {
    if (ep >= 0) ::close(ep);
    if (wake >= 0) ::close(wake);
  }

  void post(std::variant<add_cmd, stop_cmd> cmd) {
    {
      std::lock_guard lock(m);
      commands.push_back(std::move(cmd));
    }
    wake_up();
  }
  void wake_up() const {
    const std::uint64_t one = 1;
    while (::write(wake, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }

  void run();
  int wait_ms(clock::time_point next_sweep) const;
  void end_idle();
  void take_commands();
  void start(add_cmd& a);
  void turn(conn& c);
  void pump(conn& c, direction& d);
  bool flush(conn& c, direction& d);
  bool read_small(conn& c, direction& d);
  bool splice_in(conn& c, direction& d);
  void pass_eof(conn& c, direction& d);
  void end(conn& c, std::string reason);
  void touch(conn& c) const {
    c.t->last_activity_.store(now.time_since_epoch().count(), std::memory_order_relaxed);
  }
};

void relay_loop::ticket::stop(std::string reason) {
  if (loop_) loop_->impl_->post(impl::stop_cmd{id_, std::move(reason)});
}

std::chrono::steady_clock::time_point relay_loop::ticket::last_activity() const {
  return clock::time_point(clock::duration(last_activity_.load(std::memory_order_relaxed)));
}

relay_loop::relay_loop(const std::string& thread_name, std::chrono::milliseconds idle)
    : impl_(std::make_unique<impl>(idle)) {
  impl_->ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (impl_->ep < 0) throw std::system_error(errno, std::system_category(), "relay loop: epoll_create1");
  impl_->wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (impl_->wake < 0) throw std::system_error(errno, std::system_category(), "relay loop: eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;  // relays are their conn's address + side
  if (::epoll_ctl(impl_->ep, EPOLL_CTL_ADD, impl_->wake, &ev) != 0)
    throw std::system_error(errno, std::system_category(), "relay loop: epoll_ctl");
  impl_->thread = std::thread([i = impl_.get(), thread_name] {
    pthread_setname_np(pthread_self(), thread_name.substr(0, 15).c_str());
    i->run();
  });
}

relay_loop::~relay_loop() {
  impl_->quit.store(true);
  impl_->wake_up();
  impl_->thread.join();
  for (auto& [id, c] : impl_->conns) {
    ::close(c->client_fd);
    ::close(c->backend_fd);
    impl_->pipes.put(c->up.pipe, false);
    impl_->pipes.put(c->down.pipe, false);
  }
  for (auto& cmd : impl_->commands)
    if (auto* a = std::get_if<impl::add_cmd>(&cmd)) {
      ::close(a->client_fd);
      ::close(a->backend_fd);
    }
}

void relay_loop::add(ticket& t, int client_fd, int backend_fd, std::string to_backend, std::string to_client,
                     std::function<void(relay_result)> on_end) {
  t.last_activity_.store(clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  std::uint64_t id = 0;
  {
    std::lock_guard lock(impl_->m);
    id = impl_->next_id++;
    t.loop_ = this;
    t.id_ = id;
  }
  impl_->post(impl::add_cmd{&t, id, client_fd, backend_fd, std::move(to_backend), std::move(to_client),
                            std::move(on_end)});
}

void relay_loop::impl::run() {
  std::array<epoll_event, 256> events;
  auto next_sweep = now + sweep_every;
  for (;;) {
    const int n = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()),
                               again.empty() ? wait_ms(next_sweep) : 0);
    if (n < 0 && errno != EINTR) {
      spdlog::critical("relay loop: epoll_wait failed: {}", std::strerror(errno));
      std::abort();  // a broken epoll descriptor: nothing the loop can relay any more
    }
    now = clock::now();
    // Relays whose turn ran out last time go first.
    std::vector<std::uint64_t> waiting;
    waiting.swap(again);
    for (std::uint64_t id : waiting)
      if (auto it = conns.find(id); it != conns.end()) turn(*it->second);
    for (int i = 0; i < n; ++i) {
      const std::uint64_t key = events[i].data.u64;
      if (key == 0) {
        take_commands();
        continue;
      }
      // A relay that ended earlier in this batch is still alive in `finished`;
      // end() takes both sockets out of the set before they are closed, so no
      // later batch names it.
      conn& c = *reinterpret_cast<conn*>(key & ~std::uint64_t(1));
      if (c.ended) continue;
      direction& d = (key & 1) == 0 ? c.up : c.down;  // the side whose socket has news reads
      const std::uint32_t e = events[i].events;
      if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        d.readable = true;
        d.wake_bytes = 0;
        if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) d.peer_done = true;
      }
      turn(c);  // EPOLLOUT: whatever waits in either direction is written now
    }
    if (now >= next_sweep) {
      end_idle();
      next_sweep = now + sweep_every;
    }
    for (auto& c : finished)
      if (c->on_end) c->on_end(std::move(c->result));
    finished.clear();
    if (quit.load()) return;
  }
}

// Until the next idle sweep; none while nothing is relayed (an idle daemon
// does not wake up).
int relay_loop::impl::wait_ms(clock::time_point next_sweep) const {
  if (conns.empty()) return -1;
  if (now >= next_sweep) return 0;
  return static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(next_sweep - now).count());
}

void relay_loop::impl::end_idle() {
  std::vector<conn*> idle_ones;
  for (auto& [id, c] : conns)
    if (now - c->t->last_activity() >= idle) idle_ones.push_back(c.get());
  for (conn* c : idle_ones) end(*c, "idle");
}

void relay_loop::impl::take_commands() {
  std::uint64_t count;
  while (::read(wake, &count, sizeof count) < 0 && errno == EINTR) {
  }
  std::vector<std::variant<add_cmd, stop_cmd>> taken;
  {
    std::lock_guard lock(m);
    taken.swap(commands);
  }
  for (auto& cmd : taken) {
    if (auto* a = std::get_if<add_cmd>(&cmd)) {
      start(*a);
    } else {
      auto& s = std::get<stop_cmd>(cmd);
      if (auto it = conns.find(s.id); it != conns.end()) end(*it->second, std::move(s.reason));
    }
  }
}

void relay_loop::impl::start(add_cmd& a) {
  auto owned = std::make_unique<conn>();
  conn& c = *owned;
  c.id = a.id;
  c.t = a.t;
  c.client_fd = a.client_fd;
  c.backend_fd = a.backend_fd;
  c.on_end = std::move(a.on_end);
  c.up = direction{a.client_fd, a.backend_fd, "client", "backend", &c.result.to_backend};
  c.down = direction{a.backend_fd, a.client_fd, "backend", "client", &c.result.to_client};
  c.up.pending = std::move(a.to_backend);
  c.down.pending = std::move(a.to_client);
  conns.emplace(c.id, std::move(owned));
  for (int side = 0; side < 2; ++side) {
    const int fd = side == 0 ? c.client_fd : c.backend_fd;
    const int flags = ::fcntl(fd, F_GETFL);
    epoll_event ev{};
    ev.events = kEvents;
    static_assert(alignof(conn) >= 2, "the low bit of a conn's address names the side");
    ev.data.u64 = reinterpret_cast<std::uint64_t>(&c) | static_cast<std::uint64_t>(side);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0 || ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
      return end(c, std::string("relay failed: ") + std::strerror(errno));
  }
  turn(c);
}

void relay_loop::impl::turn(conn& c) {
  pump(c, c.up);
  if (!c.ended) pump(c, c.down);
}

// Writes what waits, then reads and writes until `from` is drained, `to`
// takes no more (its EPOLLOUT edge comes back here), the relay ended, or
// the turn ran out.
void relay_loop::impl::pump(conn& c, direction& d) {
  for (int reads = 0;; ++reads) {
    if (!flush(c, d)) return;
    if (d.eof) return pass_eof(c, d);
    if (!d.readable) return;
    if (reads == kReadsPerTurn) {
      again.push_back(c.id);
      return;
    }
    if (!(d.streaming ? splice_in(c, d) : read_small(c, d))) return;
  }
}

// True when nothing waits any more in this direction.
bool relay_loop::impl::flush(conn& c, direction& d) {
  while (d.pending_off < d.pending.size()) {
    const ssize_t n =
        ::send(d.to, d.pending.data() + d.pending_off, d.pending.size() - d.pending_off, MSG_NOSIGNAL);
    if (n > 0) {
      d.pending_off += static_cast<std::size_t>(n);
      *d.counter += static_cast<std::uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && would_block(errno)) return false;
    end(c, std::string(d.to_name) + " closed");
    return false;
  }
  if (!d.pending.empty()) {
    std::string().swap(d.pending);  // an idle relay holds no buffer
    d.pending_off = 0;
  }
  while (d.in_pipe > 0) {
    const ssize_t n = ::splice(d.pipe.r, nullptr, d.to, nullptr, d.in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      d.in_pipe -= static_cast<std::size_t>(n);
      *d.counter += static_cast<std::uint64_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && would_block(errno)) return false;
    end(c, std::string(d.to_name) + " closed");
    return false;
  }
  if (!d.streaming && d.pipe.r >= 0) {
    pipes.put(d.pipe, true);
    d.pipe = {};
  }
  return true;
}

// One read into the loop's scratch buffer, written on at once; what `to`
// cannot take yet is kept in `pending`. False: the relay ended.
bool relay_loop::impl::read_small(conn& c, direction& d) {
  const ssize_t n = ::recv(d.from, scratch.data(), scratch.size(), 0);
  if (n < 0) {
    if (errno == EINTR) return true;
    if (would_block(errno)) {
      d.readable = false;
      return true;
    }
    end(c, std::string(d.from_name) + " closed");
    return false;
  }
  if (n == 0) {
    d.eof = true;
    return true;
  }
  touch(c);
  const auto got = static_cast<std::size_t>(n);
  d.wake_bytes += got;
  if (got == scratch.size()) d.streaming = true;
  else if (!d.peer_done) d.readable = false;  // short: drained until the next edge
  std::size_t sent = 0;
  while (sent < got) {
    const ssize_t w = ::send(d.to, scratch.data() + sent, got - sent, MSG_NOSIGNAL);
    if (w > 0) {
      sent += static_cast<std::size_t>(w);
      *d.counter += static_cast<std::uint64_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && would_block(errno)) break;
    end(c, std::string(d.to_name) + " closed");
    return false;
  }
  if (sent < got) {
    d.pending.assign(scratch.data() + sent, got - sent);
    d.pending_off = 0;
  }
  return true;
}

// One splice from `from` into the (empty) pipe; flush() moves it on. A
// wake-up that brought less than kStreamChunk ends the burst.
//
// Unlike a short recv, a short splice does not mean `from` is drained (the
// pipe can run out of slots before bytes), so the next turn asks again: only
// EAGAIN into the empty pipe says so. Marking it drained early would leave
// the rest of a FETCH in the socket until the backend sends more.
bool relay_loop::impl::splice_in(conn& c, direction& d) {
  if (d.pipe.r < 0) {
    d.pipe = pipes.get();
    if (d.pipe.r < 0) {
      d.streaming = false;  // no pipe to be had: the small reads go on
      return true;
    }
  }
  const ssize_t n = ::splice(d.from, nullptr, d.pipe.w, nullptr, d.pipe.size, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n < 0) {
    if (errno == EINTR) return true;
    if (would_block(errno)) {
      d.readable = false;
      if (d.wake_bytes < kStreamChunk) d.streaming = false;
      return true;
    }
    end(c, std::string(d.from_name) + " closed");
    return false;
  }
  if (n == 0) {
    d.eof = true;
    d.streaming = false;
    return true;
  }
  touch(c);
  const auto got = static_cast<std::size_t>(n);
  d.in_pipe = got;
  d.wake_bytes += got;
  return true;
}

// Everything `from` sent has been written. The client's FIN is passed on to
// the backend, whose answers are still relayed until it closes (as over a
// direct connection: "a LOGOUT" then shutdown(SHUT_WR) gets its answer); the
// backend's end ends the relay.
void relay_loop::impl::pass_eof(conn& c, direction& d) {
  if (&d == &c.down) return end(c, "backend closed");
  if (c.client_fin_passed) return;
  c.client_fin_passed = true;
  if (c.result.end.empty()) c.result.end = "client closed";
  ::shutdown(c.backend_fd, SHUT_WR);
}

void relay_loop::impl::end(conn& c, std::string reason) {
  if (c.ended) return;
  c.ended = true;
  if (c.result.end.empty()) c.result.end = std::move(reason);
  pipes.put(c.up.pipe, c.up.in_pipe == 0);
  pipes.put(c.down.pipe, c.down.in_pipe == 0);
  c.up.pipe = c.down.pipe = {};
  // Out of the set before closing: close alone leaves a registration behind
  // while another descriptor shares the socket, and its events would name
  // this conn after it is freed.
  ::epoll_ctl(ep, EPOLL_CTL_DEL, c.client_fd, nullptr);
  ::epoll_ctl(ep, EPOLL_CTL_DEL, c.backend_fd, nullptr);
  ::close(c.client_fd);
  ::close(c.backend_fd);
  auto it = conns.find(c.id);
  finished.push_back(std::move(it->second));
  conns.erase(it);
}

}  // namespace suction::proxy
