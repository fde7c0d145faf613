// A blocking client connection to the daemon's status socket (JSON lines),
// with one deadline for the whole exchange: `suction status` and `suction
// migrate` (enqueue) talk through it.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <string_view>

namespace suction::cli {

using clock_type = std::chrono::steady_clock;

// A daemon answering more than this on one line is not a status socket.
constexpr std::size_t kMaxStatusAnswer = 64u << 20;

// One line for stderr; run_status_command prints it and exits 1.
struct link_failure {
  std::string message;
};

// A connection to the status socket with one deadline for everything.
class daemon_link {
 public:
  daemon_link(std::string path, std::chrono::seconds timeout)
      : path_(std::move(path)), timeout_(timeout), deadline_(clock_type::now() + timeout) {}
  ~daemon_link() {
    if (fd_ >= 0) ::close(fd_);
  }
  daemon_link(const daemon_link&) = delete;
  daemon_link& operator=(const daemon_link&) = delete;

  void connect() {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path_.empty() || path_.size() >= sizeof addr.sun_path)
      throw link_failure{"cannot connect to " + path_ + ": not a usable socket path (empty or longer than " +
                    std::to_string(sizeof addr.sun_path - 1) + " bytes)"};
    std::memcpy(addr.sun_path, path_.data(), path_.size());
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw link_failure{std::string("cannot create a socket: ") + std::strerror(errno)};
    // A blocking connect bounded by SO_SNDTIMEO: a Unix socket whose backlog is
    // full makes connect wait, which a non-blocking connect cannot poll for.
    timeval tv = remaining_timeval();
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      int e = errno;
      if (e == EAGAIN || e == ETIMEDOUT || e == EINPROGRESS) throw timed_out();
      throw link_failure{"cannot connect to " + path_ + ": " + std::strerror(e) + connect_hint(e)};
    }
  }

  void send_all(std::string_view data) {
    while (!data.empty()) {
      wait_for(POLLOUT);
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        throw link_failure{"lost the connection to " + path_ + ": " + std::strerror(errno)};
      }
      data.remove_prefix(static_cast<std::size_t>(n));
    }
  }

  // One answer line, without its "\n".
  std::string read_line() {
    for (;;) {
      if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      if (buffer_.size() > kMaxStatusAnswer)
        throw link_failure{path_ + " sent an answer longer than " + std::to_string(kMaxStatusAnswer >> 20) +
                      " MiB: not a suction status socket?"};
      wait_for(POLLIN);
      char chunk[65536];
      ssize_t n = ::recv(fd_, chunk, sizeof chunk, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        throw link_failure{"lost the connection to " + path_ + ": " + std::strerror(errno)};
      }
      if (n == 0) throw link_failure{path_ + " closed the connection before answering"};
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }

 private:
  link_failure timed_out() const {
    return link_failure{"no answer from " + path_ + " within " + std::to_string(timeout_.count()) +
                        " s (is the daemon stuck?)"};
  }

  static std::string connect_hint(int e) {
    if (e == EACCES || e == EPERM)
      return " (the socket's mode and group decide who may use it: try as root or as a member of "
             "its group)";
    return " (is `suction proxy` running?)";
  }

  timeval remaining_timeval() const {
    auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline_ - clock_type::now());
    if (left.count() < 1) left = std::chrono::microseconds(1);
    return timeval{static_cast<time_t>(left.count() / 1000000),
                   static_cast<suseconds_t>(left.count() % 1000000)};
  }

  void wait_for(short events) {
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - clock_type::now());
      if (left.count() <= 0) throw timed_out();
      pollfd p{fd_, events, 0};
      int r = ::poll(&p, 1, static_cast<int>(left.count()));
      if (r > 0) return;  // ready, or an error/hang-up the next call reports
      if (r < 0 && errno != EINTR)
        throw link_failure{std::string("poll failed: ") + std::strerror(errno)};
    }
  }

  std::string path_;
  std::chrono::seconds timeout_;
  clock_type::time_point deadline_;
  int fd_ = -1;
  std::string buffer_;
};

}  // namespace suction::cli
