#include "proxy/status_server.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <grp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <variant>
#include <vector>

#include "imap/log_value.hpp"
#include "proxy/daemon.hpp"

namespace suction::proxy {


namespace asio = boost::asio;
using json = nlohmann::json;
using unix_socket = asio::local::stream_protocol;

// ---------------------------------------------------------------- protocol

namespace {

json error_answer(std::string text) { return json{{"error", std::move(text)}}; }

json ok_answer() { return json{{"ok", true}}; }

// A cmd name fit to quote in an error: letters, digits, '_' and '-' only, at
// most 32 of them. Anything else a client sends is never echoed.
std::string quotable(std::string_view cmd) {
  std::string out;
  for (char c : cmd.substr(0, 32)) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-';
    out += ok ? c : '?';
  }
  if (cmd.size() > 32) out += "...";
  return out;
}

enum class command { status, users, user, resync, enqueue, pause, resume, drain };

struct command_spec {
  std::string_view name;
  command cmd;
  bool takes_user;
};

constexpr command_spec kCommands[] = {
    {"status", command::status, false}, {"users", command::users, false},
    {"user", command::user, true},      {"resync", command::resync, true},
    {"enqueue", command::enqueue, true},
    {"pause", command::pause, false},   {"resume", command::resume, false},
    {"drain", command::drain, false},
};

// A request checked for shape: its command and, where it takes one, the user.
struct request {
  const command_spec* spec = nullptr;
  std::string user;
};

// A request is one flat object: anything nested deeper than that is refused
// by one linear scan, before the JSON parser spends recursion and memory on it.
bool nested_too_deep(std::string_view line, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth) return true;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return false;
}

// The request, or the error answer saying what is wrong with it.
std::variant<request, json> parse_request(std::string_view line) {
  if (line.empty()) return error_answer("empty request");
  if (nested_too_deep(line, 2)) return error_answer("request nested too deeply (one flat JSON object)");
  json j = json::parse(line.begin(), line.end(), nullptr, false);
  if (j.is_discarded()) return error_answer("request is not JSON (one JSON object per line)");
  if (!j.is_object()) return error_answer("request is not a JSON object");
  auto cmd = j.find("cmd");
  if (cmd == j.end()) return error_answer("request has no \"cmd\"");
  if (!cmd->is_string()) return error_answer("\"cmd\" is not a string");
  const std::string& name = cmd->get_ref<const std::string&>();
  request r;
  for (auto& c : kCommands)
    if (c.name == name) r.spec = &c;
  if (!r.spec) return error_answer("unknown cmd \"" + quotable(name) + "\"");
  const std::string quoted = "\"" + std::string(r.spec->name) + "\"";
  for (auto& [key, value] : j.items())
    if (key != "cmd" && !(key == "user" && r.spec->takes_user))
      return error_answer("unexpected key in a " + quoted + " request (it takes only \"cmd\"" +
                          (r.spec->takes_user ? " and \"user\")" : ")"));
  if (!r.spec->takes_user) return r;
  auto user = j.find("user");
  if (user == j.end()) return error_answer(quoted + " needs \"user\"");
  if (!user->is_string()) return error_answer("\"user\" is not a string");
  r.user = user->get<std::string>();
  if (r.user.empty()) return error_answer("\"user\" is empty");
  return r;
}

json dispatch(status_backend& b, const request& r) {
  switch (r.spec->cmd) {
    case command::status: return b.status();
    case command::users: return b.users();
    case command::user: {
      auto u = b.user(r.user);
      // Never the name back: a 60 KB name would come back 60 KB (the client knows what it asked).
      if (!u) return error_answer("unknown user");
      return std::move(*u);
    }
    case command::resync: {
      std::string refused = b.resync(r.user);
      return refused.empty() ? ok_answer() : error_answer(std::move(refused));
    }
    case command::enqueue: {
      std::string refused = b.enqueue(r.user);
      return refused.empty() ? ok_answer() : error_answer(std::move(refused));
    }
    case command::pause: b.pause(); return ok_answer();
    case command::resume: b.resume(); return ok_answer();
    case command::drain: b.drain(); return ok_answer();
  }
  return error_answer("unknown cmd");
}

}  // namespace

json answer_status_request(status_backend& backend, std::string_view line) {
  auto parsed = parse_request(line);
  if (auto* bad = std::get_if<json>(&parsed)) {
    spdlog::debug("status request rejected: {}", (*bad)["error"].get<std::string>());
    return std::move(*bad);
  }
  const request& r = std::get<request>(parsed);
  spdlog::debug("status request cmd={}{}{}", r.spec->name, r.spec->takes_user ? " user=" : "",
                imap::log_value(r.user));
  try {
    return dispatch(backend, r);
  } catch (const std::exception& e) {
    spdlog::error("status request cmd={} failed: {}", r.spec->name, e.what());
    return error_answer(std::string("internal error: ") + e.what());
  }
}

// ---------------------------------------------------------------- the socket

namespace {

// One client connection: its socket and the deadline a watchdog enforces.
struct connection {
  explicit connection(unix_socket::socket s)
      : socket(std::move(s)), deadline(socket.get_executor()) {}

