// The proxy daemon: listeners, the sessions they start, limits, signals.
// Threading: sessions are coroutines on the caller's io_context, run by one
// thread, so the daemon's state needs no locks; the status socket gets an
// io_context and thread of its own (start() makes them, ~daemon joins).
#pragma once

#include <boost/asio/io_context.hpp>

#include <memory>
#include <stdexcept>

#include "proxy/options.hpp"
#include "proxy/trigger.hpp"

namespace suction::proxy {

// A start-up failure, one line: what, where, why.
class startup_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The proxy's side of the status socket's {"cmd":"status"}.
struct proxy_stats {
  std::int64_t uptime_s = 0;
  std::uint64_t active_sessions = 0, logins_ok = 0, logins_failed = 0, backend_errors = 0;
  // backend_errors by kind: the backend unreachable (connect, TLS, protocol,
  // timeout) or saying NO [UNAVAILABLE] and the like itself.
  std::uint64_t backend_unavailable = 0, backend_temporary = 0;
  std::uint64_t preauth_limits = 0;       // connections closed by a pre-auth limit
  std::uint64_t connections_refused = 0;  // over max_connections / max_connections_per_ip
  std::uint64_t proxy_protocol_refused = 0;
  std::uint64_t bytes_from_clients = 0, bytes_to_clients = 0;  // relayed, sessions ended
};

class status_backend;

class daemon {
 public:
  // `status`, when given, is served on opts.status.socket (if set) from start()
  // to stop().
  daemon(boost::asio::io_context& io, options opts, std::shared_ptr<login_trigger> trigger,
         status_backend* status = nullptr);
  ~daemon();
  // Loads TLS material, binds the listeners, probes the backend, handles
  // SIGTERM/SIGINT (graceful stop) and SIGHUP (reload the certificate).
  // Throws startup_error.
  void start();
  void stop();  // what SIGTERM does
  proxy_stats stats() const;  // on the io_context's thread

  struct state;

 private:
  std::shared_ptr<state> state_;
};

}  // namespace suction::proxy
