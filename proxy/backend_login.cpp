#include "proxy/backend_login.hpp"

#include "imap/client/stream.hpp"
#include "imap/serialize.hpp"

namespace suction::proxy {

namespace asio = boost::asio;

std::string backend_settings::display() const { return imap::display(endpoint); }

namespace {

imap::client_options options_for(const backend_settings& s) {
  imap::client_options o;
  o.connect_timeout = s.connect_timeout;
  o.command_timeout = s.command_timeout;
  o.read_buffer_size = 16 * 1024;
  return o;
}

std::string id_command(const std::string& tag, const client_info& c) {
  std::string cmd = tag + " ID (";
  imap::append_quoted(cmd, "x-originating-ip");
  cmd += ' ';
  imap::append_quoted(cmd, c.address);
  cmd += ' ';
  imap::append_quoted(cmd, "x-originating-port");
  cmd += ' ';
  imap::append_quoted(cmd, std::to_string(c.port));
  cmd += ' ';
  imap::append_quoted(cmd, "x-session-id");
  cmd += ' ';
  imap::append_quoted(cmd, c.session_id);
  cmd += ")\r\n";
  return cmd;
}

}  // namespace

asio::awaitable<std::pair<std::error_code, imap::capability_set>> probe_capabilities(
    asio::any_io_executor ex, const backend_settings& settings) {
  imap::client c(ex, options_for(settings));
  auto ec = co_await c.connect(settings.endpoint, settings.tls);
  imap::capability_set caps = c.capabilities();
  if (!ec) co_await c.logout();
  co_return std::pair{ec, caps};
}

asio::awaitable<backend_result> backend_login(asio::any_io_executor ex,
                                              const backend_settings& settings,
                                              const credentials& creds,
                                              const client_info& client,
                                              const imap::master_credentials* master) {
  backend_result r;
  imap::client c(ex, options_for(settings));
  if (auto ec = co_await c.connect(settings.endpoint, settings.tls)) {
    r.reason = "connect: " + ec.message();
    co_return r;
  }
  r.preauth_capabilities = c.capabilities();
  // ID goes out pipelined with the LOGIN behind it, in the same write: one
  // round trip and one packet less per login. Its answer (OK, or a NO we
  // ignore) arrives before LOGIN's.
  std::string id_tag;
  if (settings.forward_client_info && c.capabilities().has("ID")) {
    id_tag = c.next_tag();
    c.send_with_next(id_tag, id_command(id_tag, client));
  }
  std::error_code ec;
  // LOGIN carries any password; AUTHENTICATE PLAIN where the backend refuses LOGIN.
  if (master)
    ec = co_await c.login_as(creds.user, *master, &r.answer);
  else if (c.capabilities().has("LOGINDISABLED"))
    ec = co_await c.authenticate_plain(creds.user, creds.password, {}, &r.answer);
  else
    ec = co_await c.login(creds.user, creds.password, &r.answer);
  if (ec == imap::errc::auth_failed || ec == imap::errc::command_bad) {
    r.outcome = imap::login_tempfail(r.answer) ? backend_outcome::temporary : backend_outcome::refused;
    r.reason = r.answer.code ? "[" + r.answer.code->name + "] " + r.answer.text : r.answer.text;
    co_return r;
  }
  if (ec) {
    r.reason = "login: " + ec.message();
    co_return r;
  }
  if (!id_tag.empty()) {
    imap::command_result ignored;  // completed before LOGIN's answer: no wait
    if (auto id_ec = co_await c.wait(id_tag, ignored)) {
      r.reason = "ID: " + id_ec.message();
      co_return r;
    }
  }
  r.outcome = backend_outcome::ok;
  r.capabilities = c.capabilities();
  r.stream = c.detach(r.unparsed);
  co_return r;
}

std::string client_answer(std::string_view client_tag, const backend_result& r) {
  std::string out(client_tag);
  switch (r.answer.status) {
    case imap::status::ok: out += " OK"; break;
    case imap::status::no: out += " NO"; break;
    default: out += " BAD"; break;
  }
  if (r.outcome == backend_outcome::ok) {
    // Clients may cache these: always the post-login list.
    out += " [CAPABILITY " + r.capabilities.to_string() + "]";
  } else if (r.answer.code) {
    out += " [" + r.answer.code->name;
    if (!r.answer.code->raw_args.empty()) out += " " + r.answer.code->raw_args;
    out += "]";
  }
  out += " ";
  out += r.answer.text.empty() ? std::string(r.outcome == backend_outcome::ok ? "Logged in" : "Authentication failed.")
                               : r.answer.text;
  out += "\r\n";
  return out;
}

}  // namespace suction::proxy