  void close() {
    boost::system::error_code ignored;
    socket.shutdown(unix_socket::socket::shutdown_both, ignored);
    socket.close(ignored);
    deadline.cancel();
  }

  unix_socket::socket socket;
  asio::steady_timer deadline;
};

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw startup_error("status socket " + path + ": " + why);
}

std::string errno_text(int e) { return std::strerror(e); }

// Whether something accepts connections on the socket file at `path`. A
// non-blocking connect: a daemon whose backlog is full still counts.
bool socket_answers(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail(path, "cannot create a socket to probe it: " + errno_text(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int e = errno;
  ::close(fd);
  if (rc == 0 || e == EAGAIN || e == EINPROGRESS) return true;
  if (e == ECONNREFUSED || e == ENOENT) return false;
  fail(path, "cannot tell whether a daemon answers on it: " + errno_text(e));
}

void make_parent_directory(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (parent.empty()) return;
  std::error_code ec;
  if (std::filesystem::exists(parent, ec)) return;
  std::filesystem::create_directories(parent, ec);
  if (ec) fail(path, "cannot create the directory " + parent.string() + ": " + ec.message());
  std::filesystem::permissions(parent, std::filesystem::perms(0755), ec);
}

// Removes a socket file no daemon answers on; refuses anything else.
void remove_stale(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    fail(path, "cannot stat: " + errno_text(errno));
  }
  if (!S_ISSOCK(st.st_mode)) fail(path, "exists and is not a socket; refusing to replace it");
  if (socket_answers(path)) fail(path, "a running daemon answers on it (another `suction proxy`?)");
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    fail(path, "cannot remove the stale socket: " + errno_text(errno));
  spdlog::info("status socket {}: removed a stale socket file", path);
}

gid_t group_id(const std::string& path, const std::string& group) {
  // getgrnam_r wants a buffer for the member list: grow it for big groups.
  for (std::size_t size = 16384; size <= (1u << 22); size *= 4) {
    std::vector<char> buf(size);
    struct group g {};
    struct group* found = nullptr;
    int rc = ::getgrnam_r(group.c_str(), &g, buf.data(), buf.size(), &found);
    if (rc == ERANGE) continue;
    if (rc != 0) fail(path, "cannot look up the group " + group + ": " + errno_text(rc));
    if (!found) fail(path, "unknown group " + group);
    return g.gr_gid;
  }
  fail(path, "cannot look up the group " + group + ": its entry is too large");
}

std::string octal(std::uint32_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0%o", mode);
  return buf;
}

// Whether the peer is root or runs as the daemon's user (SO_PEERCRED: as it
// was at connect time).
bool is_operator(unix_socket::socket& s, uid_t own_uid) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(s.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
  return cred.uid == 0 || cred.uid == own_uid;
}

void log_failure(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    spdlog::error("status connection ended by an unexpected error: {}", ex.what());
  }
}

}  // namespace

struct status_server::impl {
  impl(asio::io_context& io, std::string p, status_backend& b, status_limits l)
      : io(io), path(std::move(p)), backend(b), limits(l), acceptor(io) {}

  asio::io_context& io;
  std::string path;
  status_backend& backend;
  status_limits limits;
  unix_socket::acceptor acceptor;
  std::map<std::uint64_t, std::shared_ptr<connection>> connections;
  std::uint64_t next_id = 0;
  dev_t dev = 0;  // the socket file we made: stop() unlinks only that one
  ino_t ino = 0;
  bool started = false;
  bool stopped = false;
  uid_t own_uid = ::geteuid();
};

