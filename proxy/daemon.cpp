#include "proxy/daemon.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <csignal>
#include <random>

#include <pthread.h>

#include "imap/client/stream.hpp"
#include "proxy/daemon_state.hpp"

namespace suction::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

std::shared_ptr<asio::ssl::context> make_server_tls(const options& opt) {
  const auto& l = opt.listen;
  if (l.tls_cert.empty()) return nullptr;
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_compression |
                   asio::ssl::context::single_dh_use);
  // Idle TLS sessions give their record buffers back (memory per session).
  SSL_CTX_set_mode(ctx->native_handle(), SSL_MODE_RELEASE_BUFFERS);
  // No server-side session cache: it kept a copy of every session (memory
  // that grew with the sessions); resumption still works through tickets.
  SSL_CTX_set_session_cache_mode(ctx->native_handle(), SSL_SESS_CACHE_OFF);
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(l.tls_cert, ec);
  if (ec)
    throw startup_error(opt.origin + ": [listen] tls_cert: cannot use " + l.tls_cert + ": " + ec.message());
  ctx->use_private_key_file(l.tls_key, asio::ssl::context::pem, ec);
  if (ec)
    throw startup_error(opt.origin + ": [listen] tls_key: cannot use " + l.tls_key + ": " + ec.message());
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1)
    throw startup_error(opt.origin + ": [listen] tls_key: " + l.tls_key + " does not match the certificate " +
                        l.tls_cert);
  return ctx;
}

void daemon::state::session_ended() {
  if (!stopping) return;
  {
    std::lock_guard lock(m);
    if (!sessions.empty()) return;
  }
  // Any io thread: the timers and signals are the caller's thread's.
  asio::post(io, [self = shared_from_this()] { self->finish_stop(); });
}

void daemon::state::finish_stop() {
  if (stop_finished) return;
  stop_finished = true;
  grace_timer.cancel();
  refusal_timer.cancel();
  idle_sweep_timer.cancel();
  boost::system::error_code ignored;
  signals.cancel(ignored);
  worker_work.clear();  // the workers' run() returns once their last handlers ran
  stop_work.reset();
  spdlog::info("shutdown complete");
}

void daemon::state::start_refusal_interval() {
  asio::post(io, [self = shared_from_this()] {
    if (self->stop_finished) return;
    self->refusal_timer.expires_after(self->refusals.interval());
    self->refusal_timer.async_wait([self](const boost::system::error_code&) {
      // Also when cancelled at stop: what was held back is still logged.
      std::vector<std::string> lines;
      {
        std::lock_guard lock(self->m);
        lines = self->refusals.flush();
      }
      for (const auto& line : lines) spdlog::warn("{}", line);
    });
  });
}

void daemon::state::swept_relay_started() {
  {
    std::lock_guard lock(m);
    if (swept_relays++ > 0) return;
  }
  asio::post(io, [self = shared_from_this()] {
    if (self->sweep_running || self->stop_finished) return;
    self->sweep_running = true;
    asio::co_spawn(self->io, self->idle_sweep(), asio::detached);
  });
}

void daemon::state::swept_relay_ended() {
  {
    std::lock_guard lock(m);
    if (--swept_relays > 0) return;
  }
  // The last one: the sweep ends now rather than at its next tick.
  asio::post(io, [self = shared_from_this()] { self->idle_sweep_timer.cancel(); });
}

// The Asio relays' idle deadline: one sweep over their sessions every
// idle_sweep_interval() while any run, instead of a timer per session; when
// none is left the timer stops, so an idle daemon does not wake up.
asio::awaitable<void> daemon::state::idle_sweep() {
  auto self = shared_from_this();
  const auto idle = opt.limits.relay_idle;
  while (!stopping) {
    idle_sweep_timer.expires_after(idle_sweep_interval(idle));
    boost::system::error_code ec;
    co_await idle_sweep_timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (stopping) break;
    {
      std::lock_guard lock(m);
      if (swept_relays == 0) break;
    }
    if (ec) continue;  // cancelled by the last relay's end, but another has started since
    // Each shard sweeps its own sessions on its own thread: a relay is
    // touched only there.
    for (std::size_t shard = 0; shard < shards(); ++shard)
      asio::post(executor_of(shard), [self, shard, idle] {
        const auto now = std::chrono::steady_clock::now();
        std::lock_guard lock(self->m);
        for (auto& [id, h] : self->sessions)
          if (h->shard == shard && h->swept && h->active_relay && now - h->active_relay->last_activity() >= idle)
            h->active_relay->stop("idle");
      });
  }
  sweep_running = false;
}

