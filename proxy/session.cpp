// One client connection: limits, TLS, the pre-auth conversation, the backend
// login, then the relay. Every phase has a deadline.
#include <boost/asio/async_result.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <functional>
#include <random>

#include <unistd.h>

#include "imap/client/stream.hpp"
#include "imap/log_value.hpp"
#include "proxy/daemon_state.hpp"
#include "proxy/preauth.hpp"
#include "proxy/verify.hpp"

namespace suction::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using clock = std::chrono::steady_clock;

namespace {

// The pre-auth deadlines: on_expire(why) when `idle` passes without touch(),
// or when the fixed `hard` instant comes, however often the client touched it
// (a byte a second would otherwise hold a slot forever). Disarmed while the
// backend login runs, which has its own deadlines.
class preauth_deadline {
 public:
  preauth_deadline(asio::any_io_executor ex, std::function<void(const char*)> on_expire)
      : impl_(std::make_shared<impl>(ex, std::move(on_expire))) {}
  ~preauth_deadline() { disarm(); }
  preauth_deadline(const preauth_deadline&) = delete;
  preauth_deadline& operator=(const preauth_deadline&) = delete;

  void arm(std::chrono::milliseconds idle, clock::time_point hard) {
    impl_->idle = idle;
    impl_->hard = hard;
    impl_->armed = true;
    touch();
    impl_->schedule();
  }
  void touch() { impl_->due = clock::now() + impl_->idle; }
  void disarm() {
    impl_->armed = false;
    impl_->timer.cancel();
  }

 private:
  struct impl : std::enable_shared_from_this<impl> {
    impl(asio::any_io_executor ex, std::function<void(const char*)> f) : timer(ex), on_expire(std::move(f)) {}
    asio::steady_timer timer;
    std::function<void(const char*)> on_expire;
    std::chrono::milliseconds idle{0};
    clock::time_point due, hard;
    bool armed = false;
    void schedule() {
      timer.expires_at(std::min(due, hard));
      timer.async_wait([w = weak_from_this()](boost::system::error_code ec) {
        if (ec) return;
        if (auto self = w.lock()) self->fire();
      });
    }
    void fire() {
      if (!armed) return;
      const auto now = clock::now();
      if (now >= hard) {
        armed = false;
        return on_expire("login timeout");
      }
      if (now < due) return schedule();
      armed = false;
      on_expire("idle timeout");
    }
  };
  std::shared_ptr<impl> impl_;
};

// "client=1.2.3.4:5678" or "client=[2001:db8::1]:5678": one token, so a
// fail2ban filter can take the address as <HOST> before ":port".
// A login preauth refused without asking the backend (malformed SASL, a NUL,
// an over-long name) is a failed login like the backend's NO: logged so.
void log_refused_login(daemon::state& st, const preauth& pa, const std::string& client,
                       const std::string& session_id) {
  if (pa.login_refused().empty()) return;
  ++st.logins_failed;
  spdlog::info("login failed user={} client={} backend={} mech=\"{}\" reason=\"{}\" duration=0ms session={}",
               imap::log_value(pa.login_user()), client, st.backend.display(), pa.mechanism(),
               pa.login_refused(), session_id);
}

std::string client_text(const boost::asio::ip::address& a, std::uint16_t port) {
  return a.is_v6() ? "[" + a.to_string() + "]:" + std::to_string(port) : a.to_string() + ":" + std::to_string(port);
}

// Registers the session with the daemon for its lifetime (shutdown, limits).
class registration {
 public:
  registration(daemon::state& st, session_handle& h, std::string address)
      : st_(st), h_(h), address_(std::move(address)) {
    std::lock_guard lock(st_.m);
    st_.sessions.emplace(h_.id, &h_);
    ++st_.active_sessions;
    ++st_.per_address[address_];
  }
  ~registration() {
    {
      std::lock_guard lock(st_.m);
      st_.sessions.erase(h_.id);
      --st_.active_sessions;
      auto it = st_.per_address.find(address_);
      if (it != st_.per_address.end() && --it->second == 0) st_.per_address.erase(it);
    }
    st_.session_ended();
  }
  registration(const registration&) = delete;
  registration& operator=(const registration&) = delete;
  // Why this connection is over the limits (nullptr: it is not); a refusal
  // to log when the refusal log says so. Under the daemon's lock.
  const char* over_limits(const limit_options& limits, bool& log_it) const {
    std::lock_guard lock(st_.m);
    const char* why = nullptr;
    if (st_.sessions.size() > limits.max_connections) why = "too many connections";
    else if (st_.per_address[address_] > limits.max_connections_per_ip)
      why = "too many connections from this address";
    if (!why) return nullptr;
    if (st_.refusals.quiet()) st_.start_refusal_interval();
    log_it = st_.refusals.on_refused(address_, why);
    return why;
  }

