// relay_loop over real loopback TCP connections: what a session relays
// (commands, answers, bytes read during login, a burst bigger than every
// socket buffer), half-close, and the ways it ends.
#include "proxy/relay_loop.hpp"

#include <doctest/doctest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace suction::proxy;

namespace {

// Both ends of one loopback TCP connection.
struct tcp_pair {
  int a = -1, b = -1;
  tcp_pair() {
    int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(listener >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(listener, 1) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    a = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(::connect(a, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    b = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    REQUIRE(b >= 0);
    ::close(listener);
  }
};

// The test's side of one relay: `client` talks to the relay's client
// socket, `backend` is what the relay's backend socket is connected to.
struct relayed {
  int client = -1, backend = -1;
  relay_loop::ticket ticket;
  std::promise<relay_result> done;
  std::future<relay_result> result = done.get_future();

  relayed(relay_loop& loop, std::string to_backend = {}, std::string to_client = {}) {
    tcp_pair front, back;
    client = front.a;
    backend = back.b;
    loop.add(ticket, front.b, back.a, std::move(to_backend), std::move(to_client),
             [this](relay_result r) { done.set_value(std::move(r)); });
  }
  ~relayed() {
    ::close(client);
    ::close(backend);
  }
  relayed(const relayed&) = delete;
  relayed& operator=(const relayed&) = delete;
  relay_result ended() {
    REQUIRE(result.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
    return result.get();
  }
};

void send_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    REQUIRE(n > 0);
    off += static_cast<std::size_t>(n);
  }
}

// Reads until `want` bytes came, the peer closed, or 10 s passed.
std::string read_n(int fd, std::size_t want) {
  std::string got;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  char buf[65536];
  while (got.size() < want && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    ssize_t n = ::recv(fd, buf, std::min(sizeof buf, want - got.size()), 0);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  return got;
}

// True when the peer has closed (recv returns 0 within 10 s).
bool sees_eof(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 10000) <= 0) return false;
  char c;
  return ::recv(fd, &c, 1, 0) == 0;
}

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + i / 4096) % 26);
  return s;
}

struct sigpipe_ignored {
  sigpipe_ignored() { std::signal(SIGPIPE, SIG_IGN); }
};

}  // namespace

TEST_CASE("relay_loop: bytes read at login go first, then commands and answers both ways, counted") {
  sigpipe_ignored s;
  relay_loop loop("test-relay", std::chrono::hours(1));
  relayed r(loop, "a0 SELECT INBOX\r\n", "* OK early\r\n");
  CHECK(read_n(r.backend, 17) == "a0 SELECT INBOX\r\n");
  CHECK(read_n(r.client, 12) == "* OK early\r\n");
  for (int i = 0; i < 50; ++i) {
    send_all(r.client, "a1 NOOP\r\n");
    CHECK(read_n(r.backend, 9) == "a1 NOOP\r\n");
    send_all(r.backend, "a1 OK NOOP completed.\r\n");
    CHECK(read_n(r.client, 23) == "a1 OK NOOP completed.\r\n");
  }
  ::close(r.backend);
  r.backend = -1;
  CHECK(sees_eof(r.client));
  relay_result res = r.ended();
  CHECK(res.end == "backend closed");
  CHECK(res.to_backend == 17 + 50 * 9);
  CHECK(res.to_client == 12 + 50 * 23);
}

TEST_CASE("relay_loop: the client's FIN is passed on and the backend's answers still arrive") {
  sigpipe_ignored s;
  relay_loop loop("test-relay", std::chrono::hours(1));
  relayed r(loop);
  send_all(r.client, "a2 SELECT INBOX\r\na3 LOGOUT\r\n");
  REQUIRE(::shutdown(r.client, SHUT_WR) == 0);
  CHECK(read_n(r.backend, 28) == "a2 SELECT INBOX\r\na3 LOGOUT\r\n");
  CHECK(sees_eof(r.backend));  // the FIN reached the backend
  const std::string answers = "a2 OK [READ-WRITE] Select completed.\r\n* BYE Logging out\r\na3 OK Logout completed.\r\n";
  send_all(r.backend, answers);
  CHECK(read_n(r.client, answers.size()) == answers);
  ::close(r.backend);
  r.backend = -1;
  CHECK(sees_eof(r.client));
  relay_result res = r.ended();
  CHECK(res.end == "client closed");
  CHECK(res.to_client == answers.size());
}

