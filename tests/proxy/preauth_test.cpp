// The pre-auth conversation without sockets: what the proxy answers, word for
// word as Dovecot's imap-login (checked against Dovecot 2.3.19 by hand).
#include <doctest/doctest.h>

#include "imap/base64.hpp"
#include "imap/parser.hpp"
#include "proxy/preauth.hpp"

using namespace suction;
using namespace suction::proxy;
using action = preauth::action;

namespace {

const char* kDovecotCaps =
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN "
    "AUTH=CRAM-MD5 AUTH=SCRAM-SHA-256 AUTH=GSSAPI";

preauth_settings settings(bool starttls = true, bool requires_tls = false) {
  preauth_settings s;
  s.backend_capabilities = imap::capability_set::parse(kDovecotCaps);
  s.starttls_available = starttls;
  s.login_requires_tls = requires_tls;
  return s;
}

imap::command parse(std::string_view line) {
  imap::command_parser p;
  auto r = p.feed(line);
  REQUIRE(r.event == imap::parse_event::message);
  return p.command();
}

}  // namespace

TEST_CASE("capabilities: only mechanisms that carry the password, STARTTLS and LOGINDISABLED as configured") {
  preauth plain(settings(), false);
  CHECK(plain.capabilities() ==
        "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN");
  CHECK(plain.greeting() == "* OK [CAPABILITY " + plain.capabilities() + "] IMAP server ready.\r\n");
  preauth tls(settings(), true);
  CHECK(tls.capabilities() == "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN");
  preauth strict(settings(true, true), false);
  CHECK(strict.capabilities() == "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS LOGINDISABLED");
  preauth no_cert(settings(false), false);
  CHECK(no_cert.capabilities().find("STARTTLS") == std::string::npos);
  strict.on_tls_started();
  CHECK(strict.capabilities().find("LOGINDISABLED") == std::string::npos);
  CHECK(strict.capabilities().find("AUTH=PLAIN") != std::string::npos);
}

TEST_CASE("simple commands answer as Dovecot does") {
  preauth p(settings(), false);
  CHECK(p.on_command(parse("a CAPABILITY\r\n")) == action::send);
  CHECK(p.out() == "* CAPABILITY " + p.capabilities() +
                       "\r\na OK Pre-login capabilities listed, post-login capabilities have more.\r\n");
  CHECK(p.on_command(parse("b NOOP\r\n")) == action::send);
  CHECK(p.out() == "b OK NOOP completed.\r\n");
  CHECK(p.on_command(parse("e ID (\"name\" \"x\")\r\n")) == action::send);
  CHECK(p.out() == "* ID NIL\r\ne OK ID completed.\r\n");
  CHECK(p.on_command(parse("r ENABLE CONDSTORE\r\n")) == action::send);
  CHECK(p.out() == "* ENABLED\r\nr OK ENABLE ignored in non-authenticated state.\r\n");
  CHECK(p.on_command(parse("x LOGOUT\r\n")) == action::send_and_close);
  CHECK(p.out() == "* BYE Logging out\r\nx OK Logout completed.\r\n");
  CHECK(p.close_reason() == "logout");
}

TEST_CASE("STARTTLS") {
  preauth p(settings(), false);
  CHECK(p.on_command(parse("m STARTTLS\r\n")) == action::start_tls);
  CHECK(p.out() == "m OK Begin TLS negotiation now.\r\n");
  p.on_tls_started();
  CHECK(p.on_command(parse("n STARTTLS\r\n")) == action::send);
  CHECK(p.out() == "n BAD TLS is already active.\r\n");
  preauth q(settings(false), false);
  CHECK(q.on_command(parse("o STARTTLS\r\n")) == action::send);
  CHECK(q.out() == "o BAD TLS support isn't enabled.\r\n");
}

TEST_CASE("LOGIN hands over the credentials, any characters") {
  preauth p(settings(), false);
  imap::command_parser parser;
  std::string pw = "p\xc3\xa4ss {x} \"q\" \\b";
  std::string in = "a1 LOGIN {5+}\r\nalice {" + std::to_string(pw.size()) + "+}\r\n" + pw + "\r\n";
  REQUIRE(parser.feed(in).event == imap::parse_event::message);
  CHECK(p.on_command(parser.command()) == action::login);
  CHECK(p.login_tag() == "a1");
  CHECK(p.login_user() == "alice");
  CHECK(p.mechanism() == "LOGIN");
  credentials c = p.take_credentials();
  CHECK(c.user == "alice");
  CHECK(c.password == pw);
}

