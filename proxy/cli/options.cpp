#include "proxy/cli/options.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <thread>

namespace suction::cli {

namespace {

imap::tls_mode engine_tls(config::tls_mode m) {
  switch (m) {
    case config::tls_mode::none: return imap::tls_mode::none;
    case config::tls_mode::starttls: return imap::tls_mode::starttls;
    case config::tls_mode::implicit: return imap::tls_mode::implicit;
  }
  return imap::tls_mode::none;
}

// "" disables a listener; config::load has already checked the form.
std::optional<proxy::listen_address> listen_address(const std::string& value) {
  if (value.empty()) return std::nullopt;
  auto hp = config::split_host_port(value);
  if (!hp) return std::nullopt;
  return proxy::listen_address{hp->host, hp->port, value};
}

// Where the proxy checks a password on a legacy server.
proxy::backend_options checker_of(const config::server_section& s) {
  const sync::server_options legacy = to_server(s);
  proxy::backend_options o;
  o.endpoint = legacy.endpoint;
  o.tls = legacy.tls;
  o.connect_timeout = legacy.connect_timeout;
  o.command_timeout = legacy.command_timeout;
  o.forward_client_info = false;  // legacy does not trust us with ID
  return o;
}

}  // namespace

std::optional<config::config> load_config(const std::string& path, bool check_files) {
  try {
    auto cfg = config::load(path);
    if (!check_files) return cfg;
    auto missing = config::check_files(cfg);
    for (const auto& line : missing) std::fprintf(stderr, "suction: %s\n", line.c_str());
    if (!missing.empty()) return std::nullopt;
    return cfg;
  } catch (const config::config_error& e) {
    std::fprintf(stderr, "suction: %s\n", e.what());
    return std::nullopt;
  }
}

sync::server_options to_server(const config::server_section& s) {
  sync::server_options o;
  o.endpoint = imap::endpoint{s.host, s.port, engine_tls(s.tls)};
  o.tls = imap::tls_settings{s.ca_file, s.verify_certificate};
  o.connect_timeout = s.connect_timeout;
  o.command_timeout = s.command_timeout;
  return o;
}

imap::master_credentials master_of(const config::config& c, const config::server_section& s,
                                   std::string_view section) {
  imap::master_credentials m;
  if (s.master_user.empty()) return m;
  m.user = s.master_user;
  m.password = config::read_password_file(c, section, "master_password_file", s.master_password_file);
  m.separator_form = s.master_login == config::master_login_form::separator;
  m.separator = s.master_separator;
  return m;
}

sync::user_sync_options sync_options_from(const config::config& c) {
  sync::user_sync_options o;
  o.legacy = to_server(c.legacy);
  o.fresh = to_server(c.fresh);
  // The new server may not know the user's password (verify = "legacy"):
  // the engine logs in there with the master credentials too.
  if (c.auth.verify != config::verify_mode::fresh) o.fresh.master = master_of(c, c.fresh, "new");
  for (auto& r : c.folders.rename) o.rules.rename.emplace_back(r.from, r.to);
  o.rules.exclude = c.folders.exclude;
  o.copy.batch_messages = c.sync.batch_messages;
  o.copy.batch_bytes = c.sync.batch_bytes;
  o.connections = std::max<std::uint32_t>(
      1, std::min(c.sync.connections_per_user, c.legacy.max_connections));
  o.recent_first_days = c.sync.recent_first_days;
  o.parallel_min_messages = c.sync.parallel_threshold;
  o.fold_user_case = c.sync.fold_user_case;
  return o;
}

sync::store_identity store_identity_from(const config::config& c) {
  return {c.sync.node_name, static_cast<std::int64_t>(c.sync.lease.count())};
}

sync::scheduler_options scheduler_options_from(const config::config& c) {
  sync::scheduler_options o;
  o.sync = sync_options_from(c);
  // Each job's pairs are capped by its own legacy server's max_connections
  // (the scheduler does it per job), not by [legacy]'s.
  o.sync.connections = std::max<std::uint32_t>(1, c.sync.connections_per_user);
  o.state_db = c.sync.state_db;
  o.store = store_identity_from(c);
  o.max_concurrent_users = c.sync.max_concurrent_users;
  o.legacy_max_connections = c.legacy.max_connections;
  o.resync_interval = c.sync.resync_interval;
  o.credential_ttl = c.sync.credential_ttl;
  // Bulk jobs (suction migrate handing users to the daemon) log in to both
  // servers as master users; login jobs never use legacy's.
  o.sync.legacy.master = master_of(c, c.legacy, "legacy");
  o.bulk_new_master = master_of(c, c.fresh, "new");
  for (const auto& s : c.legacy_servers) {
    sync::legacy_target t{s.name, to_server(s.server), s.server.max_connections};
    t.server.master = master_of(c, s.server, "legacy_servers." + s.name);
    o.more_legacy.push_back(std::move(t));
  }
  o.log = [](const std::string& line) { spdlog::info("{}", line); };
  return o;
}

proxy::options proxy_options_from(const config::config& c) {
  proxy::options o;
  o.origin = c.source.string();
  o.threads = c.proxy.threads != 0 ? c.proxy.threads : std::max(1u, std::thread::hardware_concurrency());
  o.listen.imap = listen_address(c.listen.imap);
  o.listen.imaps = listen_address(c.listen.imaps);
  o.listen.tls_cert = c.listen.tls_cert;
  o.listen.tls_key = c.listen.tls_key;
  o.listen.login_requires_tls = c.listen.login_requires_tls;
  o.listen.proxy_protocol_from = c.listen.proxy_protocol_from;

  const sync::server_options fresh = to_server(c.fresh);
  o.backend.endpoint = fresh.endpoint;
  o.backend.tls = fresh.tls;
  o.backend.connect_timeout = fresh.connect_timeout;
  o.backend.command_timeout = fresh.command_timeout;
  o.backend.forward_client_info = c.fresh.forward_client_info;

  switch (c.auth.verify) {
    case config::verify_mode::fresh: o.auth.verify = proxy::verify_mode::fresh; break;
    case config::verify_mode::legacy: o.auth.verify = proxy::verify_mode::legacy; break;
    case config::verify_mode::fresh_then_legacy:
      o.auth.verify = proxy::verify_mode::fresh_then_legacy;
      break;
  }
  if (o.auth.verify != proxy::verify_mode::fresh) {
    o.auth.legacy = checker_of(c.legacy);
    for (const auto& s : c.legacy_servers) o.auth.more_legacy.emplace_back(s.name, checker_of(s.server));
    o.auth.new_master = master_of(c, c.fresh, "new");
  }
  o.auth.failure_delay = c.auth.failure_delay;
  o.auth.max_failures = c.auth.max_failures;
  o.auth.failure_window = c.auth.failure_window;
  o.auth.provision_command = c.auth.provision_command;
  o.auth.provision_timeout = c.auth.provision_timeout;

  const auto& l = c.limits;
  o.limits.max_line = l.max_line;
  o.limits.max_literal = l.max_literal;
  o.limits.max_bad_commands = l.max_bad_commands;
  o.limits.login_attempts = l.login_attempts;
  o.limits.preauth_idle = l.preauth_idle;
  o.limits.preauth_total = l.preauth_total;
  o.limits.relay_idle = l.relay_idle;
  o.limits.max_connections = l.max_connections;
  o.limits.max_connections_per_ip = l.max_connections_per_ip;
  o.limits.shutdown_grace = l.shutdown_grace;

  o.status.socket = c.status.socket;
  o.status.mode = c.status.mode;
  o.status.group = c.status.group;
  return o;
}

}  // namespace suction::cli
