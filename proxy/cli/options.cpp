#include "proxy/cli/options.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>

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

}  // namespace

sync::server_options to_server(const config::server_section& s) {
  sync::server_options o;
  o.endpoint = imap::endpoint{s.host, s.port, engine_tls(s.tls)};
  o.tls = imap::tls_settings{s.ca_file, s.verify_certificate};
  o.connect_timeout = s.connect_timeout;
  o.command_timeout = s.command_timeout;
  return o;
}

sync::user_sync_options sync_options_from(const config::config& c) {
  sync::user_sync_options o;
  o.legacy = to_server(c.legacy);
  o.fresh = to_server(c.fresh);
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

sync::scheduler_options scheduler_options_from(const config::config& c) {
  sync::scheduler_options o;
  o.sync = sync_options_from(c);
  o.state_db = c.sync.state_db;
  o.max_concurrent_users = c.sync.max_concurrent_users;
  o.legacy_max_connections = c.legacy.max_connections;
  o.resync_interval = c.sync.resync_interval;
  o.credential_ttl = c.sync.credential_ttl;
  o.log = [](const std::string& line) { spdlog::info("{}", line); };
  return o;
}

proxy::options proxy_options_from(const config::config& c) {
  proxy::options o;
  o.origin = c.source.string();
  o.listen.imap = listen_address(c.listen.imap);
  o.listen.imaps = listen_address(c.listen.imaps);
  o.listen.tls_cert = c.listen.tls_cert;
  o.listen.tls_key = c.listen.tls_key;
  o.listen.login_requires_tls = c.listen.login_requires_tls;

  const sync::server_options fresh = to_server(c.fresh);
  o.backend.endpoint = fresh.endpoint;
  o.backend.tls = fresh.tls;
  o.backend.connect_timeout = fresh.connect_timeout;
  o.backend.command_timeout = fresh.command_timeout;
  o.backend.forward_client_info = c.fresh.forward_client_info;

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