TEST_CASE("LOGINDISABLED refuses plaintext logins until TLS") {
  preauth p(settings(true, true), false);
  CHECK(p.on_command(parse("a LOGIN alice pw\r\n")) == action::send);
  CHECK(p.out() == "a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n");
  CHECK(p.on_command(parse("b AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n")) == action::send);
  CHECK(p.out().starts_with("b NO [PRIVACYREQUIRED]"));
  p.on_tls_started();
  CHECK(p.on_command(parse("c LOGIN alice pw\r\n")) == action::login);
}

TEST_CASE("AUTHENTICATE PLAIN with SASL-IR and with a continuation") {
  std::string ir = imap::base64_encode(std::string("\0alice\0s3 cr\xc3\xa9t", 15));
  preauth p(settings(), false);
  CHECK(p.on_command(parse("a AUTHENTICATE PLAIN " + ir + "\r\n")) == action::login);
  CHECK(p.mechanism() == "AUTHENTICATE PLAIN");
  auto c = p.take_credentials();
  CHECK(c.user == "alice");
  CHECK(c.password == "s3 cr\xc3\xa9t");

  preauth q(settings(), false);
  CHECK(q.on_command(parse("g AUTHENTICATE plain\r\n")) == action::read_auth_line);
  CHECK(q.out() == "+ \r\n");
  CHECK(q.on_auth_line(ir) == action::login);
  CHECK(q.login_tag() == "g");
  CHECK(q.take_credentials().password == "s3 cr\xc3\xa9t");

  preauth authz(settings(), false);
  auto other = imap::base64_encode(std::string("admin\0alice\0pw", 14));
  CHECK(authz.on_command(parse("h AUTHENTICATE PLAIN " + other + "\r\n")) == action::send);
  CHECK(authz.out() == "h NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
  CHECK(authz.on_command(parse("i AUTHENTICATE PLAIN !!!!\r\n")) == action::send);
  CHECK(authz.out() == "i BAD Invalid base64 data in initial response.\r\n");
}

TEST_CASE("NULs: refused in strings like Dovecot, and in SASL fields beyond RFC 4616's") {
  preauth p(settings(), false);
  CHECK(p.on_parse_error(imap::errc::nul_in_string, "a1", true) == action::send);
  CHECK(p.out() == "a1 BAD NULs not allowed in strings.\r\n");
  // A third NUL would hand the backend a password it reads shorter than ours.
  auto extra = imap::base64_encode(std::string("\0bob\0pw\0extra", 15));
  CHECK(p.on_command(parse("a2 AUTHENTICATE PLAIN " + extra + "\r\n")) == action::send);
  CHECK(p.out() == "a2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
  CHECK(p.take_credentials().password.empty());
  preauth q(settings(), false);
  CHECK(q.on_command(parse("b1 AUTHENTICATE LOGIN\r\n")) == action::read_auth_line);
  CHECK(q.on_auth_line(imap::base64_encode(std::string("carol\0a", 7))) == action::send);
  CHECK(q.out() == "b1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
  CHECK(q.on_command(parse("b2 AUTHENTICATE LOGIN YWxpY2U=\r\n")) == action::read_auth_line);
  CHECK(q.on_auth_line(imap::base64_encode(std::string("p\0w", 3))) == action::send);
  CHECK(q.out() == "b2 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
  CHECK(q.login_refused() == "NUL in the password");
  CHECK(q.mechanism() == "AUTHENTICATE LOGIN");
  CHECK(q.login_user() == "alice");
  // Refused here, counted like the backend's NO: the third ends the connection.
  CHECK(q.on_command(parse("b3 AUTHENTICATE PLAIN " + extra + "\r\n")) == action::send_and_close);
  CHECK(q.out() == "b3 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n* BYE Too many failed login attempts.\r\n");
  CHECK(q.login_refused() == "malformed PLAIN response");
  CHECK(q.on_command(parse("b4 NOOP\r\n")) == action::send);
  CHECK(q.login_refused().empty());
  // The BAD counts as a bad command.
  preauth r(settings(), false);
  r.on_parse_error(imap::errc::nul_in_string, "c1", true);
  r.on_parse_error(imap::errc::nul_in_string, "c2", true);
  CHECK(r.on_parse_error(imap::errc::nul_in_string, "c3", true) == action::send_and_close);
}

TEST_CASE("a user name over 512 bytes is refused here, counted, and never reaches the backend") {
  preauth p(settings(), false);
  std::string name(513, 'n');
  CHECK(p.on_command(parse("a LOGIN " + name + " pw\r\n")) == action::send);
  CHECK(p.out() == "a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
  CHECK(p.login_refused() == "user name too long");
  CHECK(p.login_user().size() == 64);  // what the log shows of it
  CHECK(p.on_command(parse("b LOGIN " + std::string(512, 'n') + " pw\r\n")) == action::login);
}

TEST_CASE("AUTHENTICATE LOGIN asks for user name and password") {
  preauth p(settings(), false);
  CHECK(p.on_command(parse("g2 AUTHENTICATE LOGIN\r\n")) == action::read_auth_line);
  CHECK(p.out() == "+ VXNlcm5hbWU6\r\n");
  CHECK(p.on_auth_line("YWxpY2U=") == action::read_auth_line);
  CHECK(p.out() == "+ UGFzc3dvcmQ6\r\n");
  CHECK(p.on_auth_line(imap::base64_encode("pw")) == action::login);
  auto c = p.take_credentials();
  CHECK(c.user == "alice");
  CHECK(c.password == "pw");
  // With an initial response (the user name), only the password is asked for.
  preauth q(settings(), false);
  CHECK(q.on_command(parse("g3 AUTHENTICATE LOGIN YWxpY2U=\r\n")) == action::read_auth_line);
  CHECK(q.out() == "+ UGFzc3dvcmQ6\r\n");
}

TEST_CASE("AUTHENTICATE: abort, unsupported mechanisms") {
  preauth p(settings(), false);
  CHECK(p.on_command(parse("g AUTHENTICATE PLAIN\r\n")) == action::read_auth_line);
  CHECK(p.on_auth_line("*") == action::send);
  CHECK(p.out() == "g BAD Authentication aborted by client.\r\n");
  CHECK(p.on_command(parse("f AUTHENTICATE CRAM-MD5\r\n")) == action::send);
  CHECK(p.out() == "f NO [ALERT] Unsupported authentication mechanism.\r\n");
}

TEST_CASE("bad commands: BAD, then BYE at the limit") {
  preauth p(settings(), false);
  CHECK(p.on_command(parse("c SELECT INBOX\r\n")) == action::send);
  CHECK(p.out() == "c BAD Error in IMAP command received by server.\r\n");
  CHECK(p.on_parse_error(imap::errc::syntax, "", true) == action::send);
  CHECK(p.out() == "* BAD Error in IMAP command received by server.\r\n");
  CHECK(p.on_command(parse("s LOGIN a\r\n")) == action::send_and_close);
  CHECK(p.out() == "* BYE Too many invalid IMAP commands.\r\n");
  CHECK(p.close_reason() == "too many invalid commands");
}

TEST_CASE("limits the parser cannot recover from close the connection") {
  preauth p(settings(), false);
  CHECK(p.on_parse_error(imap::errc::line_too_long, "", false) == action::send_and_close);
  CHECK(p.out() == "* BYE Too long command line.\r\n");
  CHECK(p.close_reason() == "line too long");
  preauth q(settings(), false);
  CHECK(q.on_parse_error(imap::errc::literal_too_large, "a", true) == action::send);
  CHECK(q.out() == "a NO [TOOBIG] Literal too large.\r\n");
  CHECK(q.limit_hit() == "literal too large");
}

TEST_CASE("failed logins: the backend's answer, then BYE after the configured attempts") {
  preauth p(settings(), false);
  for (int i = 1; i <= 3; ++i) {
    CAPTURE(i);
    CHECK(p.on_command(parse("h LOGIN alice wrong\r\n")) == action::login);
    auto next = p.on_login_refused("h NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
    if (i < 3) {
      CHECK(next == action::send);
      CHECK(p.out() == "h NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
    } else {
      CHECK(next == action::send_and_close);
      CHECK(p.out() == "h NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
                       "* BYE Too many failed login attempts.\r\n");
      CHECK(p.close_reason() == "too many failed logins");
    }
  }
}

TEST_CASE("credentials are wiped") {
  credentials c;
  c.user = "alice";
  c.password = "secret";
  c.wipe();
  CHECK(c.user.empty());
  CHECK(c.password.empty());
}