 private:
  daemon::state& st_;
  session_handle& h_;
  std::string address_;
};

// What a connection keeps from accept to close, on the heap: the pre-auth
// coroutine hands it to the relay coroutine after login and ends, so a
// logged-in session no longer holds the pre-auth frame (parser, preauth
// state, capability lists).
struct session_core {
  session_core(daemon::state& st, std::uint64_t id, std::size_t shard, tcp::socket s, std::string address)
      : h{id, shard}, stream(std::move(s)), reg(st, h, std::move(address)) {
    h.client = &stream;
  }
  session_handle h;
  imap::tls_stream stream;
  registration reg;  // last: unregisters first
};

// What the session's last log line says besides the relay's result.
struct session_log {
  std::string user, client, session_id;
  clock::time_point started;
};

long long ms_since(clock::time_point t);

// Plaintext on both sides: the sockets leave Asio's reactor for the shard's
// relay loop (relay_loop.hpp: fewer system calls per command), and this
// coroutine waits for the result the loop posts back to this thread.
asio::awaitable<relay_result> relay_on_loop(daemon::state& st, session_handle& h, imap::tls_stream& client,
                                            imap::tls_stream& backend, std::string to_backend,
                                            std::string to_client) {
  boost::system::error_code client_ec, backend_ec;
  const int client_fd = client.socket().release(client_ec);
  const int backend_fd = backend.socket().release(backend_ec);
  if (client_ec || backend_ec) {
    if (!client_ec) ::close(client_fd);
    if (!backend_ec) ::close(backend_fd);
    co_return relay_result{0, 0, "relay failed: " + (client_ec ? client_ec : backend_ec).message()};
  }
  relay_loop::ticket ticket;
  relay_loop& loop = *st.relay_loops[h.shard];
  auto start = [&](auto handler) {
    auto ex = asio::get_associated_executor(handler);
    // The loop's on_end is copyable; the coroutine's handler is not.
    auto shared = std::make_shared<decltype(handler)>(std::move(handler));
    loop.add(ticket, client_fd, backend_fd, std::move(to_backend), std::move(to_client),
             [shared, ex](relay_result r) {
               asio::post(ex, [shared, r = std::move(r)]() mutable { std::move(*shared)(std::move(r)); });
             });
    h.active_relay = &ticket;
    if (st.grace_over) ticket.stop("shutdown");
  };
  co_return co_await asio::async_initiate<decltype(asio::use_awaitable), void(relay_result)>(start,
                                                                                           asio::use_awaitable);
}

// An Asio relay's time under the daemon's idle sweep (the relay loop sweeps
// its own relays).
class swept_by_daemon {
 public:
  swept_by_daemon(daemon::state& st, session_handle& h) : st_(st), h_(h) {
    h_.swept = true;
    st_.swept_relay_started();
  }
  ~swept_by_daemon() {
    h_.swept = false;
    st_.swept_relay_ended();
  }
  swept_by_daemon(const swept_by_daemon&) = delete;
  swept_by_daemon& operator=(const swept_by_daemon&) = delete;

