// The proxy daemon: listeners, the sessions they start, limits, signals.
// Threading: one io_context run by one thread; sessions are coroutines on it,
// so the daemon's state needs no locks.
#pragma once

#include <boost/asio/io_context.hpp>

#include <memory>
#include <stdexcept>

#include "config/config.hpp"
#include "proxy/trigger.hpp"

namespace suction::proxy {

// A start-up failure, one line: what, where, why.
class startup_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class daemon {
 public:
  daemon(boost::asio::io_context& io, config::config cfg, std::unique_ptr<login_trigger> trigger);
  ~daemon();
  // Loads TLS material, binds the listeners, probes the backend, handles
  // SIGTERM/SIGINT (graceful stop) and SIGHUP (reload the certificate).
  // Throws startup_error.
  void start();
  void stop();  // what SIGTERM does

  struct state;

 private:
  std::shared_ptr<state> state_;
};

}  // namespace suction::proxy
