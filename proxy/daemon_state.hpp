// The daemon's shared state, seen by the listeners and the sessions. Internal
// to proxy/ (pulls in Asio): include only from proxy .cpp files.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <thread>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "imap/parser.hpp"
#include "proxy/auth_penalty.hpp"
#include "proxy/backend_login.hpp"
#include "proxy/provision.hpp"
#include "proxy/proxy_protocol.hpp"
#include "proxy/daemon.hpp"
#include "proxy/refusal_log.hpp"
#include "proxy/relay.hpp"
#include "proxy/relay_loop.hpp"
#include "proxy/status_server.hpp"
#include "proxy/trigger.hpp"

namespace suction::proxy {

enum class session_phase : std::uint8_t { preauth, login, relay };

// What the daemon may do to a running session (SIGTERM, the idle sweep).
// Touched only on the session's own io thread (`shard`), except id and
// shard; other threads post there (daemon::state::on_session).
struct session_handle {
  std::uint64_t id = 0;
  std::size_t shard = 0;  // which io thread runs it: 0 the caller's, i workers[i - 1]
  std::atomic<session_phase> phase{session_phase::preauth};  // read by stop() on the caller's thread
  imap::tls_stream* client = nullptr;
  relay_control* active_relay = nullptr;  // the Asio relay (TLS) or a relay_loop ticket
  bool swept = false;  // an Asio relay: the daemon's idle sweep watches it (a relay_loop watches its own)
  bool shutting_down = false;
};

struct daemon::state : std::enable_shared_from_this<daemon::state> {
  state(boost::asio::io_context& io, options o, std::shared_ptr<login_trigger> t,
        status_backend* sb)
      : io(io), opt(std::move(o)), trigger(std::move(t)), status(sb), signals(io), grace_timer(io),
        refusal_timer(io), idle_sweep_timer(io), refusals(opt.limits.refusal_log_interval),
        penalty(opt.auth.failure_delay, opt.auth.max_failures, opt.auth.failure_window),
        provision(std::make_shared<provisioner>(opt.auth.provision_command,
                                                opt.auth.provision_timeout)) {}

  boost::asio::io_context& io;  // the caller's: listeners, signals, timers, shard 0's sessions
  options opt;
  // [proxy] threads - 1 more io threads for sessions (shards 1..n-1); their
  // work guards go when the last session after a stop has ended.
  std::vector<std::unique_ptr<boost::asio::io_context>> workers;
  std::vector<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> worker_work;
  std::vector<std::thread> worker_threads;
  std::size_t next_shard = 0;  // the accept loops' round robin (the caller's thread only)
  std::size_t shards() const { return 1 + workers.size(); }
  // The plaintext relays after login, one epoll loop and thread per shard
  // (relay_loop.hpp); made by start(), emptied by ~daemon after the workers.
  std::vector<std::unique_ptr<relay_loop>> relay_loops;
  boost::asio::any_io_executor executor_of(std::size_t shard) const {
    return shard == 0 ? io.get_executor() : workers[shard - 1]->get_executor();
  }
  // Runs f(handle) on the session's own io thread, if it still exists there.
  template <class F>
  void on_session(std::uint64_t id, std::size_t shard, F f);

  std::shared_ptr<login_trigger> trigger;
  status_backend* status = nullptr;
  // The status socket runs on its own io_context and thread: a flood of
  // requests there cannot slow a login or the relay. The server is declared
  // after its io_context, so it goes first; daemon::~daemon joins the thread.
  std::unique_ptr<boost::asio::io_context> status_io;
  std::unique_ptr<status_server> status_socket;
  std::thread status_thread;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

  // Sessions on several io threads share what follows outside the relay
  // path, under `m`: the sessions and per-address counts (limits), the
  // refusal log, the legacy check penalty, the backend's capabilities and
  // the certificate (replaced on SIGHUP). The relay path takes no lock.
  mutable std::mutex m;
  std::shared_ptr<boost::asio::ssl::context> tls() const {
    std::lock_guard lock(m);
    return server_tls;
  }
  imap::capability_set capabilities() const {
    std::lock_guard lock(m);
    return backend_capabilities;
  }
  void set_capabilities(imap::capability_set caps) {
    std::lock_guard lock(m);
    backend_capabilities = std::move(caps);
  }