namespace {

// Closes the connection when its deadline passes with no news. The deadline
// moves with every request and answer; moving it wakes this loop early.
asio::awaitable<void> watchdog(std::shared_ptr<connection> c) {
  while (c->socket.is_open()) {
    boost::system::error_code ec;
    co_await c->deadline.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (!c->socket.is_open()) co_return;
    if (c->deadline.expiry() <= std::chrono::steady_clock::now()) {
      spdlog::debug("status connection idle: closed");
      c->close();
      co_return;
    }
  }
}

// Throws away what the client sent and we will not read, so that closing does
// not turn the answer already sent into a reset on the client's side.
void discard_pending_input(connection& c) {
  boost::system::error_code ec;
  c.socket.non_blocking(true, ec);
  char scratch[16384];
  for (int i = 0; i < 64 && !ec; ++i) c.socket.read_some(asio::buffer(scratch), ec);
}

asio::awaitable<void> send_line(connection& c, const json& answer, std::chrono::milliseconds idle,
                                boost::system::error_code& ec) {
  // replace: a backend string that is not UTF-8 must not throw here.
  std::string out = answer.dump(-1, ' ', false, json::error_handler_t::replace);
  out += '\n';
  c.deadline.expires_after(idle);  // a client that does not read is idle too
  co_await asio::async_write(c.socket, asio::buffer(out), asio::redirect_error(asio::use_awaitable, ec));
}

// One connection: read a line, answer it, until EOF, an error, the idle
// deadline, a too-long line or stop().
asio::awaitable<void> serve(std::shared_ptr<status_server::impl> self, std::uint64_t id,
                            std::shared_ptr<connection> c) {
  const std::chrono::milliseconds idle = self->limits.idle;
  asio::co_spawn(c->socket.get_executor(), watchdog(c), log_failure);
  std::string buffer;
  for (;;) {
    c->deadline.expires_after(idle);
    boost::system::error_code ec;
    // One byte over the limit for the "\n" itself.
    auto dyn = asio::dynamic_buffer(buffer, self->limits.max_line + 1);
    std::size_t n =
        co_await asio::async_read_until(c->socket, dyn, '\n', asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::not_found) {
      spdlog::debug("status request too long: connection closed");
      json too_long = error_answer("request too long");
      co_await send_line(*c, too_long, idle, ec);
      discard_pending_input(*c);
      break;
    }
    if (ec) break;  // EOF, closed by the watchdog or stop(), or a socket error
    std::string_view line(buffer.data(), n - 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    json answer = answer_status_request(self->backend, line);
    buffer.erase(0, n);
    co_await send_line(*c, answer, idle, ec);
    if (ec) break;  // the client went away mid-answer: nothing to do
  }
  c->close();
  self->connections.erase(id);
}

asio::awaitable<void> accept_loop(std::shared_ptr<status_server::impl> self) {
  for (;;) {
    boost::system::error_code ec;
    unix_socket::socket s =
        co_await self->acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (self->stopped) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      spdlog::warn("status socket {}: accept failed: {}", self->path, ec.message());
      // Out of descriptors and the like: pause rather than spin.
      asio::steady_timer pause(self->io, std::chrono::milliseconds(100));
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    // The last slot is the operator's (root or the daemon's own user), so
    // idle connections of others cannot lock the operator out.
    const bool op = is_operator(s, self->own_uid);
    const std::size_t cap = self->limits.max_connections - (op || self->limits.max_connections <= 1 ? 0 : 1);
    if (self->connections.size() >= cap) {
      spdlog::warn("status socket {}: {} connections already, closing a new one{}", self->path,
                   self->connections.size(), op ? "" : " (the last slot is kept for root and the daemon's user)");
      s.close(ec);
      continue;
    }
    auto c = std::make_shared<connection>(std::move(s));
    std::uint64_t id = ++self->next_id;
    self->connections.emplace(id, c);
    asio::co_spawn(self->io, serve(self, id, c), log_failure);
  }
}

}  // namespace

status_server::status_server(asio::io_context& io, std::string path, std::uint32_t mode, std::string group,
                             status_backend& backend, status_limits limits)
    : impl_(std::make_shared<impl>(io, std::move(path), backend, limits)) {
  impl& s = *impl_;
  const std::string& p = s.path;
  if (p.empty()) throw startup_error("status socket: no path given ([status] socket)");
  if (p.size() >= sizeof(sockaddr_un::sun_path))
    fail(p, "path longer than " + std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
  make_parent_directory(p);
  remove_stale(p);

  boost::system::error_code ec;
  s.acceptor.open(unix_socket(), ec);
  if (ec) fail(p, "cannot open a socket: " + ec.message());
  s.acceptor.bind(unix_socket::endpoint(p), ec);
  if (ec) fail(p, "cannot bind: " + ec.message());
  // From here the file is ours: a failure removes it again. Until listen()
  // below, connecting is refused, so the mode and group are in place before
  // anyone can talk to it.
  auto undo = [&](const std::string& why) {
    ::unlink(p.c_str());
    fail(p, why);
  };
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) undo("cannot stat after bind: " + errno_text(errno));
  s.dev = st.st_dev;
  s.ino = st.st_ino;
  if (::chmod(p.c_str(), static_cast<mode_t>(mode)) != 0)
    undo("cannot chmod to " + octal(mode) + ": " + errno_text(errno));
  if (!group.empty()) {
    gid_t gid = 0;
    try {
      gid = group_id(p, group);
    } catch (const startup_error&) {
      ::unlink(p.c_str());
      throw;
    }
    if (::chown(p.c_str(), static_cast<uid_t>(-1), gid) != 0)
      undo("cannot chgrp to " + group + ": " + errno_text(errno));
  }
  s.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) undo("cannot listen: " + ec.message());
  spdlog::info("status socket {} (mode {}{}{})", p, octal(mode), group.empty() ? "" : ", group ", group);
}

status_server::~status_server() { stop(); }


void status_server::start() {
  impl& s = *impl_;
  if (s.started || s.stopped) return;
  s.started = true;
  asio::co_spawn(s.io, accept_loop(impl_), log_failure);
}

void status_server::stop() {
  impl& s = *impl_;
  if (s.stopped) return;
  s.stopped = true;
  boost::system::error_code ignored;
  s.acceptor.close(ignored);
  // The coroutines see their socket closed and erase themselves.
  for (auto& [id, c] : s.connections) c->close();
  // Unlink only the file we bound: another daemon may have replaced it since.
  struct stat st {};
  if (::lstat(s.path.c_str(), &st) == 0 && st.st_dev == s.dev && st.st_ino == s.ino)
    ::unlink(s.path.c_str());
}

}  // namespace suction::proxy
