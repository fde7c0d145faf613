#include "proxy/verify.hpp"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/spdlog.h>

#include "imap/client/stream.hpp"
#include "imap/log_value.hpp"

namespace suction::proxy {

namespace asio = boost::asio;

namespace {

// What a client is told for a wrong password, whichever server said so.
backend_result refused(std::string reason) {
  backend_result r;
  r.outcome = backend_outcome::refused;
  r.answer.status = imap::status::no;
  r.answer.code = imap::response_code{"AUTHENTICATIONFAILED", {}, {}};
  r.answer.text = "Authentication failed.";
  r.reason = std::move(reason);
  return r;
}

// The client's password under another name (wiped with it).
credentials renamed(const credentials& c, const std::string& user) {
  credentials out;
  out.user = user;
  out.password = c.password;
  return out;
}

backend_result unavailable(std::string reason) {
  backend_result r;
  r.outcome = backend_outcome::unavailable;
  r.reason = std::move(reason);
  return r;
}

// The password checked on legacy, then the new server logged in to as the
// user with the master credentials.
asio::awaitable<backend_result> via_legacy(daemon::state& st, const credentials& creds,
                                           const mapped_login& names, const client_info& client) {
  const auto now = auth_penalty::clock::now();
  // Limited per account: every spelling of one user counts as that user.
  bool allowed = false;
  {
    std::lock_guard lock(st.m);
    allowed = st.penalty.allowed(client.address, names.identity, now);
  }
  if (!allowed) co_return refused("too many failed checks against legacy: not asked");
  // The session's own io thread ([proxy] threads): its backend connections too.
  const auto ex = co_await asio::this_coro::executor;
  const backend_settings* legacy = &st.legacy;
  if (!names.legacy_server.empty()) {
    auto it = st.more_legacy.find(names.legacy_server);
    if (it == st.more_legacy.end())
      co_return unavailable("no legacy server \"" + names.legacy_server + "\" for the user");
    legacy = &it->second;
  }
  const credentials as_legacy = renamed(creds, names.legacy_login);
  backend_result check = co_await backend_login(ex, *legacy, as_legacy, client);
  check.stream.reset();  // only the answer counts: the connection goes
  if (check.outcome == backend_outcome::refused) {
    std::chrono::milliseconds wait{0};
    {
      std::lock_guard lock(st.m);
      wait = st.penalty.failed(client.address, names.identity, auth_penalty::clock::now());
    }
    if (wait.count() > 0) {
      asio::steady_timer t(ex, wait);
      boost::system::error_code ignored;
      co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    co_return refused("legacy " + legacy->display() + ": " + check.reason);
  }
  if (check.outcome != backend_outcome::ok)
    co_return unavailable("legacy " + legacy->display() + ": " + check.reason);
  {
    std::lock_guard lock(st.m);
    st.penalty.succeeded(names.identity);
  }
  const credentials as_new = renamed(creds, names.new_user);
  backend_result r = co_await backend_login(ex, st.backend, as_new, client,
                                            &st.opt.auth.new_master);
  if (r.outcome == backend_outcome::refused) {
    // The password was right: the new server refusing its master login is
    // the admin's to fix ([new] master_*, the user not provisioned), not the user's.
    r.outcome = backend_outcome::unavailable;
    r.reason = "the new server refused the master login: " + r.reason;
  }
  co_return r;
}

}  // namespace

std::string checked_by(const daemon::state& st, const verified_login& v) {
  if (st.opt.auth.verify == verify_mode::fresh) return {};
  return "checked_by=" + v.checked_by + " ";
}

mapped_login names_of(const daemon::state& st, const std::string& login) {
  if (st.opt.map_login) return st.opt.map_login(login);
  return mapped_login{login, login, login, login, login, "", false};
}

asio::awaitable<verified_login> verify_and_login(daemon::state& st, const credentials& creds,
                                                 const mapped_login& names,
                                                 const client_info& client) {
  // One co_await per statement, never inside a braced initializer (GCC 12
  // miscompiles that: imap/client/README.md).
  const verify_mode mode = st.opt.auth.verify;
  const auto ex = co_await asio::this_coro::executor;  // the session's io thread
  verified_login v;
  if (mode != verify_mode::legacy) {
    if (names.new_login == creds.user) {
      v.result = co_await backend_login(ex, st.backend, creds, client);
    } else {
      const credentials as_new = renamed(creds, names.new_login);
      v.result = co_await backend_login(ex, st.backend, as_new, client);
    }
    v.checked_by = "new";
    if (mode == verify_mode::fresh || v.result.outcome != backend_outcome::refused) co_return v;
  }
  v.result = co_await via_legacy(st, creds, names, client);
  v.checked_by = "legacy";
  co_return v;
}

}  // namespace suction::proxy