namespace {

tcp::endpoint listen_endpoint(const options& opt, const std::string& key, const listen_address& where) {
  std::string host = where.host;
  if (host == "*" || host.empty()) host = "::";
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) {
    asio::io_context io;
    tcp::resolver r(io);
    auto results = r.resolve(host, std::to_string(where.port), ec);
    if (ec || results.empty())
      throw startup_error(opt.origin + ": [listen] " + key + ": cannot resolve " + host + ": " + ec.message());
    return *results.begin();
  }
  return {addr, where.port};
}

std::unique_ptr<tcp::acceptor> bind_listener(asio::io_context& io, const options& opt, const std::string& key,
                                             const listen_address& where) {
  auto ep = listen_endpoint(opt, key, where);
  auto acc = std::make_unique<tcp::acceptor>(io);
  boost::system::error_code ec;
  auto fail = [&](const char* what) {
    throw startup_error(opt.origin + ": [listen] " + key + ": cannot " + what + " " + where.text + ": " +
                        ec.message());
  };
  acc->open(ep.protocol(), ec);
  if (ec) fail("open a socket for");
  acc->set_option(tcp::acceptor::reuse_address(true), ec);
  if (ep.address().is_v6()) acc->set_option(asio::ip::v6_only(false), ec);  // "::" takes IPv4 too
  acc->bind(ep, ec);
  if (ec) fail("listen on");
  acc->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) fail("listen on");
  return acc;
}

asio::awaitable<void> accept_loop(std::shared_ptr<daemon::state> st, tcp::acceptor& acc, bool implicit_tls) {
  // Out of descriptors, accept fails every retry: one log line per 10 s is enough.
  std::chrono::steady_clock::time_point last_warning{};
  std::uint64_t failures_since_warning = 0;
  for (;;) {
    boost::system::error_code ec;
    // Round robin over the io threads: the socket is made on its session's.
    const std::size_t shard = st->next_shard++ % st->shards();
    tcp::socket s =
        co_await acc.async_accept(st->executor_of(shard), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (st->stopping || ec == asio::error::operation_aborted) co_return;
      ++failures_since_warning;
      auto now = std::chrono::steady_clock::now();
      if (now - last_warning >= std::chrono::seconds(10)) {
        spdlog::warn("accept failed: {} ({} time(s) since the last warning)", ec.message(),
                     failures_since_warning);
        last_warning = now;
        failures_since_warning = 0;
      }
      // Out of file descriptors and the like: pause rather than spin.
      asio::steady_timer pause(acc.get_executor(), std::chrono::milliseconds(100));
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    auto ex = s.get_executor();
    asio::co_spawn(ex, run_session(st, std::move(s), implicit_tls, shard), log_session_failure);
  }
}

}  // namespace

daemon::daemon(asio::io_context& io, options opts, std::shared_ptr<login_trigger> trigger,
               status_backend* status)
    : state_(std::make_shared<state>(io, std::move(opts), std::move(trigger), status)) {}

proxy_stats daemon::stats() const {
  const state& st = *state_;
  proxy_stats p;
  p.uptime_s = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() -
                                                                st.started)
                   .count();
  p.active_sessions = st.active_sessions;
  p.logins_ok = st.logins_ok;
  p.logins_failed = st.logins_failed;
  p.backend_errors = st.backend_errors;
  p.backend_unavailable = st.backend_unavailable;
  p.backend_temporary = st.backend_temporary;
  p.preauth_limits = st.preauth_limits_hit;
  p.connections_refused = st.connections_refused;
  p.proxy_protocol_refused = st.proxy_protocol_refused;
  p.bytes_from_clients = st.bytes_from_clients;
  p.bytes_to_clients = st.bytes_to_clients;
  return p;
}

daemon::~daemon() {
  state& st = *state_;
  if (st.status_thread.joinable()) {
    asio::post(*st.status_io, [&st] { st.status_socket->stop(); });
    st.status_thread.join();
  }
  // After a stop the workers are idle and return by themselves; otherwise
  // (the caller's io_context stopped early) they are stopped here.
  st.worker_work.clear();
  for (auto& w : st.workers) w->stop();
  for (auto& t : st.worker_threads) t.join();
  // Relays still running (the io_contexts stopped before their sessions
  // ended) are closed here, on this thread, with no io thread left to race.
  st.relay_loops.clear();
}