 private:
  daemon::state& st_;
  session_handle& h_;
};

// After login: the byte relay, and nothing else in the frame.
asio::awaitable<void> relay_session(std::shared_ptr<daemon::state> st, std::unique_ptr<session_core> core,
                                    std::unique_ptr<imap::tls_stream> backend, std::string to_backend,
                                    std::string to_client, session_log log) {
  session_handle& h = core->h;
  h.phase = session_phase::relay;
  relay_result rr;
  if (!core->stream.tls_active() && !backend->tls_active()) {
    rr = co_await relay_on_loop(*st, h, core->stream, *backend, std::move(to_backend), std::move(to_client));
  } else {
    relay rl(core->stream, *backend);
    h.active_relay = &rl;
    swept_by_daemon swept(*st, h);
    if (st->grace_over) rl.stop("shutdown");
    rr = co_await rl.run(std::move(to_backend), std::move(to_client));
  }
  h.active_relay = nullptr;
  st->bytes_from_clients += rr.to_backend;
  st->bytes_to_clients += rr.to_client;
  spdlog::info("session closed user={} client={} backend={} reason=\"{}\" in={} out={} duration={}ms session={}",
               log.user, log.client, st->backend.display(), rr.end, rr.to_backend, rr.to_client,
               ms_since(log.started), log.session_id);
}

std::string make_session_id(const daemon::state& st, std::uint64_t n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%010llx%06llx", static_cast<unsigned long long>(st.session_id_salt),
                static_cast<unsigned long long>(n & 0xffffff));
  return buf;
}

asio::awaitable<bool> write_text(imap::tls_stream& stream, std::string_view text) {
  boost::system::error_code ec;
  co_await stream.write_all(asio::buffer(text), ec);
  co_return !ec;
}

// Server-side TLS handshake; on failure logs why and closes.
asio::awaitable<bool> tls_handshake(imap::tls_stream& stream, std::shared_ptr<asio::ssl::context> ctx,
                                    const std::string& client, const std::string& session_id) {
  auto ec = co_await stream.server_handshake(*ctx);
  if (!ec) co_return true;
  spdlog::info("tls handshake failed client={} reason=\"{}\" session={}", client, ec.message(), session_id);
  stream.close();
  co_return false;
}

long long ms_since(clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - t).count();
}

}  // namespace

void log_session_failure(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    spdlog::error("session ended by an unexpected error: {}", ex.what());
  }
}

// A trusted balancer's PROXY header, read off the socket before anything
// else: peeked, then exactly its bytes read, so what follows it (an IMAP
// client's nothing, a TLS ClientHello) stays for the session. Bytes peeked
// while the header is still incomplete all belong to it and are read at once.
asio::awaitable<header_parse> read_proxy_header(tcp::socket& socket, std::chrono::milliseconds timeout) {
  asio::steady_timer deadline(socket.get_executor(), timeout);
  bool timed_out = false;
  deadline.async_wait([&socket, &timed_out](boost::system::error_code ec) {
    if (ec) return;
    timed_out = true;
    boost::system::error_code ignored;
    socket.cancel(ignored);
  });
  std::string got;
  std::array<char, kMaxProxyHeader> peek{};
  for (;;) {
    boost::system::error_code ec;
    const std::size_t room = kMaxProxyHeader - got.size();
    std::size_t n = co_await socket.async_receive(asio::buffer(peek.data(), room), tcp::socket::message_peek,
                                                  asio::redirect_error(asio::use_awaitable, ec));
    if (ec || n == 0) {
      header_parse p;
      p.status = header_status::invalid;
      p.error = timed_out ? "no PROXY protocol header within " + std::to_string(timeout.count()) + "ms"
                          : "closed before its PROXY protocol header";
      co_return p;
    }
    std::string candidate = got + std::string(peek.data(), n);
    header_parse p = parse_proxy_header(candidate);
    // Exactly the header's bytes (ok), or all that was peeked (need more):
    // never a byte behind the header.
    const std::size_t take = p.status == header_status::ok ? p.size - got.size() : n;
    if (p.status == header_status::invalid) co_return p;
    std::size_t read = co_await asio::async_read(socket, asio::buffer(peek.data(), take),
                                                 asio::redirect_error(asio::use_awaitable, ec));
    if (ec || read != take) {
      p.status = header_status::invalid;
      p.error = "closed inside its PROXY protocol header";
      co_return p;
    }
    if (p.status == header_status::ok) co_return p;
    got = std::move(candidate);
  }
}

