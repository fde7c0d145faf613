// Where a client's password is checked ([auth] verify, proxy/options.hpp),
// around backend_login: on the new server as a plain proxy; on the legacy
// server, then the new server logged in to with master credentials (the new
// server needs no password for the user); or on the new server first and, if
// it refuses, on legacy. Failed legacy checks go through the auth penalty.
// Internal to proxy/ (daemon state): include only from proxy .cpp files.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <string>

#include "proxy/backend_login.hpp"
#include "proxy/daemon_state.hpp"

namespace suction::proxy {

struct verified_login {
  backend_result result;   // the new server's login (ok), or why not
  std::string checked_by;  // "new" or "legacy", for the log line
};

// "checked_by=legacy " for a login line where passwords may be checked on
// legacy ([auth] verify); "" for a plain proxy, whose lines stay as they were.
std::string checked_by(const daemon::state& st, const verified_login& v);

// The names a login stands for (options::map_login, else the name as typed).
mapped_login names_of(const daemon::state& st, const std::string& login);

// creds.user is the name as typed; `names` says what each server is told.
boost::asio::awaitable<verified_login> verify_and_login(daemon::state& st, const credentials& creds,
                                                        const mapped_login& names,
                                                        const client_info& client);

}  // namespace suction::proxy
