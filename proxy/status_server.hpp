// The status socket (issue 5): a Unix socket speaking JSON lines, through which
// operators watch the proxy and the migration and steer the scheduler.
// `suction status` (status_command.hpp) is its client.
//
// Protocol: one JSON object per line in, one compact JSON object per line out,
// as many requests per connection as the client likes, answered in order:
//   {"cmd":"status"}                  -> status_backend::status()
//   {"cmd":"users"}                   -> status_backend::users()
//   {"cmd":"user","user":"alice"}     -> status_backend::user(), or {"error":"unknown user"}
//   {"cmd":"resync","user":"alice"}   -> {"ok":true} or {"error":"..."}
//   {"cmd":"enqueue","user":"alice"}  -> {"ok":true} or {"error":"..."}: a user who may
//                                        never log in, migrated behind the logins
//   {"cmd":"pause"|"resume"|"drain"}  -> {"ok":true}
// A bad request gets {"error":"..."} and the connection goes on. A request line
// longer than the limit gets {"error":"request too long"} and the connection is
// closed. Answers never echo a request back (at most its sanitized cmd name).
// A request nested deeper than one object is refused before it is parsed.
#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace boost::asio {
class io_context;
}

namespace suction::proxy {

// What the status socket reports and steers. The daemon implements it over its
// counters and the migration scheduler. Called on the status server's
// io_context thread (the daemon gives it a thread of its own): thread-safe.
class status_backend {
 public:
  virtual ~status_backend() = default;
  virtual nlohmann::json status() = 0;                                    // {"proxy":{...},"migration":{...}}
  virtual nlohmann::json users() = 0;                                     // {"users":[...]}
  virtual std::optional<nlohmann::json> user(std::string_view name) = 0;  // nullopt: unknown user
  virtual std::string resync(std::string_view name) = 0;                  // "" = queued; else the error text
  virtual std::string enqueue(std::string_view login) = 0;                // "" = queued; else why not
  virtual void pause() = 0;
  virtual void resume() = 0;
  virtual void drain() = 0;
};

// The socket's limits. The defaults are the daemon's; tests shrink them.
struct status_limits {
  std::size_t max_line = 8 * 1024;               // bytes of one request, without its "\n"
  std::chrono::milliseconds idle{60'000};        // a connection with no request for this long is closed
  std::size_t max_connections = 64;              // more at once are closed as soon as accepted;
                                                 // the last one is kept for root and the daemon's user
};

// Answers one request line (without its "\n"): the protocol without the socket.
// Never throws; a backend exception becomes {"error":"internal error: ..."}.
nlohmann::json answer_status_request(status_backend& backend, std::string_view line);

class status_server {
 public:
  // Binds the Unix socket at `path`: creates the parent directory if missing
  // (0755), removes a stale socket file first but refuses when a live daemon
  // answers on it or when the path exists and is not a socket; chmod to
  // `mode`, chgrp to `group` if non-empty. Connections are refused until it
  // listens, after chmod and chgrp. Throws startup_error (daemon.hpp), one
  // line naming the path.
  status_server(boost::asio::io_context& io, std::string path, std::uint32_t mode, std::string group,
                status_backend& backend, status_limits limits = {});
  ~status_server();  // stop()
  status_server(const status_server&) = delete;
  status_server& operator=(const status_server&) = delete;

  // Begins accepting: a coroutine per connection on the io_context.
  void start();
  // Closes the acceptor and every connection and unlinks the socket file (if
  // it is still ours). Call on the io_context's thread or while it is not running.
  void stop();


  struct impl;

 private:
  std::shared_ptr<impl> impl_;
};

}  // namespace suction::proxy
