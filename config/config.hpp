// suction's configuration: TOML -> these plain structs, validated at load.
// Key names and meanings follow the config contract (README, "Configuration").
// The structs compare with ==, so tests and a reload can compare whole sections.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace suction::config {

enum class tls_mode : std::uint8_t { none, starttls, implicit };
enum class log_level : std::uint8_t { trace, debug, info, warn, error };
// [auth] verify: where a client's password is checked ("new", "legacy", "new_then_legacy").
enum class verify_mode : std::uint8_t { fresh, legacy, fresh_then_legacy };
// [new]/[legacy] master_login: AUTHENTICATE PLAIN with authzid, or LOGIN "user<sep>master".
enum class master_login_form : std::uint8_t { authzid, separator };

struct listen_section {
  std::string imap = "127.0.0.1:1143";   // plaintext + STARTTLS; "" disables
  std::string imaps = "127.0.0.1:1993";  // implicit TLS; "" disables
  std::string tls_cert;                  // PEM; required when imaps is set or STARTTLS offered
  std::string tls_key;
  bool login_requires_tls = false;       // LOGINDISABLED until STARTTLS
  // Load balancers allowed (and required) to send a PROXY protocol header
  // (v1 or v2): addresses or networks, "10.0.0.0/8", "2001:db8::/32". Empty: none.
  std::vector<std::string> proxy_protocol_from;

  bool operator==(const listen_section&) const = default;
};

struct server_section {
  std::string host;
  std::uint16_t port = 143;
  tls_mode tls = tls_mode::none;
  std::string ca_file;                   // "" = system store
  bool verify_certificate = true;
  std::chrono::seconds connect_timeout{10};
  std::chrono::seconds command_timeout{120};
  // Logging in as any user with a master user's credentials (where the server
  // allows it): [new] for verify = "legacy", [legacy] for bulk migration.
  std::string master_user;               // "" = none
  std::string master_password_file;      // first line; mode 0600 or stricter
  master_login_form master_login = master_login_form::authzid;
  std::string master_separator = "*";    // for master_login = "separator"

  bool operator==(const server_section&) const = default;
};

struct new_section : server_section {
  bool forward_client_info = true;       // ID x-originating-ip / -port / x-session-id

  bool operator==(const new_section&) const = default;
};

struct legacy_section : server_section {
  std::uint32_t max_connections = 16;    // across all users, to this host

  bool operator==(const legacy_section&) const = default;
};

// One of several legacy servers ([legacy_servers.NAME]): users reach it
// through [users] legacy_by_domain or the map file's fourth column.
struct named_legacy {
  std::string name;
  legacy_section server;

  bool operator==(const named_legacy&) const = default;
};

// [users]: how a login name becomes each server's name (config/users.hpp).
struct users_section {
  std::string legacy = "%u";     // template for the legacy name
  std::string fresh = "%u";      // [users] new: template for the new server's name
  std::string map_file;          // CSV login,legacy_user,new_user[,legacy_server]; "" = none
  std::vector<std::pair<std::string, std::string>> legacy_by_domain;  // domain -> server name
  // "bob*admin" (Dovecot's master-user login) is bob's account; "" = no such form.
  std::string master_separator = "*";

  bool operator==(const users_section&) const = default;
};

struct auth_section {
  verify_mode verify = verify_mode::fresh;
  // A failed check against legacy (verify = "legacy" / "new_then_legacy")
  // answers after this delay, doubled per failure of the address or the user
  // in failure_window (at most 15 s, like Dovecot's auth penalty); past
  // max_failures in the window, checks of that address or user are refused
  // without asking legacy until the window passes.
  std::chrono::seconds failure_delay{2};
  std::uint32_t max_failures = 10;
  std::chrono::seconds failure_window{300};
  // Run once for a user whose password legacy confirmed, the first time the
  // daemon sees the user: argv (no shell), then the login name and the new
  // name as arguments, the password on stdin. [] = none.
  std::vector<std::string> provision_command;
  std::chrono::seconds provision_timeout{10};

  bool operator==(const auth_section&) const = default;
};

struct limits_section {
  std::uint32_t max_line = 65536;                       // pre-auth command line, bytes (Dovecot: 64 KiB)
  std::uint32_t max_literal = 8192;                     // pre-auth literal, bytes
  std::uint32_t max_bad_commands = 3;                   // then BYE (Dovecot's imap-login: 3)
  std::uint32_t login_attempts = 3;                     // failed logins per connection, then BYE
  std::chrono::seconds preauth_idle{60};                // pre-auth idle deadline
  std::chrono::seconds preauth_total{180};              // login done within this (Dovecot: 3 min)
  std::chrono::seconds relay_idle{30 * 60};             // after login, no bytes either way
  std::uint32_t max_connections = 10000;                // all clients
  std::uint32_t max_connections_per_ip = 50;            // per client address
  std::chrono::seconds shutdown_grace{30};              // SIGTERM: relays may drain this long

