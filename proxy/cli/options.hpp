// config -> options: the one place that turns the configuration file into the
// plain option structs the proxy and the engine take (the composition root).
#pragma once

#include <optional>
#include <string>

#include "config/config.hpp"
#include "proxy/options.hpp"
#include "sync/scheduler.hpp"
#include "sync/user_sync.hpp"

namespace suction::cli {

// A server's address, TLS and timeouts from its config section ([new], [legacy]).
// Loads the configuration, and with `check_files` the files it names, or says
// in one line per problem ("suction: FILE:LINE: [section] key: reason") why not.
std::optional<config::config> load_config(const std::string& path, bool check_files);

sync::server_options to_server(const config::server_section& s);
// The master credentials of [new] or [legacy] (its password file read), or
// none when not configured. Throws config::config_error for a bad file.
imap::master_credentials master_of(const config::config& c, const config::server_section& s,
                                   std::string_view section);

// The engine's options from the config: [legacy], [new], [folders], and
// [sync] batch sizes, connections_per_user (capped by [legacy]
// max_connections) and recent_first_days. `suction sync` uses them too.
sync::user_sync_options sync_options_from(const config::config& c);

// The scheduler's: the engine's plus [sync] state_db, caps, intervals.
sync::scheduler_options scheduler_options_from(const config::config& c);
// [sync] node_name and lease: who this node's runs belong to in a shared store.
sync::store_identity store_identity_from(const config::config& c);

// The proxy daemon's: [listen], [new], [limits], [status].
proxy::options proxy_options_from(const config::config& c);

}  // namespace suction::cli
