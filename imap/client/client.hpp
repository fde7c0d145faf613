// An IMAP client as C++20 coroutines over Asio: plain, implicit TLS or
// STARTTLS; pipelined commands with tag correlation; untagged responses routed
// to the oldest command in flight; literals streamed both ways; a deadline on
// connect and on every command. Expected failures are std::error_code values
// (imap::errc or the system's), never exceptions.
//
// One coroutine at a time drives a client (no concurrent operations on one
// object). Heavy Asio and OpenSSL headers stay in client.cpp.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "imap/capabilities.hpp"
#include "imap/errc.hpp"
#include "imap/parser.hpp"

namespace boost::asio::ssl {
class context;
}

namespace suction::imap {

class tls_stream;  // imap/client/stream.hpp

template <class T>
using awaitable = boost::asio::awaitable<T>;

enum class tls_mode : std::uint8_t { none, starttls, implicit };

struct endpoint {
  std::string host;
  std::uint16_t port = 143;
  tls_mode tls = tls_mode::none;
};
std::string display(const endpoint& e);  // "host:port", for logs and messages

// Logging in as a user with a master user's credentials, where the server
// allows it: AUTHENTICATE PLAIN with authzid = the user and authcid = the
// master (RFC 4616; Dovecot, Cyrus, Stalwart), or LOGIN "user<sep>master"
// (Dovecot's auth_master_user_separator). The password is wiped with it.
struct master_credentials {
  std::string user;  // "" = none configured
  std::string password;
  bool separator_form = false;
  std::string separator = "*";
  master_credentials() = default;
  master_credentials(const master_credentials&) = default;
  master_credentials& operator=(const master_credentials&) = default;
  ~master_credentials();
  bool configured() const { return !user.empty(); }
};

// Verification is on by default; ca_file "" means the system's store.
struct tls_settings {
  std::string ca_file;
  bool verify = true;
};

// Building an OpenSSL context reads the CA store: make one per configured
// server and share it between connections. Errors name the CA file.
std::shared_ptr<boost::asio::ssl::context> make_client_tls_context(const tls_settings& s,
                                                                   std::error_code& ec);

struct client_options {
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(15)};
  std::chrono::milliseconds command_timeout{std::chrono::seconds(120)};
  parser_limits limits{};
  std::size_t read_buffer_size = 64 * 1024;
  bool use_literal_plus = true;  // false: synchronizing literals even where LITERAL+ is offered
};

// The outcome of one command: its tagged status and, unless a handler took
// them, the untagged responses that arrived while it ran.
struct command_result {
  imap::status status = status::none;
  std::optional<response_code> code;
  std::string text;
  std::vector<response> untagged;
};

// Receives what arrives for one command. Streamed literals (larger than
// limits.inline_literal_max) come as begin/data/end before the response that
// holds them; a data chunk is valid only during the call.
class response_handler {
 public:
  virtual ~response_handler() = default;
  virtual awaitable<void> on_response(response& r);
  virtual awaitable<void> on_literal_begin(const literal_info& info);
  virtual awaitable<void> on_literal_data(std::string_view chunk);
  virtual awaitable<void> on_literal_end();
};

// Supplies the bytes of a literal the client streams (APPEND).
class literal_source {
 public:
  virtual ~literal_source() = default;
  // The next bytes, or an empty view once all of them were given.
  virtual awaitable<std::string_view> next() = 0;
};

class string_source final : public literal_source {
 public:
  explicit string_source(std::string_view s) : data_(s) {}
  awaitable<std::string_view> next() override;
 private:
  std::string_view data_;
};

struct append_item {
  std::vector<std::string> flags;  // \Recent is never sent
  std::string internaldate;        // "" = let the server choose
  std::uint64_t size = 0;
  literal_source* body = nullptr;
};

class client {
 public:
  explicit client(boost::asio::any_io_executor ex, client_options opts = {});
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  // Connects, does TLS as the endpoint says, reads the greeting and the
  // capabilities (asked again after STARTTLS). tls may be null for tls_mode::none.
  awaitable<std::error_code> connect(endpoint ep,
                                     std::shared_ptr<boost::asio::ssl::context> tls);