asio::awaitable<void> run_session(std::shared_ptr<daemon::state> st, tcp::socket socket,
                                  bool implicit_tls, std::size_t shard) {
  const auto started = clock::now();
  auto ex = co_await asio::this_coro::executor;
  const std::uint64_t id = ++st->next_session;
  boost::system::error_code ec;
  auto remote = socket.remote_endpoint(ec);
  client_info ci;
  ci.address = ec ? std::string("unknown") : remote.address().to_string();
  ci.port = ec ? 0 : remote.port();
  ci.session_id = make_session_id(*st, id);
  std::string client = ec ? std::string("unknown") : client_text(remote.address(), ci.port);
  socket.set_option(tcp::no_delay(true), ec);
  // A trusted balancer says whom it accepted the connection from: that
  // address is the client's for limits, logs and x-originating-ip.
  const bool from_balancer = ci.port != 0 && trusted(st->balancers, ci.address);
  if (from_balancer) {
    const auto wait = std::min<std::chrono::milliseconds>(st->opt.limits.preauth_idle, std::chrono::seconds(10));
    header_parse h = co_await read_proxy_header(socket, wait);
    if (h.status != header_status::ok) {
      ++st->proxy_protocol_refused;
      spdlog::warn("proxy protocol refused client={} reason=\"{}\" session={}", client, h.error, ci.session_id);
      boost::system::error_code ignored;
      socket.close(ignored);
      co_return;
    }
    if (st->stopping) {  // stopped while the header was awaited: not a session any more
      boost::system::error_code ignored;
      socket.close(ignored);
      co_return;
    }
    if (!h.header.local) {
      const std::string balancer = client;
      const auto from = asio::ip::make_address(h.header.address);
      ci.address = from.to_string();
      ci.port = h.header.port;
      client = client_text(from, ci.port);
      spdlog::debug("proxy protocol client={} balancer={} session={}", client, balancer, ci.session_id);
    }
  }
  auto core = std::make_unique<session_core>(*st, id, shard, std::move(socket), ci.address);
  session_handle& h = core->h;
  imap::tls_stream& stream = core->stream;
  const registration& reg = core->reg;

  auto say = [&stream](std::string_view text) { return write_text(stream, text); };

  // Connection limits, answered in plaintext before anything else. A flood of
  // refusals writes two lines per address and interval, not one each.
  const auto& limits = st->opt.limits;
  bool log_refusal = false;
  if (const char* why = reg.over_limits(limits, log_refusal)) {
    ++st->connections_refused;
    if (log_refusal)
      spdlog::warn("connection refused client={} reason=\"{}\" session={} (more from this address in the "
                   "next {}s are counted, not logged one by one)",
                   client, why, ci.session_id,
                   std::chrono::duration_cast<std::chrono::seconds>(st->refusals.interval()).count());
    if (!implicit_tls) co_await say("* BYE Too many connections.\r\n");
    stream.close();
    co_return;
  }
  if (st->stopping) {
    stream.close();
    co_return;
  }

  std::string why_closed = "client closed";
  preauth_deadline deadline(ex, [&stream, &why_closed](const char* why) {
    why_closed = why;
    stream.close();
  });
  const auto login_due = started + limits.preauth_total;
  deadline.arm(limits.preauth_idle, login_due);

  auto server_tls = st->tls();
  if (implicit_tls && !co_await tls_handshake(stream, server_tls, client, ci.session_id)) co_return;

  preauth_settings ps;
  ps.backend_capabilities = st->capabilities();
  ps.starttls_available = !implicit_tls && server_tls != nullptr;
  ps.login_requires_tls = st->opt.listen.login_requires_tls;
  ps.max_bad_commands = limits.max_bad_commands;
  ps.max_login_attempts = limits.login_attempts;
  preauth pa(std::move(ps), stream.tls_active());
  imap::command_parser parser(st->preauth_limits);

  if (!co_await say(pa.greeting())) co_return;

  std::vector<char> buf(4096);
  std::size_t begin = 0, end = 0;
  bool first_read = true;
  for (;;) {
    auto r = parser.feed(std::string_view(buf.data() + begin, end - begin));
    begin += r.consumed;
    preauth::action act;
    switch (r.event) {
      case imap::parse_event::need_more: {
        begin = end = 0;
        boost::system::error_code rec;
        std::size_t n = co_await stream.read_some(asio::buffer(buf), rec);
        if (rec) {
          if (h.shutting_down) {
            co_await say("* BYE Server shutting down.\r\n");
            why_closed = "shutdown";
          }
          spdlog::info("session closed before login client={} reason=\"{}\" duration={}ms session={}",
                       client, why_closed, ms_since(started), ci.session_id);
          stream.close();
          co_return;
        }
        deadline.touch();
        end = n;
        if (std::exchange(first_read, false) && starts_proxy_header(std::string_view(buf.data(), n))) {
          // Only a listed balancer may say where a connection comes from.
          ++st->proxy_protocol_refused;
          spdlog::warn("proxy protocol refused client={} reason=\"a header from an address not in "
                       "[listen] proxy_protocol_from\" session={}",
                       client, ci.session_id);
          co_await say("* BYE PROXY protocol header not accepted from this address.\r\n");
          stream.close();
          co_return;
        }
        continue;
      }
      case imap::parse_event::need_continuation:
        if (!co_await say("+ OK\r\n")) co_return;
        continue;
      case imap::parse_event::literal_begin:
      case imap::parse_event::literal_data:
      case imap::parse_event::literal_end:
        continue;  // pre-auth literals are small and kept inline
      case imap::parse_event::message:
        spdlog::trace("preauth command client={} tag={} command={} session={}", client,
                      imap::log_value(parser.command().tag), imap::log_value(parser.command().name),
                      ci.session_id);
        act = pa.on_command(parser.command());
        log_refused_login(*st, pa, client, ci.session_id);
        break;
      case imap::parse_event::line:
        act = pa.on_auth_line(parser.line());
        log_refused_login(*st, pa, client, ci.session_id);
        break;
      case imap::parse_event::error:
        act = pa.on_parse_error(parser.error(), parser.error_tag(), parser.recoverable());
        if (!pa.limit_hit().empty()) {
          // Counted once: a limit that also closes is counted where it closes.
          if (act != preauth::action::send_and_close) ++st->preauth_limits_hit;
          spdlog::warn("preauth limit client={} reason=\"{}\" session={}", client, pa.limit_hit(),
                       ci.session_id);
        } else if (act != preauth::action::send_and_close)
          spdlog::debug("preauth bad command client={} reason=\"{}\" session={}", client,
                        parser.error().message(), ci.session_id);
        break;
    }

    switch (act) {
      case preauth::action::send:
        if (!co_await say(pa.out())) co_return;
        break;
      case preauth::action::send_and_close:
        co_await say(pa.out());
        if (pa.close_reason() == "logout")
          spdlog::info("session closed before login client={} reason=\"logout\" duration={}ms session={}",
                       client, ms_since(started), ci.session_id);
        else {
          ++st->preauth_limits_hit;
          spdlog::warn("preauth limit client={} reason=\"{}\" session={}", client, pa.close_reason(),
                       ci.session_id);
        }
        stream.close();
        co_return;
      case preauth::action::read_auth_line:
        if (!co_await say(pa.out())) co_return;
        parser.expect_line();
        break;
      case preauth::action::start_tls: {
        if (!co_await say(pa.out())) co_return;
        // Whatever the client sent after STARTTLS, before the handshake, is
        // dropped: answering it inside TLS is the command-injection bug.
        begin = end = 0;
        parser.reset();
        if (!co_await tls_handshake(stream, st->tls(), client, ci.session_id)) co_return;
        pa.on_tls_started();
        break;
      }
      case preauth::action::login: {
        h.phase = session_phase::login;
        deadline.disarm();  // the backend login has its own deadlines
        const auto login_started = clock::now();
        credentials creds = pa.take_credentials();
        const std::string user = imap::log_value(pa.login_user());
        mapped_login names = names_of(*st, creds.user);
        verified_login v = co_await verify_and_login(*st, creds, names, ci);
        backend_result& res = v.result;
        if (!res.preauth_capabilities.empty()) st->set_capabilities(res.preauth_capabilities);
        const auto login_ms = ms_since(login_started);
        if (st->opt.observe_login && res.outcome != backend_outcome::unavailable)
          st->opt.observe_login(std::chrono::milliseconds(login_ms));
        if (res.outcome == backend_outcome::unavailable || res.outcome == backend_outcome::temporary) {
          // The backend's trouble, not the client's: not a failed login (fail2ban
          // does not count it), and the client may try again.
          ++st->backend_errors;
          ++(res.outcome == backend_outcome::temporary ? st->backend_temporary : st->backend_unavailable);
          spdlog::error("login unavailable user={} client={} backend={} reason={} duration={}ms session={}",
                        user, client, st->backend.display(), imap::log_value(res.reason), login_ms, ci.session_id);
          const std::string answer = res.outcome == backend_outcome::temporary
                                         ? client_answer(pa.login_tag(), res)
                                         : pa.login_tag() + " NO [UNAVAILABLE] Account is temporarily unavailable.\r\n";
          if (!co_await say(answer)) co_return;
          h.phase = session_phase::preauth;
          deadline.arm(limits.preauth_idle, login_due);
          break;
        }
        if (res.outcome == backend_outcome::refused) {
          ++st->logins_failed;
          spdlog::info("login failed user={} client={} backend={} mech=\"{}\" {}reason={} duration={}ms session={}",
                       user, client, st->backend.display(), pa.mechanism(), checked_by(*st, v),
                       imap::log_value(res.reason), login_ms, ci.session_id);
          auto next = pa.on_login_refused(client_answer(pa.login_tag(), res));
          co_await say(pa.out());
          if (next == preauth::action::send_and_close) {
            ++st->preauth_limits_hit;
            spdlog::warn("preauth limit client={} reason=\"{}\" session={}", client, pa.close_reason(),
                         ci.session_id);
            stream.close();
            co_return;
          }
          h.phase = session_phase::preauth;
          deadline.arm(limits.preauth_idle, login_due);
          break;
        }
        ++st->logins_ok;
        // The account the login stands for, when [users] made it another name.
        const std::string account =
            names.identity == creds.user ? "" : "account=" + imap::log_value(names.identity) + " ";
        spdlog::info("login ok user={} {}client={} backend={} mech=\"{}\" {}tls={} duration={}ms session={}",
                     user, account, client, st->backend.display(), pa.mechanism(), checked_by(*st, v),
                     stream.tls_active() ? "yes" : "no", login_ms, ci.session_id);
        if (!co_await say(client_answer(pa.login_tag(), res))) co_return;
        // Legacy confirmed the password: the new server may need the account.
        // Not with a master's password ("bob*admin"): that is not bob's.
        if (v.checked_by == "legacy" && !names.master_form && st->provision->configured())
          st->provision->maybe_run(creds.user, names.new_user, creds.password, client);
        st->trigger->on_login(login_event{std::move(creds), std::move(names), ci.address, ci.session_id});

        // Commands the client pipelined behind LOGIN go to the backend first.
        std::string pending(buf.data() + begin, end - begin);
        asio::co_spawn(ex,
                       relay_session(st, std::move(core), std::move(res.stream), std::move(pending),
                                     std::move(res.unparsed), session_log{user, client, ci.session_id, started}),
                       log_session_failure);
        co_return;
      }
    }
  }
}

}  // namespace suction::proxy
