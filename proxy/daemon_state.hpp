// The daemon's shared state, seen by the listeners and the sessions. Internal
// to proxy/ (pulls in Asio): include only from proxy .cpp files.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <cstdint>
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
#include "proxy/status_server.hpp"
#include "proxy/trigger.hpp"

namespace suction::proxy {

enum class session_phase : std::uint8_t { preauth, login, relay };

// What the daemon may do to a running session (SIGTERM).
struct session_handle {
  std::uint64_t id = 0;
  session_phase phase = session_phase::preauth;
  imap::tls_stream* client = nullptr;
  relay* active_relay = nullptr;
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

  boost::asio::io_context& io;
  options opt;
  std::shared_ptr<login_trigger> trigger;
  status_backend* status = nullptr;
  // The status socket runs on its own io_context and thread: a flood of
  // requests there cannot slow a login or the relay. The server is declared
  // after its io_context, so it goes first; daemon::~daemon joins the thread.
  std::unique_ptr<boost::asio::io_context> status_io;
  std::unique_ptr<status_server> status_socket;
  std::thread status_thread;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

  std::shared_ptr<boost::asio::ssl::context> server_tls;  // null without a certificate
  backend_settings backend;
  backend_settings legacy;  // [auth] verify = "legacy" / "new_then_legacy": where passwords are checked
  std::unordered_map<std::string, backend_settings> more_legacy;  // by [legacy_servers] name
  imap::capability_set backend_capabilities;  // pre-login, refreshed on every backend connect
  imap::parser_limits preauth_limits;
  std::vector<cidr> balancers;  // [listen] proxy_protocol_from

  std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> acceptors;
  boost::asio::signal_set signals;
  boost::asio::steady_timer grace_timer;
  boost::asio::steady_timer refusal_timer;
  boost::asio::steady_timer idle_sweep_timer;  // the relays' idle deadline

  std::unordered_map<std::uint64_t, session_handle*> sessions;
  std::unordered_map<std::string, std::uint32_t> per_address;
  refusal_log refusals;  // flushed every interval by the daemon
  auth_penalty penalty;  // failed checks against legacy
  std::shared_ptr<provisioner> provision;  // [auth] provision_command, its own threads
  std::uint64_t next_session = 0;
  std::uint64_t session_id_salt = 0;
  bool stopping = false;
  bool grace_over = false;  // after SIGTERM, relays had their time

  // Read by the status socket's thread (daemon::stats()), written here.
  std::atomic<std::uint64_t> logins_ok{0}, logins_failed{0}, backend_errors{0}, active_sessions{0};
  std::atomic<std::uint64_t> backend_unavailable{0}, backend_temporary{0}, preauth_limits_hit{0},
      connections_refused{0}, proxy_protocol_refused{0}, bytes_from_clients{0}, bytes_to_clients{0};

  void session_ended();  // the last one out after a stop ends the daemon
};

// The coroutine of one client connection, from accept to close.
boost::asio::awaitable<void> run_session(std::shared_ptr<daemon::state> st,
                                         boost::asio::ip::tcp::socket socket, bool implicit_tls);

std::shared_ptr<boost::asio::ssl::context> make_server_tls(const options& opt);

// Where a session coroutine's unexpected exception ends: one error line.
void log_session_failure(std::exception_ptr e);

}  // namespace suction::proxy