void daemon::start() {
  state& st = *state_;
  const options& opt = st.opt;
  st.server_tls = make_server_tls(opt);
  st.session_id_salt = std::random_device{}() | 1ull << 40;
  if (opt.listen.login_requires_tls && !st.server_tls)
    throw startup_error(opt.origin + ": [listen] login_requires_tls: needs tls_cert and tls_key");

  st.preauth_limits.max_line = opt.limits.max_line;
  st.preauth_limits.max_literal = opt.limits.max_literal;
  st.preauth_limits.inline_literal_max = opt.limits.max_literal;
  st.preauth_limits.max_message = opt.limits.max_line + 2 * std::size_t(opt.limits.max_literal);
  st.preauth_limits.max_depth = 8;

  auto settings_of = [&](const backend_options& o, const char* section) {
    backend_settings b;
    b.endpoint = o.endpoint;
    b.connect_timeout = o.connect_timeout;
    b.command_timeout = o.command_timeout;
    b.forward_client_info = o.forward_client_info;
    if (b.endpoint.tls != imap::tls_mode::none) {
      std::error_code ec;
      b.tls = imap::make_client_tls_context(o.tls, ec);
      if (!b.tls)
        throw startup_error(opt.origin + ": [" + section + "] ca_file: cannot load " +
                            (o.tls.ca_file.empty() ? std::string("the system CA store")
                                                   : o.tls.ca_file) +
                            ": " + ec.message());
    }
    return b;
  };
  for (std::size_t i = 0; i < opt.listen.proxy_protocol_from.size(); ++i) {
    const std::string& text = opt.listen.proxy_protocol_from[i];
    auto net = parse_cidr(text);
    if (!net)
      throw startup_error(opt.origin + ": [listen] proxy_protocol_from[" + std::to_string(i) +
                          "]: \"" + text + "\" is not an address or a network (\"10.0.0.0/8\")");
    st.balancers.push_back(*net);
  }
  st.backend = settings_of(opt.backend, "new");
  if (opt.auth.verify != verify_mode::fresh) {
    st.legacy = settings_of(opt.auth.legacy, "legacy");
    for (const auto& [name, o] : opt.auth.more_legacy)
      st.more_legacy.emplace(name, settings_of(o, ("legacy_servers." + name).c_str()));
  }

  if (opt.listen.imap) st.acceptors.push_back(bind_listener(st.io, opt, "imap", *opt.listen.imap));
  if (opt.listen.imaps) {
    if (!st.server_tls) throw startup_error(opt.origin + ": [listen] imaps: needs tls_cert and tls_key");
    st.acceptors.push_back(bind_listener(st.io, opt, "imaps", *opt.listen.imaps));
  }

  // Until the probe answers, advertise what any IMAP4rev1 server offers.
  st.backend_capabilities = imap::capability_set::parse("IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE");
  asio::co_spawn(st.io, [self = state_]() -> asio::awaitable<void> {
    auto [ec, caps] = co_await probe_capabilities(self->io.get_executor(), self->backend);
    if (ec) {
      spdlog::warn("backend probe failed backend={} reason=\"{}\" (logins will report UNAVAILABLE until it answers)",
                   self->backend.display(), ec.message());
      co_return;
    }
    self->set_capabilities(caps);
    spdlog::info("backend {} offers: {}", self->backend.display(), caps.to_string());
  }, asio::detached);

  // [proxy] threads: the caller's thread runs shard 0, these the others.
  for (std::uint32_t n = 1; n < std::max<std::uint32_t>(1, opt.threads); ++n) {
    st.workers.push_back(std::make_unique<asio::io_context>(1));
    st.worker_work.push_back(asio::make_work_guard(*st.workers.back()));
  }
  for (std::size_t n = 0; n < st.workers.size(); ++n)
    st.worker_threads.emplace_back([io = st.workers[n].get(), n] {
      // "suction-io-1": what `top -H` and /proc/PID/task/*/comm show.
      const std::string name = "suction-io-" + std::to_string(n + 1);
      pthread_setname_np(pthread_self(), name.c_str());
      io->run();
    });
  try {
    for (std::size_t shard = 0; shard < st.shards(); ++shard)
      st.relay_loops.push_back(
          std::make_unique<relay_loop>("suction-relay-" + std::to_string(shard), opt.limits.relay_idle));
  } catch (const std::system_error& e) {
    throw startup_error(std::string("cannot start the relay threads: ") + e.what());
  }
  spdlog::info("io threads={} relay threads={} (sessions spread over them at accept)", st.shards(),
               st.relay_loops.size());

  std::size_t i = 0;
  if (opt.listen.imap) {
    asio::co_spawn(st.io, accept_loop(state_, *st.acceptors[i++], false), asio::detached);
    spdlog::info("listening imap={} (plaintext{})", opt.listen.imap->text, st.server_tls ? " + STARTTLS" : "");
  }
  if (opt.listen.imaps) {
    asio::co_spawn(st.io, accept_loop(state_, *st.acceptors[i++], true), asio::detached);
    spdlog::info("listening imaps={} (implicit TLS)", opt.listen.imaps->text);
  }

  if (st.status && !opt.status.socket.empty()) {
    st.status_io = std::make_unique<asio::io_context>(1);
    st.status_socket = std::make_unique<status_server>(*st.status_io, opt.status.socket, opt.status.mode,
                                                       opt.status.group, *st.status);
    st.status_socket->start();
    st.status_thread = std::thread([io = st.status_io.get()] { io->run(); });
  }

  st.signals.add(SIGTERM);
  st.signals.add(SIGINT);
  st.signals.add(SIGHUP);
  std::signal(SIGPIPE, SIG_IGN);
  asio::co_spawn(st.io, [this, weak = std::weak_ptr<state>(state_)]() -> asio::awaitable<void> {
    for (;;) {
      auto s = weak.lock();
      if (!s) co_return;
      boost::system::error_code ec;
      int sig = co_await s->signals.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;  // cancelled: the daemon is done
      if (sig != SIGHUP) {
        spdlog::info("{}: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        stop();
        // No more waiting for signals: a pending wait would keep the daemon
        // alive after its last session. The grace period bounds the stop.
        co_return;
      }
      try {
        if (auto ctx = make_server_tls(s->opt)) {
          {
            std::lock_guard lock(s->m);
            s->server_tls = ctx;
          }
          spdlog::info("SIGHUP: TLS certificate reloaded from {}", s->opt.listen.tls_cert);
        }
      } catch (const std::exception& e) {
        spdlog::error("SIGHUP: keeping the old certificate: {}", e.what());
      }
      if (s->opt.reload) {
        try {
          spdlog::info("SIGHUP: {}", s->opt.reload());
        } catch (const std::exception& e) {
          spdlog::error("SIGHUP: {}", e.what());
        }
      }
    }
  }, asio::detached);
}

void daemon::stop() {
  state& st = *state_;
  if (st.stopping) return;
  st.stopping = true;
  st.stop_work.emplace(st.io.get_executor());
  for (auto& a : st.acceptors) {
    boost::system::error_code ignored;
    a->close(ignored);
  }
  if (st.status_socket) asio::post(*st.status_io, [&st] { st.status_socket->stop(); });
  std::size_t relays = 0;
  std::vector<std::pair<std::uint64_t, std::size_t>> all;
  {
    std::lock_guard lock(st.m);
    for (auto& [id, h] : st.sessions) {
      all.emplace_back(id, h->shard);
      if (h->phase != session_phase::preauth) ++relays;
    }
  }
  for (const auto& [id, shard] : all)
    st.on_session(id, shard, [](session_handle& h) {
      if (h.phase != session_phase::preauth) return;
      // The session's pending read ends; it says BYE itself.
      h.shutting_down = true;
      boost::system::error_code ignored;
      h.client->socket().cancel(ignored);
    });
  spdlog::info("stop: no new connections; {} logged-in session(s) may drain for {}s", relays,
               std::chrono::duration_cast<std::chrono::seconds>(st.opt.limits.shutdown_grace).count());
  st.grace_timer.expires_after(st.opt.limits.shutdown_grace);
  st.grace_timer.async_wait([weak = std::weak_ptr<state>(state_)](boost::system::error_code ec) {
    auto s = weak.lock();
    if (ec || !s) return;
    s->grace_over = true;
    std::vector<std::pair<std::uint64_t, std::size_t>> all;
    {
      std::lock_guard lock(s->m);
      for (auto& [id, h] : s->sessions) all.emplace_back(id, h->shard);
    }
    spdlog::info("stop: grace period over, closing {} session(s)", all.size());
    for (const auto& [id, shard] : all)
      s->on_session(id, shard, [](session_handle& h) {
        if (h.active_relay) h.active_relay->stop("shutdown");
        else if (h.client) h.client->close();
      });
  });
  st.session_ended();
}

}  // namespace suction::proxy
