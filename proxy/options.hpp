// What the proxy daemon needs to run, as plain values. proxy/cli builds it
// from the configuration file; tests and benches may build it by hand. The
// proxy never reads the configuration itself.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "imap/client/client.hpp"

namespace suction::proxy {

// A listening address, already split ("*" or "" = every address, dual-stack).
struct listen_address {
  std::string host;
  std::uint16_t port = 0;
  std::string text;  // as the admin wrote it, for messages
};

struct listen_options {
  std::optional<listen_address> imap;   // plaintext + STARTTLS
  std::optional<listen_address> imaps;  // implicit TLS
  std::string tls_cert, tls_key;        // PEM files; "" = no TLS offered
  bool login_requires_tls = false;      // LOGINDISABLED until STARTTLS
  // Peers that must open with a PROXY protocol header (proxy_protocol.hpp);
  // "IP" or "IP/prefix". A bad entry stops the start.
  std::vector<std::string> proxy_protocol_from;
};

struct backend_options {
  imap::endpoint endpoint;  // the new server
  imap::tls_settings tls;   // used when endpoint.tls is not none
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  std::chrono::milliseconds command_timeout{std::chrono::seconds(60)};
  bool forward_client_info = true;  // ID x-originating-ip / -port / x-session-id
};

struct limit_options {
  std::uint32_t max_line = 64 * 1024;  // pre-auth command line (Dovecot's imap-login: 64 KiB)
  std::uint32_t max_literal = 8192;    // pre-auth literal
  std::uint32_t max_bad_commands = 3;
  std::uint32_t login_attempts = 3;
  std::chrono::milliseconds preauth_idle{std::chrono::seconds(60)};    // no byte for this long
  std::chrono::milliseconds preauth_total{std::chrono::seconds(180)};  // login done within this
  std::chrono::milliseconds relay_idle{std::chrono::minutes(30)};
  std::uint32_t max_connections = 10000;
  std::uint32_t max_connections_per_ip = 50;
  std::chrono::milliseconds shutdown_grace{std::chrono::seconds(30)};
  // Refused connections are logged once per address per this interval, with a count.
  std::chrono::milliseconds refusal_log_interval{std::chrono::seconds(10)};
};

struct status_options {
  std::string socket;  // "" = no status socket
  std::uint32_t mode = 0600;
  std::string group;
};

// Where a client's password is checked ([auth] verify).
enum class verify_mode : std::uint8_t {
  fresh,              // the new server (LOGIN with the client's credentials), as a plain proxy
  legacy,             // the legacy server; then the new server with master credentials
  fresh_then_legacy,  // the new server; a refusal is checked again on legacy
};

// The names one login stands for ([users]; proxy/cli resolves them).
struct mapped_login {
  std::string identity;       // the user's canonical name: the migration's key
  std::string new_login;      // LOGIN on the new server with the client's password
  std::string new_user;       // the user a master login on the new server is for
  std::string legacy_login;   // LOGIN on legacy (a check, the migration)
  std::string legacy_user;
  std::string legacy_server;  // "" = auth.legacy, else a name in auth.more_legacy
  bool master_form = false;   // "user*master": the password is a master's, not the user's
};

struct auth_options {
  verify_mode verify = verify_mode::fresh;
  backend_options legacy;                // where legacy checks go ([legacy])
  // [legacy_servers.NAME]: where the users routed there are checked.
  std::vector<std::pair<std::string, backend_options>> more_legacy;
  imap::master_credentials new_master;   // the new server's master login ([new] master_*)
  // Failed legacy checks (auth_penalty.hpp): delayed, doubled per failure, limited.
  std::chrono::milliseconds failure_delay{std::chrono::seconds(2)};
  std::uint32_t max_failures = 10;
  std::chrono::seconds failure_window{300};
  // [auth] provision_command (provision.hpp); empty: none.
  std::vector<std::string> provision_command;
  std::chrono::milliseconds provision_timeout{std::chrono::seconds(10)};
};

struct options {
  // Where these options came from (the config file): the prefix of start-up
  // errors, so they read "FILE: [section] key: reason".
  std::string origin;
  listen_options listen;
  backend_options backend;
  auth_options auth;
  limit_options limits;
  status_options status;
  // io threads for the sessions (the caller's thread is the first); spread
  // round robin at accept. 1: everything on the caller's io_context.
  std::uint32_t threads = 1;
  // The names a login stands for; empty: the name as typed everywhere. Called
  // on a session's io thread for every login: thread-safe, must not block.
  std::function<mapped_login(std::string_view login)> map_login;
  // SIGHUP besides the certificate: reloads what the composition root keeps
  // (the [users] map file). Returns the line to log; throws to keep the old.
  std::function<std::string()> reload;
  // Every login the backend answered (ok or refused), its duration: the
  // metrics' latency histogram. Called on a session's io thread: thread-safe,
  // must not block.
  std::function<void(std::chrono::milliseconds)> observe_login;
};

}  // namespace suction::proxy
