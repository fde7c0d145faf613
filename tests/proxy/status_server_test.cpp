// The status socket server over a real Unix socket: a fake backend that records
// what it was asked, the server on an io_context run by its own thread, and a
// plain POSIX client. Every wait is bounded (socket timeouts, a stop deadline).
#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "proxy/daemon.hpp"
#include "proxy/status_server.hpp"

using namespace suction::proxy;
using json = nlohmann::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// Canned answers; every call is recorded (the server calls from its own thread).
class fake_backend : public status_backend {
 public:
  json status() override {
    record("status");
    return json::parse(R"({"proxy":{"uptime_s":12,"active_sessions":3,"logins_ok":7,"logins_failed":1,)"
                       R"("backend_errors":0},"migration":{"paused":false,"draining":false,"users_queued":1,)"
                       R"("users_running":1,"users_done":0,"users_failed":0,"users_interrupted":0,)"
                       R"("messages_copied":10,"bytes_copied":2048}})");
  }
  json users() override {
    record("users");
    if (huge_users) {
      json many = json::array();
      for (int i = 0; i < 5000; ++i) many.push_back(alice());  // ~1 MB: more than a socket buffer
      return json{{"users", many}};
    }
    return json{{"users", json::array({alice()})}};
  }
  std::optional<json> user(std::string_view name) override {
    record("user " + std::string(name));
    if (name != "alice") return std::nullopt;
    json a = alice();
    a["runs"] = json::array();
    return a;
  }
  std::string resync(std::string_view name) override {
    record("resync " + std::string(name));
    if (name == "alice") return "";
    return "no credentials for " + std::string(name) + " (wait for their next login)";
  }
  std::string enqueue(std::string_view name) override {
    record("enqueue " + std::string(name));
    if (name == "carol") return "";
    return "needs a login: no master credentials for [new]";
  }
  void pause() override { record("pause"); }
  void resume() override { record("resume"); }
  void drain() override { record("drain"); }

  static json alice() {
    return json::parse(R"({"user":"alice","state":"running","progress":{"folders_done":1,"folders_total":4,)"
                       R"("messages_copied":35,"messages_total":100,"bytes_copied":350,"bytes_total":1000},)"
                       R"("started_at":1700000000,"finished_at":null,"last_error":null})");
  }

  std::vector<std::string> calls() {
    std::lock_guard lock(mutex_);
    return calls_;
  }

  std::atomic<bool> huge_users{false};

 private:
  void record(std::string c) {
    std::lock_guard lock(mutex_);
    calls_.push_back(std::move(c));
  }
  std::mutex mutex_;
  std::vector<std::string> calls_;
};

struct temp_dir {
  temp_dir() {
    char t[] = "/tmp/suction-status-XXXXXX";
    REQUIRE(::mkdtemp(t) != nullptr);
    path = t;
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string sock() const { return path + "/status.sock"; }
  std::string path;
};

// The server on its own io thread. stop() stops it on that thread and waits, at
// most 5 s, for every coroutine to finish (the io_context runs out of work).
class running_server {
 public:
  running_server(fake_backend& b, const std::string& path, std::uint32_t mode = 0600,
                 const std::string& group = "", status_limits limits = {})
      : server_(std::make_unique<status_server>(io_, path, mode, group, b, limits)) {
    server_->start();
    thread_ = std::thread([this] {
      io_.run();
      done_ = true;
    });
  }
  ~running_server() { stop(); }

  // True when the io_context ran out of work by itself after stop().
  bool stop() {
    if (!thread_.joinable()) return true;
    boost::asio::post(io_, [this] { server_->stop(); });
    auto until = std::chrono::steady_clock::now() + 5s;
    while (!done_ && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
    bool clean = done_;
    if (!clean) io_.stop();
    thread_.join();
    return clean;
  }

 private:
  boost::asio::io_context io_{1};
  std::unique_ptr<status_server> server_;
  std::thread thread_;
  std::atomic<bool> done_{false};
};

// A plain blocking client with receive and send timeouts.
class client {
 public:
  enum class read_end { none, line, eof, timeout };

  explicit client(const std::string& path, std::chrono::milliseconds timeout = 5000ms) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    timeval tv{static_cast<time_t>(timeout.count() / 1000),
               static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~client() { ::close(fd_); }
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  bool connected() const { return connected_; }

  bool send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // The next line without its "\n"; nullopt at EOF, reset or timeout (see last()).
  std::optional<std::string> line() {
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string l = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        last_ = read_end::line;
        return l;
      }
      char chunk[65536];
      ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n > 0) {
        buf_.append(chunk, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      // A reset counts as the server closing: it may close with our bytes unread.
      last_ = (n == 0 || errno == ECONNRESET) ? read_end::eof : read_end::timeout;
      return std::nullopt;
    }
  }

