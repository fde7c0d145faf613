// Logging a client in to the new server: connect (TLS as configured,
// certificates verified), forward the client's address with ID where the
// backend trusts us, then LOGIN with the client's credentials. On success the
// connection is handed over for the byte relay.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "imap/capabilities.hpp"
#include "imap/client/client.hpp"
#include "proxy/preauth.hpp"

namespace suction::proxy {

struct backend_settings {
  imap::endpoint endpoint;
  std::shared_ptr<boost::asio::ssl::context> tls;  // null for plaintext
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  std::chrono::milliseconds command_timeout{std::chrono::seconds(60)};
  bool forward_client_info = true;
  std::string display() const;  // "host:port" for logs
};

struct client_info {
  std::string address;  // IP, no port
  std::uint16_t port = 0;
  std::string session_id;
};

// How a backend login ended, in the few kinds a client reply depends on
// (after Dovecot's proxy failure kinds).
enum class backend_outcome : std::uint8_t {
  ok,           // logged in: relay
  refused,      // the backend said NO: the client may try again
  unavailable,  // connect, TLS or protocol failure, timeout: NO [UNAVAILABLE]
  temporary,    // the backend said NO [UNAVAILABLE] / [SERVERBUG] / [LIMIT] / [INUSE]: its
                // own trouble, not the password's: its answer goes to the client, uncounted
};

struct backend_result {
  backend_outcome outcome = backend_outcome::unavailable;
  imap::command_result answer;            // the backend's tagged answer (ok, refused)
  imap::capability_set capabilities;      // after login (ok)
  imap::capability_set preauth_capabilities;  // what it offered before login
  std::string reason;                     // for logs (unavailable, refused)
  std::unique_ptr<imap::tls_stream> stream;  // ok: the connection, for the relay
  std::string unparsed;                   // ok: bytes the backend sent after its answer
};

// With `master`, the user `creds.user` is logged in with the master's
// credentials (creds.password is not sent).
boost::asio::awaitable<backend_result> backend_login(boost::asio::any_io_executor ex,
                                                     const backend_settings& settings,
                                                     const credentials& creds,
                                                     const client_info& client,
                                                     const imap::master_credentials* master = nullptr);

// Asks the backend what it offers before login (greeting or CAPABILITY).
boost::asio::awaitable<std::pair<std::error_code, imap::capability_set>> probe_capabilities(
    boost::asio::any_io_executor ex, const backend_settings& settings);

// The tagged line a client gets for a backend answer, under the client's tag.
// On success the capabilities are the backend's post-login ones.
std::string client_answer(std::string_view client_tag, const backend_result& r);

}  // namespace suction::proxy