  bool operator==(const limits_section&) const = default;
};

struct folder_rename {
  std::string from;  // ECMAScript regex on the legacy name without its namespace prefix, UTF-8, "/" between levels
  std::string to;    // replacement ($1 ...)

  bool operator==(const folder_rename&) const = default;
};

struct sync_section {
  // A path (SQLite), or a PostgreSQL URI / libpq keyword string: the state
  // several nodes share.
  std::string state_db = "/var/lib/suction/state.db";
  // With PostgreSQL: this node's name in the runs table ("" = the host
  // name), and how long another node waits for a silent node's runs.
  std::string node_name;
  std::chrono::seconds lease{60};
  std::uint32_t connections_per_user = 2;
  std::uint32_t recent_first_days = 14;
  std::uint32_t max_concurrent_users = 4;
  std::chrono::seconds resync_interval{600};
  std::chrono::seconds credential_ttl{3600};
  std::uint32_t batch_messages = 100;       // messages per MULTIAPPEND
  std::uint32_t batch_bytes = 16u << 20;    // bytes per MULTIAPPEND; a larger message is streamed
  std::uint32_t parallel_threshold = 200;   // messages to copy below which one connection pair does it all
  bool fold_user_case = true;               // "Alice" and "alice" are one user (state, jobs)

  bool operator==(const sync_section&) const = default;
};

struct folders_section {
  std::vector<folder_rename> rename;
  std::vector<std::string> exclude;  // regexes, same form as rename.from; a match drops the subtree

  bool operator==(const folders_section&) const = default;
};

struct status_section {
  std::string socket = "/run/suction/status.sock";
  std::uint32_t mode = 0600;
  std::string group;

  bool operator==(const status_section&) const = default;
};

// [proxy]: the front door's own resources.
struct proxy_section {
  std::uint32_t threads = 0;  // io threads for the sessions; 0 = one per core

  bool operator==(const proxy_section&) const = default;
};

// [metrics]: Prometheus metrics over HTTP ("" = off).
struct metrics_section {
  std::string listen;  // "127.0.0.1:9143"

  bool operator==(const metrics_section&) const = default;
};

struct log_section {
  log_level level = log_level::info;

  bool operator==(const log_section&) const = default;
};

struct config {
  std::filesystem::path source;  // the file it was read from
  listen_section listen;
  new_section fresh;             // [new]
  legacy_section legacy;         // [legacy]: the default legacy server, named "legacy"
  std::vector<named_legacy> legacy_servers;  // [legacy_servers.NAME], in file order
  users_section users;
  auth_section auth;
  limits_section limits;
  sync_section sync;
  folders_section folders;
  status_section status;
  metrics_section metrics;
  proxy_section proxy;
  log_section log;

  bool operator==(const config&) const = default;
};

// A configuration error: what() is one line "FILE:LINE: [section] key: reason".
class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Reads and validates. Throws config_error for a missing file, a TOML syntax
// error, an unknown section or key, a value of the wrong type or out of range,
// or an inconsistent combination (e.g. imaps without tls_cert).
// Referenced files (certificates, CA files) are not opened here: see check_files.
config load(const std::filesystem::path& path);
config parse(std::string_view toml_text, const std::filesystem::path& source_name);

// The files the configuration names (tls_cert, tls_key, ca_file,
// master_password_file) that cannot be read (or, for a password, are readable
// by group or others), one line each: "FILE: [section] key: reason". Empty
// when all are fine.
// Separate from parse() so that a config can be checked on a machine without them;
// the daemon calls it at start-up.
std::vector<std::string> check_files(const config& c);

// A listen address: "HOST:PORT" or "[IPv6]:PORT", port 1..65535. nullopt if
// malformed. The host "*" (every address) comes back as "*": how to bind it
// (dual-stack "::" or "0.0.0.0") is the daemon's choice.
struct host_port {
  std::string host;  // without the brackets
  std::uint16_t port = 0;

  bool operator==(const host_port&) const = default;
};
std::optional<host_port> split_host_port(std::string_view address);

// The first line of a password file named by `key` of `section` (a master
// password): refused, with one line "CONFIG: [section] key: reason", when it
// cannot be read, is empty, or is readable or writable by group or others.
std::string read_password_file(const config& c, std::string_view section, std::string_view key,
                               const std::string& path);

// The legacy server called `name` ("" or "legacy": [legacy]); null if none.
const legacy_section* find_legacy(const config& c, std::string_view name);

std::string_view to_string(tls_mode m);
std::string_view to_string(verify_mode m);
std::string_view to_string(log_level l);

}  // namespace suction::config