  const capability_set& capabilities() const;
  const response& greeting() const;
  bool tls_active() const;
  awaitable<std::error_code> refresh_capabilities();

  // LOGIN (strings as atom, quoted or literal as needed). A NO is errc::auth_failed.
  // `result`, if given, receives the server's tagged answer (code and text).
  awaitable<std::error_code> login(std::string_view user, std::string_view password,
                                   command_result* result = nullptr);
  // `user` logged in with master credentials (master_credentials); a NO is
  // errc::auth_failed like login().
  awaitable<std::error_code> login_as(std::string_view user, const master_credentials& master,
                                      command_result* result = nullptr);
  // AUTHENTICATE PLAIN, with SASL-IR where the server offers it.
  awaitable<std::error_code> authenticate_plain(std::string_view user, std::string_view password,
                                                std::string_view authzid = {},
                                                command_result* result = nullptr);

  // A tag for the next command; build it with imap::command_builder.
  std::string next_tag();
  // Sends a command's parts (waiting for "+" between parts as synchronizing
  // literals require) without waiting for its completion: pipelining.
  awaitable<std::error_code> send(std::string tag, std::vector<std::string> parts,
                                  response_handler* handler = nullptr);
  // A one-line command (its CRLF included) that goes out in the same write
  // as the next command sent, after it is registered: pipelining without a
  // packet of its own.
  void send_with_next(std::string tag, std::string line);
  // Reads until the command with this tag completes.
  awaitable<std::error_code> wait(std::string_view tag, command_result& out);
  // send + wait. A tagged NO/BAD is not an error here: look at out.status.
  awaitable<std::error_code> execute(std::string tag, std::vector<std::string> parts,
                                     command_result& out, response_handler* handler = nullptr);
  // Convenience: a command without arguments that need quoting ("NOOP", "LIST \"\" *").
  awaitable<std::error_code> simple(std::string_view text, command_result& out,
                                    response_handler* handler = nullptr);

  // A command whose argument is a mailbox (SELECT, EXAMINE, CREATE, DELETE,
  // SUBSCRIBE, STATUS ...): the name, given in UTF-8, is encoded and quoted as
  // needed; `tail` follows it as is, e.g. "(MESSAGES UIDNEXT)". A name that is
  // not valid UTF-8 is errc::bad_mailbox_name. A NO/BAD is in out.status.
  awaitable<std::error_code> mailbox_command(std::string_view head, std::string_view mailbox_utf8,
                                             command_result& out, std::string_view tail = {});

  // APPEND, or MULTIAPPEND when items holds more than one message; literal
  // bodies are streamed from their sources, never held whole.
  awaitable<std::error_code> append(std::string_view mailbox_utf8, std::span<append_item> items,
                                    command_result& out);

  awaitable<std::error_code> logout();
  void close();

  // Hands the connection over to a byte relay: returns the transport and puts
  // into `unparsed` the bytes already received but not yet parsed. The client
  // is unusable afterwards.
  std::unique_ptr<tls_stream> detach(std::string& unparsed);

 private:
  struct impl;
  friend class deadline_scope;
  std::shared_ptr<impl> impl_;
};

// A command's tagged outcome as an error code: OK -> {}, NO -> command_no, BAD -> command_bad.
std::error_code status_error(const command_result& r);

// A NO to LOGIN or AUTHENTICATE that says the server, not the credentials, is
// at fault: RFC 5530's [UNAVAILABLE], [SERVERBUG], [LIMIT], [INUSE] (Dovecot's
// imap-proxy auth_resp_code_is_tempfail), and Courier-IMAP's per-address
// limit, which answers "Maximum connection count exceeded" without a code.
// The proxy passes such an answer on uncounted; the engine retries it.
bool login_tempfail(const command_result& answer);

}  // namespace suction::imap
