#include "proxy/preauth.hpp"

#include "imap/base64.hpp"
#include "imap/client/secure_wipe.hpp"
#include "imap/value.hpp"

namespace suction::proxy {
namespace {

constexpr std::string_view kBadCommand = "BAD Error in IMAP command received by server.";
constexpr std::string_view kPrivacyRequired =
    "NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) "
    "connections.";

std::string tagged(std::string_view tag, std::string_view rest) {
  std::string out;
  out.reserve(tag.size() + rest.size() + 3);
  out.append(tag).append(" ").append(rest).append("\r\n");
  return out;
}

// Mechanisms that carry the password, which is what the backend login needs.
bool is_password_mechanism(std::string_view m) {
  return imap::iequals(m, "PLAIN") || imap::iequals(m, "LOGIN");
}

}  // namespace

credentials& credentials::operator=(credentials&& o) noexcept {
  if (this != &o) {
    wipe();
    user = std::move(o.user);
    password = std::move(o.password);
  }
  return *this;
}

credentials::~credentials() { wipe(); }

void credentials::wipe() {
  imap::secure_wipe(user);
  imap::secure_wipe(password);
}

preauth::preauth(preauth_settings s, bool tls_active)
    : settings_(std::move(s)), tls_active_(tls_active) {}

std::string preauth::capabilities() const {
  std::string out;
  auto add = [&](std::string_view c) {
    if (!out.empty()) out += ' ';
    out += c;
  };
  bool has_sasl_ir = false;
  for (const auto& c : settings_.backend_capabilities.atoms()) {
    // Authentication is the proxy's to advertise: it needs the password itself.
    if (c.size() > 5 && imap::iequals(std::string_view(c).substr(0, 5), "AUTH=")) continue;
    if (imap::iequals(c, "STARTTLS") || imap::iequals(c, "LOGINDISABLED")) continue;
    has_sasl_ir = has_sasl_ir || imap::iequals(c, "SASL-IR");
    add(c);
  }
  if (!settings_.backend_capabilities.has("IMAP4rev1")) out = "IMAP4rev1" + (out.empty() ? "" : " " + out);
  if (!has_sasl_ir) add("SASL-IR");
  if (settings_.starttls_available && !tls_active_) add("STARTTLS");
  if (login_disabled()) {
    add("LOGINDISABLED");
  } else {
    add("AUTH=PLAIN");
    add("AUTH=LOGIN");
  }
  return out;
}

std::string preauth::greeting() const {
  return "* OK [CAPABILITY " + capabilities() + "] IMAP server ready.\r\n";
}

preauth::action preauth::reply(std::string text) {
  out_ = std::move(text);
  return action::send;
}

preauth::action preauth::close_with(std::string text, std::string_view reason) {
  out_ = std::move(text);
  close_reason_ = reason;
  return action::send_and_close;
}

preauth::action preauth::bad_command(std::string_view tag) {
  if (++bad_commands_ >= settings_.max_bad_commands)
    return close_with("* BYE Too many invalid IMAP commands.\r\n", "too many invalid commands");
  return reply(tagged(tag.empty() ? "*" : tag, kBadCommand));
}

preauth::action preauth::on_parse_error(std::error_code ec, std::string_view tag,
                                        bool recoverable) {
  limit_hit_ = {};
  if (!recoverable) {
    if (ec == imap::errc::line_too_long)
      return close_with("* BYE Too long command line.\r\n", "line too long");
    return close_with("* BYE Too long argument.\r\n", "literal too large");
  }
  if (ec == imap::errc::nul_in_string) {
    if (++bad_commands_ >= settings_.max_bad_commands)
      return close_with("* BYE Too many invalid IMAP commands.\r\n", "too many invalid commands");
    return reply(tagged(tag.empty() ? "*" : tag, "BAD NULs not allowed in strings."));
  }
  if (ec == imap::errc::literal_too_large && !tag.empty()) {
    if (++bad_commands_ >= settings_.max_bad_commands) return bad_command(tag);
    limit_hit_ = "literal too large";
    return reply(tagged(tag, "NO [TOOBIG] Literal too large."));
  }
  return bad_command(tag);
}

preauth::action preauth::on_command(const imap::command& c) {
  refused_ = {};
  const auto& name = c.name;
  const auto& args = c.args;
  if (name == "CAPABILITY") {
    return reply("* CAPABILITY " + capabilities() + "\r\n" +
                 tagged(c.tag, "OK Pre-login capabilities listed, post-login capabilities have more."));
  }
  if (name == "NOOP") return reply(tagged(c.tag, "OK NOOP completed."));
  if (name == "LOGOUT") return close_with("* BYE Logging out\r\n" + tagged(c.tag, "OK Logout completed."), "logout");
  if (name == "ID") return reply("* ID NIL\r\n" + tagged(c.tag, "OK ID completed."));
  if (name == "ENABLE")
    return reply("* ENABLED\r\n" + tagged(c.tag, "OK ENABLE ignored in non-authenticated state."));
  if (name == "STARTTLS") {
    if (tls_active_) return reply(tagged(c.tag, "BAD TLS is already active."));
    if (!settings_.starttls_available) return reply(tagged(c.tag, "BAD TLS support isn't enabled."));
    out_ = tagged(c.tag, "OK Begin TLS negotiation now.");
    return action::start_tls;
  }
  if (name == "LOGIN") {
    if (args.size() != 2 || !args[0].is_text() || !args[1].is_text()) return bad_command(c.tag);
    if (login_disabled()) return reply(tagged(c.tag, kPrivacyRequired));
    return start_login(c.tag, "LOGIN", args[0].text, args[1].text);
  }
  if (name == "AUTHENTICATE") {
    if (args.empty() || args.size() > 2 || !args[0].is_atom()) return bad_command(c.tag);
    const std::string& mech = args[0].text;
    if (!is_password_mechanism(mech))
      return reply(tagged(c.tag, "NO [ALERT] Unsupported authentication mechanism."));
    if (login_disabled()) return reply(tagged(c.tag, kPrivacyRequired));
    tag_ = c.tag;
    bool plain = imap::iequals(mech, "PLAIN");
    if (args.size() == 2) {  // SASL-IR
      if (plain) return plain_response(args[1].text);
      auto user = imap::base64_decode(args[1].text == "=" ? std::string() : args[1].text);
      if (!user) return reply(tagged(c.tag, "BAD Invalid base64 data in initial response."));
      mechanism_ = "AUTHENTICATE LOGIN";
      if (user->find('\0') != std::string::npos) return refuse_login(*user, "NUL in the user name");
      creds_.user = std::move(*user);
      step_ = auth_step::login_password;
      out_ = "+ UGFzc3dvcmQ6\r\n";  // "Password:"
      return action::read_auth_line;
    }
    step_ = plain ? auth_step::plain_response : auth_step::login_user;
    out_ = plain ? "+ \r\n" : "+ VXNlcm5hbWU6\r\n";  // "Username:"
    return action::read_auth_line;
  }
  return bad_command(c.tag);
}

preauth::action preauth::on_auth_line(std::string_view line) {
  refused_ = {};
  auth_step step = step_;
  step_ = auth_step::none;
  if (line == "*") {
    creds_.wipe();
    return reply(tagged(tag_, "BAD Authentication aborted by client."));
  }
  switch (step) {
    case auth_step::plain_response:
      return plain_response(line);
    case auth_step::login_user: {
      auto user = imap::base64_decode(line);
      if (!user) return reply(tagged(tag_, "BAD Invalid base64 data in continued response."));
      mechanism_ = "AUTHENTICATE LOGIN";
      if (user->find('\0') != std::string::npos) return refuse_login(*user, "NUL in the user name");
      creds_.user = std::move(*user);
      step_ = auth_step::login_password;
      out_ = "+ UGFzc3dvcmQ6\r\n";
      return action::read_auth_line;
    }
    case auth_step::login_password: {
      auto password = imap::base64_decode(line);
      if (!password) {
        creds_.wipe();
        return reply(tagged(tag_, "BAD Invalid base64 data in continued response."));
      }
      if (password->find('\0') != std::string::npos) {
        imap::secure_wipe(*password);
        std::string user = std::move(creds_.user);
        return refuse_login(user, "NUL in the password");
      }
      std::string user = std::move(creds_.user);
      return start_login(tag_, "AUTHENTICATE LOGIN", std::move(user), std::move(*password));
    }
    case auth_step::none:
      break;
  }
  return bad_command("");
}

preauth::action preauth::plain_response(std::string_view b64) {
  auto decoded = imap::base64_decode(b64 == "=" ? std::string_view() : b64);
  if (!decoded) return reply(tagged(tag_, "BAD Invalid base64 data in initial response."));
  // authzid NUL authcid NUL password
  std::string& d = *decoded;
  auto first = d.find('\0');
  auto second = first == std::string::npos ? std::string::npos : d.find('\0', first + 1);
  // Exactly two NULs (RFC 4616): "\0bob\0pw\0extra" is refused like Dovecot's
  // mech-plain does, not passed on with a password the backend reads shorter.
  mechanism_ = "AUTHENTICATE PLAIN";
  if (second == std::string::npos || d.find('\0', second + 1) != std::string::npos) {
    imap::secure_wipe(d);
    return refuse_login("", "malformed PLAIN response");
  }
  std::string authzid = d.substr(0, first);
  std::string user = d.substr(first + 1, second - first - 1);
  std::string password = d.substr(second + 1);
  imap::secure_wipe(d);
  // Logging in as someone else (a master user) is not something a proxy in
  // front of one account may pass on.
  if (!authzid.empty() && authzid != user) {
    imap::secure_wipe(password);
    return refuse_login(user, "authorization identity differs from the user");
  }
  return start_login(tag_, "AUTHENTICATE PLAIN", std::move(user), std::move(password));
}

preauth::action preauth::refuse_login(std::string_view user, std::string_view reason) {
  creds_.wipe();
  user_for_log_ = user;
  refused_ = reason;
  return on_login_refused(tagged(tag_, "NO [AUTHENTICATIONFAILED] Authentication failed."));
}

preauth::action preauth::start_login(std::string_view tag, std::string_view mechanism,
                                     std::string user, std::string password) {
  tag_ = tag;
  mechanism_ = mechanism;
  if (user.size() > kMaxUserName) {
    imap::secure_wipe(password);
    return refuse_login(std::string_view(user).substr(0, 64), "user name too long");
  }
  user_for_log_ = user;
  creds_.wipe();
  creds_.user = std::move(user);
  creds_.password = std::move(password);
  out_.clear();
  return action::login;
}

void preauth::on_tls_started() { tls_active_ = true; }

preauth::action preauth::on_login_refused(std::string reply_line) {
  if (++failed_logins_ >= settings_.max_login_attempts)
    return close_with(std::move(reply_line) + "* BYE Too many failed login attempts.\r\n",
                      "too many failed logins");
  return reply(std::move(reply_line));
}

}  // namespace suction::proxy
