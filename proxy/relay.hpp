// The byte relay after login when a side speaks TLS, on Asio (the plaintext
// relay is relay_loop's): both directions, no parsing. The idle deadline is
// the daemon's: one sweep over all relays (last_activity()) instead of a
// timer and a watchdog coroutine per session, which cost 3 KiB each.
// The backend closing closes the client; the client's FIN is passed on to the
// backend, whose answers are still relayed until it closes (half-close).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>
#include <string>

#include "proxy/relay_control.hpp"

namespace suction::imap {
class tls_stream;
}

namespace suction::proxy {

class relay : public relay_control {
 public:
  relay(imap::tls_stream& client, imap::tls_stream& backend);
  // `to_backend_first` / `to_client_first`: bytes already read on each side
  // (commands the client pipelined after LOGIN, data the backend sent early).
  boost::asio::awaitable<relay_result> run(std::string to_backend_first,
                                           std::string to_client_first);
  void stop(std::string reason) override;
  std::chrono::steady_clock::time_point last_activity() const override { return last_activity_; }

 private:
  boost::asio::awaitable<void> pump(imap::tls_stream& from, imap::tls_stream& to,
                                    std::string first, std::uint64_t& counter,
                                    const char* from_name);
  boost::asio::awaitable<bool> copy_burst(imap::tls_stream& from, imap::tls_stream& to, std::uint64_t& counter,
                                          boost::system::error_code& ec);
  void end(std::string reason);
  void half_close();
  static bool is_clean_eof(const boost::system::error_code& ec);

  imap::tls_stream& client_;
  imap::tls_stream& backend_;
  std::chrono::steady_clock::time_point last_activity_;
  relay_result result_;
};

}  // namespace suction::proxy
