// The proxy's pre-authentication conversation, without I/O: commands in,
// replies and the next action out. The session coroutine does the reading,
// writing, TLS and backend login this asks for. Replies follow Dovecot's
// imap-login word for word, so a client cannot tell the difference.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>

#include "imap/capabilities.hpp"
#include "imap/parser.hpp"

namespace suction::proxy {

struct preauth_settings {
  imap::capability_set backend_capabilities;  // the new server's, before login
  bool starttls_available = false;            // plaintext listener and a certificate
  bool login_requires_tls = false;            // LOGINDISABLED until TLS
  std::uint32_t max_bad_commands = 3;
  std::uint32_t max_login_attempts = 3;
};

// A user name and password, wiped from memory when destroyed.
struct credentials {
  std::string user, password;
  credentials() = default;
  credentials(credentials&&) noexcept = default;
  credentials& operator=(credentials&&) noexcept;
  credentials(const credentials&) = delete;
  credentials& operator=(const credentials&) = delete;
  ~credentials();
  void wipe();
};

class preauth {
 public:
  enum class action : std::uint8_t {
    send,            // write out() and read the next command
    send_and_close,  // write out() and close (LOGOUT, limits)
    start_tls,       // write out(), drop any bytes read after it, TLS handshake, on_tls_started()
    read_auth_line,  // write out() (a "+" continuation) and read one raw line: on_auth_line()
    login,           // log in to the backend with take_credentials(); then on_login_refused() or relay
  };

  preauth(preauth_settings s, bool tls_active);

  std::string greeting() const;
  std::string capabilities() const;  // as advertised now (depends on TLS)

  action on_command(const imap::command& c);
  action on_auth_line(std::string_view line);
  // A command the parser rejected; `recoverable` false means the stream is lost.
  action on_parse_error(std::error_code ec, std::string_view tag, bool recoverable);
  void on_tls_started();
  // The backend said NO: `reply` is its tagged answer, already under the client's tag.
  action on_login_refused(std::string reply);
  // Bytes to write for the last action.
  const std::string& out() const { return out_; }
  // Why the last send_and_close closes: "logout" or the limit that was hit.
  std::string_view close_reason() const { return close_reason_; }
  // Set when the last action answered a limit without closing (e.g. TOOBIG).
  std::string_view limit_hit() const { return limit_hit_; }
  // Set when the last action refused a login without asking the backend
  // (malformed SASL, a NUL, a user name over kMaxUserName): the log's reason.
  std::string_view login_refused() const { return refused_; }
  // Longer names are refused here: Dovecot hangs up on them (which would look
  // like an outage, uncounted), and no log line should carry 64 KiB of one.
  static constexpr std::size_t kMaxUserName = 512;

  credentials take_credentials() { return std::move(creds_); }
  const std::string& login_tag() const { return tag_; }
  const std::string& login_user() const { return user_for_log_; }
  std::string_view mechanism() const { return mechanism_; }  // for logs: "LOGIN", "AUTHENTICATE PLAIN", ...

 private:
  enum class auth_step : std::uint8_t { none, plain_response, login_user, login_password };
  action bad_command(std::string_view tag);
  action reply(std::string text);
  action close_with(std::string text, std::string_view reason);
  action start_login(std::string_view tag, std::string_view mechanism, std::string user,
                     std::string password);
  action plain_response(std::string_view b64);
  // A login we refuse ourselves (as Dovecot's auth would): NO [AUTHENTICATIONFAILED],
  // counted like the backend's refusal; login_refused() says why, for the log.
  action refuse_login(std::string_view user, std::string_view reason);
  bool login_disabled() const { return settings_.login_requires_tls && !tls_active_; }

  preauth_settings settings_;
  bool tls_active_;
  std::uint32_t bad_commands_ = 0;
  std::uint32_t failed_logins_ = 0;
  auth_step step_ = auth_step::none;
  std::string tag_;
  std::string mechanism_;
  std::string user_for_log_;
  credentials creds_;
  std::string out_;
  std::string_view close_reason_;
  std::string_view limit_hit_;
  std::string_view refused_;
};

}  // namespace suction::proxy