  json ask(const json& request) {
    REQUIRE(send(request.dump() + "\n"));
    return answer();
  }

  json answer() {
    auto l = line();
    REQUIRE_MESSAGE(l.has_value(), "no answer line");
    return json::parse(*l);
  }

  // The server closed: no more lines, then EOF (not a timeout).
  bool closed_by_server() { return !line() && last_ == read_end::eof; }

  read_end last() const { return last_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string buf_;
  read_end last_ = read_end::none;
};

json error_of(const std::string& text) { return json{{"error", text}}; }

std::uint32_t file_mode(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

// A socket file nothing listens on, as a crashed daemon leaves it.
void make_stale_socket(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  ::close(fd);
}

std::string startup_failure(fake_backend& b, const std::string& path, const std::string& group = "") {
  boost::asio::io_context io;
  try {
    status_server s(io, path, 0600, group, b);
  } catch (const startup_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("status server: every command, answered as the backend says") {
  temp_dir dir;
  fake_backend b;
  running_server srv(b, dir.sock());
  client c(dir.sock());
  REQUIRE(c.connected());

  CHECK(c.ask({{"cmd", "status"}}) == b.status());
  CHECK(c.ask({{"cmd", "users"}}) == b.users());
  json alice = fake_backend::alice();
  alice["runs"] = json::array();
  CHECK(c.ask({{"cmd", "user"}, {"user", "alice"}}) == alice);
  CHECK(c.ask({{"cmd", "user"}, {"user", "bob"}}) == error_of("unknown user"));
  CHECK(c.ask({{"cmd", "resync"}, {"user", "alice"}}) == json{{"ok", true}});
  CHECK(c.ask({{"cmd", "resync"}, {"user", "bob"}}) ==
        error_of("no credentials for bob (wait for their next login)"));
  CHECK(c.ask({{"cmd", "enqueue"}, {"user", "carol"}}) == json{{"ok", true}});
  CHECK(c.ask({{"cmd", "enqueue"}, {"user", "dave"}}) ==
        error_of("needs a login: no master credentials for [new]"));
  CHECK(c.ask({{"cmd", "enqueue"}}) == error_of("\"enqueue\" needs \"user\""));
  CHECK(c.ask({{"cmd", "pause"}}) == json{{"ok", true}});
  CHECK(c.ask({{"cmd", "resume"}}) == json{{"ok", true}});
  CHECK(c.ask({{"cmd", "drain"}}) == json{{"ok", true}});

  // The test's own b.status()/b.users() calls are recorded too, in between.
  std::vector<std::string> expected{"status", "status", "users", "users", "user alice",
                                    "user bob", "resync alice", "resync bob", "enqueue carol",
                                    "enqueue dave", "pause", "resume", "drain"};
  CHECK(b.calls() == expected);
  CHECK(srv.stop());
}

TEST_CASE("status server: answers are one compact line each, and pipelined requests are answered in order") {
  temp_dir dir;
  fake_backend b;
  running_server srv(b, dir.sock());
  client c(dir.sock());
  REQUIRE(c.connected());
  REQUIRE(c.send("{\"cmd\":\"pause\"}\n{\"cmd\":\"user\",\"user\":\"alice\"}\r\n{\"cmd\":\"nope\"}\n"
                 "{\"cmd\":\"status\"}\n{\"cmd\":\"resume\"}\n"));
  auto first = c.line();
  REQUIRE(first);
  CHECK(*first == R"({"ok":true})");
  auto second = c.line();
  REQUIRE(second);
  CHECK(json::parse(*second)["user"] == "alice");
  CHECK(second->find(' ') == std::string::npos);  // compact
  CHECK(c.answer() == error_of("unknown cmd \"nope\""));
  CHECK(c.answer().contains("proxy"));
  CHECK(c.answer() == json{{"ok", true}});
  std::vector<std::string> expected{"pause", "user alice", "status", "resume"};
  CHECK(b.calls() == expected);
}

TEST_CASE("status server: a bad request gets an error and the connection goes on serving") {
  temp_dir dir;
  fake_backend b;
  running_server srv(b, dir.sock());
  client c(dir.sock());
  REQUIRE(c.connected());

  struct bad {
    std::string line;
    std::string error;
  };
  const std::vector<bad> cases{
      {"hello hunter2", "request is not JSON (one JSON object per line)"},
      {R"({"cmd":"status"} trailing junk)", "request is not JSON (one JSON object per line)"},
      {R"({"cmd":"status")", "request is not JSON (one JSON object per line)"},
      {R"(["status"])", "request is not a JSON object"},
      {R"("status")", "request is not a JSON object"},
      {R"({})", "request has no \"cmd\""},
      {R"({"cmd":7})", "\"cmd\" is not a string"},
      {R"({"cmd":"shutdown"})", "unknown cmd \"shutdown\""},
      {R"({"cmd":"user"})", "\"user\" needs \"user\""},
      {R"({"cmd":"resync","user":42})", "\"user\" is not a string"},
      {R"({"cmd":"user","user":["alice"]})", "\"user\" is not a string"},
      {R"({"cmd":"user","user":""})", "\"user\" is empty"},
      {R"({"cmd":"status","user":"alice"})", "unexpected key in a \"status\" request (it takes only \"cmd\")"},
      {R"({"cmd":"user","user":"alice","password":"hunter2"})",
       "unexpected key in a \"user\" request (it takes only \"cmd\" and \"user\")"},
      {"", "empty request"},
  };
  for (auto& x : cases) {
    CAPTURE(x.line);
    REQUIRE(c.send(x.line + "\n"));
    auto l = c.line();
    REQUIRE(l);
    CHECK(json::parse(*l) == error_of(x.error));
    CHECK(l->find("hunter2") == std::string::npos);
  }
  // A cmd name is quoted only sanitized and truncated.
  auto weird = c.ask({{"cmd", "st\"at\nus\x01 " + std::string(100, 'x')}});
  std::string text = weird["error"];
  CHECK(text.rfind("unknown cmd \"st?at?us??xxx", 0) == 0);
  CHECK(text.size() < 60);
  // Nothing reached the backend, and the connection still serves.
  CHECK(b.calls().empty());
  CHECK(c.ask({{"cmd", "status"}}).contains("migration"));
}

TEST_CASE("status server: a request line over the limit gets an error, then the connection closes") {
  temp_dir dir;
  fake_backend b;
  SUBCASE("the default limit, 8 KiB") {
    running_server srv(b, dir.sock());
    client c(dir.sock());
    REQUIRE(c.connected());
    // A line of exactly 8 KiB (JSON allows trailing blanks) is fine.
    std::string request = R"({"cmd":"pause"})";
    request.resize(8 * 1024, ' ');
    REQUIRE(c.send(request + "\n"));
    CHECK(c.answer() == json{{"ok", true}});
    REQUIRE(c.send(std::string(70000, 'a') + "\n"));
    CHECK(c.answer() == error_of("request too long"));
    CHECK(c.closed_by_server());
    // The server goes on for others.
    client other(dir.sock());
    CHECK(other.ask({{"cmd", "resume"}}) == json{{"ok", true}});
    CHECK(srv.stop());
  }
  SUBCASE("a small limit, to the byte; no newline needed to hit it") {
    status_limits limits;
    limits.max_line = 100;
    running_server srv(b, dir.sock(), 0600, "", limits);
    client c(dir.sock());
    std::string fits = R"({"cmd":"drain"})";
    fits.resize(100, ' ');
    REQUIRE(c.send(fits + "\n"));
    CHECK(c.answer() == json{{"ok", true}});
    REQUIRE(c.send(std::string(101, ' ')));
    CHECK(c.answer() == error_of("request too long"));
    CHECK(c.closed_by_server());
    CHECK(b.calls() == std::vector<std::string>{"drain"});
  }
}

TEST_CASE("status server: nested JSON is refused before parsing, and no answer echoes the request") {
  temp_dir dir;
  fake_backend b;
  status_limits limits;
  limits.max_line = 64 * 1024;
  running_server srv(b, dir.sock(), 0600, "", limits);
  client c(dir.sock());
  // 60 KB of nesting: refused by a linear scan, not by the JSON parser's recursion.
  std::string deep = R"({"cmd":"status","x":)" + std::string(30000, '[') + std::string(30000, ']') + "}";
  REQUIRE(c.send(deep + "\n"));
  auto answer = c.answer();
  CHECK(answer == error_of("request nested too deeply (one flat JSON object)"));
  // Brackets inside strings do not count.
  CHECK(c.ask({{"cmd", "user"}, {"user", "[[[[{{{{"}}) == error_of("unknown user"));
  // A 60 KB user name does not come back.
  std::string huge(60000, 'u');
  REQUIRE(c.send(json{{"cmd", "user"}, {"user", huge}}.dump() + "\n"));
  auto l = c.line();
  REQUIRE(l);
  CHECK(l->size() < 100);
  CHECK(b.calls() == std::vector<std::string>{"user [[[[{{{{", "user " + huge});
}

TEST_CASE("status server: the last connection slot is kept for root and the daemon's user") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root to connect as another user (nobody)");
    return;
  }
  temp_dir dir;
  ::chmod(dir.path.c_str(), 0755);
  fake_backend b;
  status_limits limits;
  limits.max_connections = 3;
  running_server srv(b, dir.sock(), 0666, "", limits);
  // Connects as nobody: SO_PEERCRED keeps the credentials of connect() time.
  auto as_nobody = [&] {
    REQUIRE(::seteuid(65534) == 0);
    auto c = std::make_unique<client>(dir.sock());
    REQUIRE(::seteuid(0) == 0);
    return c;
  };
  auto one = as_nobody();
  auto two = as_nobody();
  CHECK(one->ask({{"cmd", "status"}}).contains("proxy"));
  CHECK(two->ask({{"cmd", "status"}}).contains("proxy"));
  auto three = as_nobody();  // the last slot: not for nobody
  REQUIRE(three->connected());
  three->send("{\"cmd\":\"pause\"}\n");
  CHECK(three->closed_by_server());
  client op(dir.sock());  // root: gets the last slot
  CHECK(op.ask({{"cmd", "resume"}}) == json{{"ok", true}});
  CHECK(b.calls() == std::vector<std::string>{"status", "status", "resume"});  // never "pause"
}

TEST_CASE("status server: an idle connection is closed but a busy one is not") {
  temp_dir dir;
  fake_backend b;
  status_limits limits;
  limits.idle = 300ms;
  running_server srv(b, dir.sock(), 0600, "", limits);
  client busy(dir.sock());
  client idle(dir.sock());
  REQUIRE(busy.connected());
  REQUIRE(idle.connected());
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 6; ++i) {  // 6 x 150 ms: well past one idle period
    CHECK(busy.ask({{"cmd", "status"}}).contains("proxy"));
    std::this_thread::sleep_for(150ms);
  }
  CHECK(idle.closed_by_server());
  CHECK(std::chrono::steady_clock::now() - start < 4s);
  CHECK(busy.ask({{"cmd", "status"}}).contains("proxy"));
  CHECK(srv.stop());
}

TEST_CASE("status server: connections over the limit are closed at once") {
  temp_dir dir;
  fake_backend b;
  status_limits limits;
  limits.max_connections = 2;
  running_server srv(b, dir.sock(), 0600, "", limits);
  auto one = std::make_unique<client>(dir.sock());
  client two(dir.sock());
  CHECK(one->ask({{"cmd", "status"}}).contains("proxy"));
  CHECK(two.ask({{"cmd", "status"}}).contains("proxy"));
  {
    client three(dir.sock());
    REQUIRE(three.connected());  // the kernel accepts; the server closes it
    three.send("{\"cmd\":\"pause\"}\n");
    CHECK(three.closed_by_server());
  }
  // One leaves: there is room again (the server notices the close soon).
  one.reset();
  bool served = false;
  for (int i = 0; i < 100 && !served; ++i) {
    client again(dir.sock());
    if (again.send("{\"cmd\":\"resume\"}\n")) {
      auto l = again.line();
      served = l && json::parse(*l) == json{{"ok", true}};
    }
    if (!served) std::this_thread::sleep_for(20ms);
  }
  CHECK(served);
  CHECK(b.calls() == std::vector<std::string>{"status", "status", "resume"});  // never "pause"
  CHECK(srv.stop());
}

TEST_CASE("status server: a client that leaves mid-answer or mid-request breaks nothing") {
  temp_dir dir;
  fake_backend b;
  b.huge_users = true;  // an answer of megabytes: the server is still writing when the client leaves
  running_server srv(b, dir.sock());
  for (int i = 0; i < 5; ++i) {
    client c(dir.sock());
    REQUIRE(c.send("{\"cmd\":\"users\"}\n{\"cmd\":\"users\"}\n"));
  }
  {
    client c(dir.sock());
    REQUIRE(c.send("{\"cmd\":\"sta"));  // half a request, then gone
  }
  client c(dir.sock());
  CHECK(c.ask({{"cmd", "status"}}).contains("proxy"));
  CHECK(srv.stop());  // and every connection's coroutine is gone
}

TEST_CASE("status server: socket file mode, group, parent directory") {
  temp_dir dir;
  fake_backend b;
  SUBCASE("0600 by default") {
    running_server srv(b, dir.sock());
    CHECK(file_mode(dir.sock()) == 0600);
  }
  SUBCASE("0660 when asked, in our own group") {
    group* g = ::getgrgid(::getegid());
    REQUIRE(g != nullptr);
    running_server srv(b, dir.sock(), 0660, g->gr_name);
    CHECK(file_mode(dir.sock()) == 0660);
    struct stat st {};
    REQUIRE(::stat(dir.sock().c_str(), &st) == 0);
    CHECK(st.st_gid == ::getegid());
    client c(dir.sock());
    CHECK(c.ask({{"cmd", "status"}}).contains("proxy"));
  }
  SUBCASE("an unknown group is refused by name, and no socket file is left") {
    std::string msg = startup_failure(b, dir.sock(), "no-such-group-suction");
    CHECK(msg.find(dir.sock()) != std::string::npos);
    CHECK(msg.find("unknown group no-such-group-suction") != std::string::npos);
    CHECK(!fs::exists(dir.sock()));
  }
  SUBCASE("a missing parent directory is made, 0755") {
    std::string nested = dir.path + "/run/suction/status.sock";
    running_server srv(b, nested);
    CHECK(file_mode(dir.path + "/run/suction") == 0755);
    client c(nested);
    CHECK(c.ask({{"cmd", "status"}}).contains("proxy"));
  }
}

TEST_CASE("status server: a stale socket file is replaced but a live one or a regular file is refused") {
  temp_dir dir;
  fake_backend b;
  SUBCASE("stale socket") {
    make_stale_socket(dir.sock());
    REQUIRE(fs::is_socket(dir.sock()));
    running_server srv(b, dir.sock());
    client c(dir.sock());
    CHECK(c.ask({{"cmd", "status"}}).contains("proxy"));
  }
  SUBCASE("a daemon answering on it") {
    running_server first(b, dir.sock());
    std::string msg = startup_failure(b, dir.sock());
    CHECK(msg.find(dir.sock()) != std::string::npos);
    CHECK(msg.find("a running daemon answers on it") != std::string::npos);
    client c(dir.sock());  // the first daemon's socket is untouched
    CHECK(c.ask({{"cmd", "status"}}).contains("proxy"));
  }
  SUBCASE("a regular file") {
    { std::ofstream(dir.sock()) << "keep me\n"; }
    std::string msg = startup_failure(b, dir.sock());
    CHECK(msg == "status socket " + dir.sock() + ": exists and is not a socket; refusing to replace it");
    std::ifstream in(dir.sock());
    std::string content;
    std::getline(in, content);
    CHECK(content == "keep me");
  }
  SUBCASE("a path too long for a Unix socket") {
    std::string msg = startup_failure(b, dir.path + "/" + std::string(120, 'x'));
    CHECK(msg.find("path longer than 107 bytes") != std::string::npos);
  }
}

TEST_CASE("status server: stop() closes the connections and unlinks the socket file") {
  temp_dir dir;
  fake_backend b;
  running_server srv(b, dir.sock());
  client c(dir.sock());
  CHECK(c.ask({{"cmd", "status"}}).contains("proxy"));
  CHECK(fs::exists(dir.sock()));
  CHECK(srv.stop());  // the io_context runs out of work: no coroutine left behind
  CHECK(c.closed_by_server());
  CHECK(!fs::exists(dir.sock()));
  client late(dir.sock());
  CHECK(!late.connected());
}

TEST_CASE("status server: stop() leaves alone a socket file that another daemon made since") {
  temp_dir dir;
  fake_backend b;
  running_server srv(b, dir.sock());
  REQUIRE(::unlink(dir.sock().c_str()) == 0);
  make_stale_socket(dir.sock());  // someone else's file now
  CHECK(srv.stop());
  CHECK(fs::is_socket(dir.sock()));
}

TEST_CASE("status request without a socket: a backend exception is an error answer") {
  struct throwing final : fake_backend {
    json status() override { throw std::runtime_error("state store is locked"); }
  } b;
  CHECK(answer_status_request(b, R"({"cmd":"status"})") == error_of("internal error: state store is locked"));
  CHECK(answer_status_request(b, R"({"cmd":"pause"})") == json{{"ok", true}});
}