TEST_CASE("relay_loop: a burst larger than the socket buffers, read slowly, arrives whole and in order") {
  sigpipe_ignored s;
  relay_loop loop("test-relay", std::chrono::hours(1));
  relayed r(loop);
  const std::string big = pattern(8 * 1024 * 1024 + 123);
  std::thread writer([&] { send_all(r.backend, big); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the relay fills every buffer and waits
  const std::string got = read_n(r.client, big.size());
  writer.join();
  CHECK(got.size() == big.size());
  CHECK(got == big);
  // After the burst, small commands and answers go on as before.
  send_all(r.client, "a4 NOOP\r\n");
  CHECK(read_n(r.backend, 9) == "a4 NOOP\r\n");
  send_all(r.backend, "a4 OK\r\n");
  CHECK(read_n(r.client, 7) == "a4 OK\r\n");
  // The same way up: an APPEND's literal from the client.
  std::thread up([&] { send_all(r.client, big); });
  CHECK(read_n(r.backend, big.size()) == big);
  up.join();
  r.ticket.stop("test over");
  relay_result res = r.ended();
  CHECK(res.end == "test over");
  CHECK(res.to_client == big.size() + 7);
  CHECK(res.to_backend == big.size() + 9);
}

TEST_CASE("relay_loop: stop ends a relay with its reason, closes both sockets, and is harmless after the end") {
  sigpipe_ignored s;
  relay_loop loop("test-relay", std::chrono::hours(1));
  const auto before = std::chrono::steady_clock::now();
  relayed r(loop);
  CHECK(r.ticket.last_activity() >= before);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  send_all(r.client, "a5 NOOP\r\n");
  CHECK(read_n(r.backend, 9) == "a5 NOOP\r\n");
  CHECK(r.ticket.last_activity() >= before + std::chrono::milliseconds(20));
  r.ticket.stop("idle");
  CHECK(r.ended().end == "idle");
  CHECK(sees_eof(r.client));
  CHECK(sees_eof(r.backend));
  r.ticket.stop("again");  // the relay is gone: nothing happens, nothing is called twice
  relayed other(loop);     // and the loop goes on serving
  send_all(other.client, "b1 NOOP\r\n");
  CHECK(read_n(other.backend, 9) == "b1 NOOP\r\n");
  other.ticket.stop("test over");
  CHECK(other.ended().end == "test over");
}

TEST_CASE("relay_loop: relays on one loop end on their own, the others go on") {
  sigpipe_ignored s;
  relay_loop loop("test-relay", std::chrono::hours(1));
  std::vector<std::unique_ptr<relayed>> rs;
  for (int i = 0; i < 40; ++i) rs.push_back(std::make_unique<relayed>(loop));
  for (std::size_t i = 0; i < rs.size(); i += 2) {
    ::close(rs[i]->client);  // a client that goes away without a word
    rs[i]->client = -1;
  }
  // The FIN reaches each backend, which then closes as Dovecot does at EOF.
  for (std::size_t i = 0; i < rs.size(); i += 2) {
    CHECK(sees_eof(rs[i]->backend));
    ::close(rs[i]->backend);
    rs[i]->backend = -1;
  }
  for (std::size_t i = 1; i < rs.size(); i += 2) {
    const std::string cmd = "c" + std::to_string(i) + " NOOP\r\n";
    send_all(rs[i]->client, cmd);
    CHECK(read_n(rs[i]->backend, cmd.size()) == cmd);
  }
  for (std::size_t i = 0; i < rs.size(); i += 2) CHECK(rs[i]->ended().end == "client closed");
  for (std::size_t i = 1; i < rs.size(); i += 2) {
    CHECK(rs[i]->result.wait_for(std::chrono::seconds(0)) == std::future_status::timeout);
    rs[i]->ticket.stop("test over");
    CHECK(rs[i]->ended().end == "test over");
  }
}

TEST_CASE("relay_loop: destroying the loop closes what it still relays, without calling on_end") {
  sigpipe_ignored s;
  std::optional<relay_loop> loop(std::in_place, "test-relay", std::chrono::hours(1));
  tcp_pair front, back;
  relay_loop::ticket t;
  bool called = false;
  loop->add(t, front.b, back.a, "x\r\n", {}, [&](relay_result) { called = true; });
  CHECK(read_n(back.b, 3) == "x\r\n");
  loop.reset();
  CHECK(sees_eof(front.a));
  CHECK(sees_eof(back.b));
  CHECK_FALSE(called);
  ::close(front.a);
  ::close(back.b);
}

TEST_CASE("relay_loop: a relay idle for the limit ends with \"idle\", one with traffic goes on") {
  sigpipe_ignored s;
  relay_loop loop("test-relay", std::chrono::milliseconds(400));  // swept every 50 ms
  relayed quiet(loop);
  relayed busy(loop);
  const auto start = std::chrono::steady_clock::now();
  // The busy one relays a NOOP every 100 ms until the quiet one has ended.
  for (int i = 0; i < 40 && quiet.result.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready;
       ++i) {
    send_all(busy.client, "b NOOP\r\n");
    CHECK(read_n(busy.backend, 8) == "b NOOP\r\n");
  }
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(quiet.ended().end == "idle");
  CHECK(took >= std::chrono::milliseconds(400));
  CHECK(took < std::chrono::seconds(3));
  CHECK(sees_eof(quiet.client));
  CHECK(busy.result.wait_for(std::chrono::seconds(0)) == std::future_status::timeout);
  busy.ticket.stop("test over");
  CHECK(busy.ended().end == "test over");
}

TEST_CASE("relay_loop: a burst that arrives as many small segments behind a slow reader arrives whole") {
  // Small segments (TCP_NODELAY) queue behind a full pipe and a small client
  // buffer: bursts and small reads alternate, and the tail must not be left in
  // the socket. (A splice cut short by the pipe's slots, which the relay must
  // not take for "drained", is what this aims at; loopback's coalescing of
  // small segments made it pass with the old rule too, so it guards order and
  // completeness, not that rule alone.)
  sigpipe_ignored s;
  relay_loop loop("test-relay", std::chrono::hours(1));
  relayed r(loop);
  const int one = 1, small_buffer = 32 * 1024;
  REQUIRE(::setsockopt(r.backend, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
  REQUIRE(::setsockopt(r.client, SOL_SOCKET, SO_RCVBUF, &small_buffer, sizeof small_buffer) == 0);
  const std::string big = pattern(2 * 1024 * 1024);
  std::string want = big;
  for (int i = 0; i < 3000; ++i) want += pattern(100 + i % 7);
  std::thread writer([&] {
    send_all(r.backend, big);
    for (std::size_t off = big.size(); off < want.size();) {
      const std::size_t n = 100 + ((off - big.size()) / 103) % 7;  // not the pieces' sizes: any split will do
      const std::size_t take = std::min(n, want.size() - off);
      send_all(r.backend, want.substr(off, take));
      off += take;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the pipe fills, the rest queues up
  const std::string got = read_n(r.client, want.size());
  writer.join();
  CHECK(got.size() == want.size());
  CHECK(got == want);
  r.ticket.stop("test over");
  CHECK(r.ended().end == "test over");
}