  std::shared_ptr<boost::asio::ssl::context> server_tls;  // null without a certificate (under m)
  backend_settings backend;
  backend_settings legacy;  // [auth] verify = "legacy" / "new_then_legacy": where passwords are checked
  std::unordered_map<std::string, backend_settings> more_legacy;  // by [legacy_servers] name
  imap::capability_set backend_capabilities;  // pre-login, refreshed on every backend connect (under m)
  imap::parser_limits preauth_limits;
  std::vector<cidr> balancers;  // [listen] proxy_protocol_from

  std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> acceptors;
  boost::asio::signal_set signals;
  boost::asio::steady_timer grace_timer;
  boost::asio::steady_timer refusal_timer;
  boost::asio::steady_timer idle_sweep_timer;  // the Asio relays' idle deadline, swept on each shard

  std::unordered_map<std::uint64_t, session_handle*> sessions;  // under m
  std::unordered_map<std::string, std::uint32_t> per_address;   // under m
  std::size_t swept_relays = 0;  // Asio relays running (under m): the idle sweep runs while any do
  bool sweep_running = false;    // the caller's thread only
  refusal_log refusals;  // under m; flushed at the end of each interval (start_refusal_interval)
  auth_penalty penalty;  // failed checks against legacy (under m)
  std::shared_ptr<provisioner> provision;  // [auth] provision_command, its own threads
  std::atomic<std::uint64_t> next_session{0};
  std::uint64_t session_id_salt = 0;  // set once by start()
  std::atomic<bool> stopping{false};
  std::atomic<bool> grace_over{false};  // after SIGTERM, relays had their time

  // Read by the status socket's thread (daemon::stats()), written here.
  std::atomic<std::uint64_t> logins_ok{0}, logins_failed{0}, backend_errors{0}, active_sessions{0};
  std::atomic<std::uint64_t> backend_unavailable{0}, backend_temporary{0}, preauth_limits_hit{0},
      connections_refused{0}, proxy_protocol_refused{0}, bytes_from_clients{0}, bytes_to_clients{0};

  void session_ended();  // the last one out after a stop ends the daemon (any io thread)
  void finish_stop();    // on the caller's thread, once: timers, signals, the workers' guards
  // The first refusal after a quiet spell (any io thread): at the interval's
  // end the held-back refusals are logged as summary lines.
  void start_refusal_interval();
  // An Asio relay starts or ends (its session's thread): the idle sweep runs
  // only while there are any.
  void swept_relay_started();
  void swept_relay_ended();
  boost::asio::awaitable<void> idle_sweep();
  bool stop_finished = false;
  // From stop() to finish_stop(): the caller's io_context waits for the last
  // session of another io thread to end (it posts finish_stop there).
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> stop_work;
};

template <class F>
void daemon::state::on_session(std::uint64_t id, std::size_t shard, F f) {
  boost::asio::post(executor_of(shard), [self = shared_from_this(), id, f = std::move(f)]() mutable {
    // On the session's thread: it cannot end while this runs.
    session_handle* h = nullptr;
    {
      std::lock_guard lock(self->m);
      auto it = self->sessions.find(id);
      if (it != self->sessions.end()) h = it->second;
    }
    if (h) f(*h);
  });
}

// The coroutine of one client connection, from accept to close.
boost::asio::awaitable<void> run_session(std::shared_ptr<daemon::state> st,
                                         boost::asio::ip::tcp::socket socket, bool implicit_tls,
                                         std::size_t shard);

std::shared_ptr<boost::asio::ssl::context> make_server_tls(const options& opt);

// Where a session coroutine's unexpected exception ends: one error line.
void log_session_failure(std::exception_ptr e);

}  // namespace suction::proxy
