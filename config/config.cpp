#include "config/config.hpp"
#include "config/users.hpp"

// toml++ stays in this file: it is a large header, and nothing else needs it.
#include <toml++/toml.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <limits>
#include <numeric>
#include <regex>

namespace suction::config {
namespace {

constexpr std::array<std::string_view, 3> tls_names = {"none", "starttls", "implicit"};
constexpr std::array<std::string_view, 3> verify_names = {"new", "legacy", "new_then_legacy"};
constexpr std::array<std::string_view, 2> master_login_names = {"authzid", "separator"};
constexpr std::array<std::string_view, 5> level_names = {"trace", "debug", "info", "warn", "error"};

constexpr std::int64_t max_u32 = std::numeric_limits<std::uint32_t>::max();
// A longer duration is a typo, and would overflow time_point arithmetic in nanoseconds.
constexpr std::int64_t max_seconds = 365 * 24 * 3600;
// Bounds a mistaken path (a device, a log file) rather than any real config or PEM file.
constexpr std::size_t max_file_size = 64 << 20;

std::string in_quotes(std::string_view s) { return "\"" + std::string(s) + "\""; }

std::string octal(std::int64_t v) {
  if (v < 0) return std::to_string(v);
  char buf[32];
  auto end = std::to_chars(buf, buf + sizeof buf, v, 8).ptr;
  return "0o" + std::string(buf, end);
}

// "FILE:LINE: [section] key: reason". Values quoted in the reason may hold
// newlines (multi-line strings); the message stays one line for the log.
[[noreturn]] void fail_at(const std::string& file, std::uint32_t line, std::string_view section,
                          std::string_view key, std::string_view reason) {
  std::string where;
  if (!section.empty()) where = "[" + std::string(section) + "]";
  if (!key.empty()) where += (where.empty() ? "" : " ") + std::string(key);
  std::string msg = file + ":" + std::to_string(std::max<std::uint32_t>(line, 1)) + ": ";
  if (!where.empty()) msg += where + ": ";
  msg += reason;
  std::replace_if(msg.begin(), msg.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
  throw config_error(msg);
}

std::string_view type_name(toml::node_type t) {
  switch (t) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  std::iota(row.begin(), row.end(), std::size_t{0});
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// "unknown key (did you mean "port"?)", or the valid names when none is close.
std::string unknown(std::string_view what, std::string_view name,
                    const std::vector<std::string_view>& valid) {
  std::string_view best;
  std::size_t best_distance = 3;  // suggest only within edit distance 2
  for (auto candidate : valid) {
    if (auto d = edit_distance(name, candidate); d < best_distance) {
      best = candidate;
      best_distance = d;
    }
  }
  std::string reason = "unknown " + std::string(what);
  if (!best.empty()) return reason + " (did you mean " + in_quotes(best) + "?)";
  reason += " (valid: ";
  for (std::size_t i = 0; i < valid.size(); ++i) reason += (i ? ", " : "") + std::string(valid[i]);
  return reason + ")";
}

using entry = std::pair<std::string_view, const toml::node*>;

// toml::table iterates in key order; a message should name the first problem in the file.
std::vector<entry> in_document_order(const toml::table& t) {
  std::vector<entry> entries;
  for (auto&& [key, node] : t) entries.emplace_back(key.str(), &node);
  std::ranges::stable_sort(entries, {}, [](const auto& e) {
    auto& at = e.second->source().begin;
    return std::pair(at.line, at.column);
  });
  return entries;
}

// One value being read, with what a message about it needs.
struct field {
  const toml::node& node;
  const std::string& file;
  std::string_view section;
  std::string key;  // "port", "rename[0].from"

  [[noreturn]] void fail(std::string_view reason) const {
    fail_at(file, node.source().begin.line, section, key, reason);
  }
  [[noreturn]] void wrong_type(std::string_view expected) const {
    fail("expected " + std::string(expected) + ", got " + std::string(type_name(node.type())));
  }

  std::string string() const {
    if (auto* v = node.as_string()) return v->get();
    wrong_type("a string");
  }
  std::string nonempty_string() const {
    auto s = string();
    if (s.empty()) fail("must not be empty");
    return s;
  }
  // A node's name in the shared state store: what `suction status` shows.
  std::string node_name() const {
    auto s = nonempty_string();
    if (s.size() > 64 ||
        s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") !=
            std::string::npos)
      fail("a node name is at most 64 letters, digits, '.', '-' and '_'");
    return s;
  }
  bool boolean() const {
    if (auto* v = node.as_boolean()) return v->get();
    wrong_type("a boolean");
  }
  std::int64_t integer(std::int64_t min, std::int64_t max,
                       std::string_view expected = "an integer") const {
    auto* v = node.as_integer();
    if (!v) wrong_type(expected);
    std::int64_t n = v->get();
    auto got = " (got " + std::to_string(n) + ")";
    if (n < min && min == 0) fail("must not be negative" + got);
    if (n < min) fail("must be at least " + std::to_string(min) + got);
    if (n > max) fail("must be at most " + std::to_string(max) + got);
    return n;
  }
  // min is 0 where zero means something ("no grace period"), 1 where it cannot.
  std::uint32_t count(std::int64_t min) const {
    return static_cast<std::uint32_t>(integer(min, max_u32));
  }
  std::chrono::seconds seconds(std::int64_t min) const {
    return std::chrono::seconds(integer(min, max_seconds, "an integer (seconds)"));
  }
  std::uint16_t port() const {
    auto* v = node.as_integer();
    if (!v) wrong_type("an integer");
    std::int64_t n = v->get();
    if (n < 1 || n > 65535) fail("must be between 1 and 65535 (got " + std::to_string(n) + ")");
    return static_cast<std::uint16_t>(n);
  }
  template <class Enum, std::size_t N>
  Enum one_of(const std::array<std::string_view, N>& names) const {
    auto s = string();
    for (std::size_t i = 0; i < N; ++i) {
      if (names[i] == s) return static_cast<Enum>(i);
    }
    std::string reason = "expected one of ";
    for (std::size_t i = 0; i < N; ++i) reason += (i ? ", " : "") + std::string(names[i]);
    fail(reason + " (got " + in_quotes(s) + ")");
  }
  std::string listen_address() const {
    auto s = string();
    if (!s.empty() && !split_host_port(s)) {
      fail("expected \"HOST:PORT\" or \"[IPv6]:PORT\" with a port 1..65535, or \"\" to disable"
           " (got " + in_quotes(s) + ")");
    }
    return s;
  }
  // An empty pattern would match every folder name, which no rule means.
  std::string regex() const {
    auto s = nonempty_string();
    try {
      std::regex(s, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      fail("invalid regex " + in_quotes(s) + ": " + e.what());
    }
    return s;
  }
  // 0o600 or 384 in TOML, or the string "0600" / "600" as chmod takes it.
  std::uint32_t mode() const {
    auto bad = [this](const std::string& got) {
      fail("expected a file mode 0..0777 in octal, like 0o600 or \"0600\" (got " + got + ")");
    };
    std::int64_t v = 0;
    if (auto* s = node.as_string()) {
      const std::string& text = s->get();
      if (text.empty() || text.find_first_not_of("01234567") != std::string::npos) {
        bad(in_quotes(text));
      }
      for (char c : text) {
        v = v * 8 + (c - '0');
        if (v > 0777) bad(in_quotes(text));
      }
    } else if (auto* i = node.as_integer()) {
      v = i->get();
      if (v < 0 || v > 0777) bad(octal(v));
    } else {
      wrong_type("an integer or a string");
    }
    return static_cast<std::uint32_t>(v);
  }
};

template <class Section>
struct key_spec {
  std::string_view name;
  void (*read)(const field&, Section&);
};

// Reads every key of `table` through its key_spec; `prefix` names the entry
// of an array ("rename[2].") in messages.
template <class Section>
void read_keys(const toml::table& table, const std::string& file, std::string_view section,
               const std::vector<key_spec<Section>>& keys, Section& out,
               std::string_view prefix = {}) {
  for (auto [name, node] : in_document_order(table)) {
    field f{*node, file, section, std::string(prefix) + std::string(name)};
    auto spec = std::ranges::find(keys, name, &key_spec<Section>::name);
    if (spec == keys.end()) {
      std::vector<std::string_view> valid;
      for (auto& k : keys) valid.push_back(k.name);
      f.fail(unknown("key", name, valid));
    }
    spec->read(f, out);
  }
}

using L = listen_section;
const std::vector<key_spec<L>> listen_keys = {
    {"imap", [](const field& f, L& s) { s.imap = f.listen_address(); }},
    {"imaps", [](const field& f, L& s) { s.imaps = f.listen_address(); }},
    {"tls_cert", [](const field& f, L& s) { s.tls_cert = f.string(); }},
    {"tls_key", [](const field& f, L& s) { s.tls_key = f.string(); }},
    {"login_requires_tls", [](const field& f, L& s) { s.login_requires_tls = f.boolean(); }},
    {"proxy_protocol_from",
     [](const field& f, L& s) {
       auto* array = f.node.as_array();
       if (!array) f.wrong_type("an array of addresses or networks (\"10.0.0.0/8\")");
       s.proxy_protocol_from.clear();
       for (std::size_t i = 0; i < array->size(); ++i) {
         field e{*array->get(i), f.file, f.section, f.key + "[" + std::to_string(i) + "]"};
         s.proxy_protocol_from.push_back(e.nonempty_string());
       }
     }},
};

// [new] and [legacy] share these keys; each adds its own.
template <class Server>
std::vector<key_spec<Server>> server_keys(std::initializer_list<key_spec<Server>> own) {
  std::vector<key_spec<Server>> keys = {
      {"host", [](const field& f, Server& s) { s.host = f.nonempty_string(); }},
      {"port", [](const field& f, Server& s) { s.port = f.port(); }},
      {"tls", [](const field& f, Server& s) { s.tls = f.one_of<tls_mode>(tls_names); }},
      {"ca_file", [](const field& f, Server& s) { s.ca_file = f.string(); }},
      {"verify_certificate", [](const field& f, Server& s) { s.verify_certificate = f.boolean(); }},
      {"connect_timeout", [](const field& f, Server& s) { s.connect_timeout = f.seconds(1); }},
      {"command_timeout", [](const field& f, Server& s) { s.command_timeout = f.seconds(1); }},
      {"master_user", [](const field& f, Server& s) { s.master_user = f.nonempty_string(); }},
      {"master_password_file",
       [](const field& f, Server& s) { s.master_password_file = f.nonempty_string(); }},
      {"master_login",
       [](const field& f, Server& s) {
         s.master_login = f.one_of<master_login_form>(master_login_names);
       }},
      {"master_separator",
       [](const field& f, Server& s) { s.master_separator = f.nonempty_string(); }},
  };
  keys.insert(keys.end(), own);
  return keys;
}

const auto new_keys = server_keys<new_section>({
    {"forward_client_info",
     [](const field& f, new_section& s) { s.forward_client_info = f.boolean(); }},
});
const auto legacy_keys = server_keys<legacy_section>({
    {"max_connections", [](const field& f, legacy_section& s) { s.max_connections = f.count(1); }},
});

void read_argv(const field& f, auth_section& s) {
  auto* array = f.node.as_array();
  if (!array) f.wrong_type("an array of strings (the program and its arguments, no shell)");
  s.provision_command.clear();
  for (std::size_t i = 0; i < array->size(); ++i) {
    field e{*array->get(i), f.file, f.section, f.key + "[" + std::to_string(i) + "]"};
    s.provision_command.push_back(i == 0 ? e.nonempty_string() : e.string());
  }
  if (!s.provision_command.empty() && s.provision_command[0].front() != '/')
    f.fail("the program must be an absolute path (got " + in_quotes(s.provision_command[0]) + ")");
}

void read_template(const field& f, std::string& out) {
  out = f.string();
  if (auto why = template_problem(out); !why.empty()) f.fail(why);
}

// legacy_by_domain = {"example.org" = "old2", ...}
void read_by_domain(const field& f, users_section& s) {
  auto* table = f.node.as_table();
  if (!table) f.wrong_type("a table {\"domain\" = \"server name\", ...}");
  s.legacy_by_domain.clear();
  for (auto [domain, node] : in_document_order(*table)) {
    field e{*node, f.file, f.section, f.key + "." + std::string(domain)};
    if (domain.empty() || domain.find('@') != std::string_view::npos)
      e.fail("a domain without '@' (got " + in_quotes(domain) + ")");
    s.legacy_by_domain.emplace_back(std::string(domain), e.nonempty_string());
  }
}

using U = users_section;
const std::vector<key_spec<U>> users_keys = {
    {"legacy", [](const field& f, U& s) { read_template(f, s.legacy); }},
    {"new", [](const field& f, U& s) { read_template(f, s.fresh); }},
    {"map_file", [](const field& f, U& s) { s.map_file = f.string(); }},
    {"legacy_by_domain", read_by_domain},
    {"master_separator", [](const field& f, U& s) { s.master_separator = f.string(); }},
};

using A = auth_section;
const std::vector<key_spec<A>> auth_keys = {
    {"verify", [](const field& f, A& s) { s.verify = f.one_of<verify_mode>(verify_names); }},
    // 0: no delay (tests); the doubling still limits.
    {"failure_delay", [](const field& f, A& s) { s.failure_delay = f.seconds(0); }},
    {"max_failures", [](const field& f, A& s) { s.max_failures = f.count(1); }},
    {"failure_window", [](const field& f, A& s) { s.failure_window = f.seconds(1); }},
    {"provision_command", read_argv},
    {"provision_timeout", [](const field& f, A& s) { s.provision_timeout = f.seconds(1); }},
};

using M = limits_section;
const std::vector<key_spec<M>> limits_keys = {
    {"max_line", [](const field& f, M& s) { s.max_line = f.count(1); }},
    {"max_literal", [](const field& f, M& s) { s.max_literal = f.count(1); }},
    // 0: the first bad command ends the session.
    {"max_bad_commands", [](const field& f, M& s) { s.max_bad_commands = f.count(0); }},
    {"login_attempts", [](const field& f, M& s) { s.login_attempts = f.count(1); }},
    {"preauth_idle", [](const field& f, M& s) { s.preauth_idle = f.seconds(1); }},
    {"preauth_total", [](const field& f, M& s) { s.preauth_total = f.seconds(1); }},
    {"relay_idle", [](const field& f, M& s) { s.relay_idle = f.seconds(1); }},
    {"max_connections", [](const field& f, M& s) { s.max_connections = f.count(1); }},
    {"max_connections_per_ip", [](const field& f, M& s) { s.max_connections_per_ip = f.count(1); }},
    // 0: close relays at once on SIGTERM.
    {"shutdown_grace", [](const field& f, M& s) { s.shutdown_grace = f.seconds(0); }},
};

using S = sync_section;
const std::vector<key_spec<S>> sync_keys = {
    {"state_db", [](const field& f, S& s) { s.state_db = f.nonempty_string(); }},
    {"node_name", [](const field& f, S& s) { s.node_name = f.node_name(); }},
    // At least 5 s: leases are renewed every third of it.
    {"lease", [](const field& f, S& s) { s.lease = f.seconds(5); }},
    {"connections_per_user", [](const field& f, S& s) { s.connections_per_user = f.count(1); }},
    // 0: no recent-first pass.
    {"recent_first_days", [](const field& f, S& s) { s.recent_first_days = f.count(0); }},
    {"max_concurrent_users", [](const field& f, S& s) { s.max_concurrent_users = f.count(1); }},
    // 0: every login starts an incremental pass.
    {"resync_interval", [](const field& f, S& s) { s.resync_interval = f.seconds(0); }},
    // 0: credentials are not kept for later resyncs.
    {"credential_ttl", [](const field& f, S& s) { s.credential_ttl = f.seconds(0); }},
    {"batch_messages", [](const field& f, S& s) { s.batch_messages = f.count(1); }},
    // At least 64 KiB: below that every message would be streamed alone.
    {"batch_bytes", [](const field& f, S& s) { s.batch_bytes = f.count(65536); }},
    // 0: always connections_per_user pairs.
    {"parallel_threshold", [](const field& f, S& s) { s.parallel_threshold = f.count(0); }},
    {"fold_user_case", [](const field& f, S& s) { s.fold_user_case = f.boolean(); }},
};

const std::vector<key_spec<folder_rename>> rename_keys = {
    {"from", [](const field& f, folder_rename& r) { r.from = f.regex(); }},
    {"to", [](const field& f, folder_rename& r) { r.to = f.string(); }},
};

// rename = [{from = "...", to = "..."}, ...], or [[folders.rename]] tables.
void read_renames(const field& f, folders_section& s) {
  auto* array = f.node.as_array();
  if (!array) f.wrong_type("an array of {from, to} tables");
  for (std::size_t i = 0; i < array->size(); ++i) {
    const toml::node& entry = *array->get(i);
    field e{entry, f.file, f.section, "rename[" + std::to_string(i) + "]"};
    auto* table = entry.as_table();
    if (!table) e.wrong_type("a table {from = \"regex\", to = \"replacement\"}");
    folder_rename& rule = s.rename.emplace_back();
    read_keys(*table, f.file, f.section, rename_keys, rule, e.key + ".");
    for (std::string_view required : {"from", "to"}) {
      if (!table->contains(required)) {
        fail_at(f.file, entry.source().begin.line, f.section,
                e.key + "." + std::string(required), "required");
      }
    }
  }
}

void read_excludes(const field& f, folders_section& s) {
  auto* array = f.node.as_array();
  if (!array) f.wrong_type("an array of regexes");
  for (std::size_t i = 0; i < array->size(); ++i) {
    field e{*array->get(i), f.file, f.section, "exclude[" + std::to_string(i) + "]"};
    s.exclude.push_back(e.regex());
  }
}

const std::vector<key_spec<folders_section>> folders_keys = {
    {"rename", read_renames},
    {"exclude", read_excludes},
};

using T = status_section;
const std::vector<key_spec<T>> status_keys = {
    {"socket", [](const field& f, T& s) { s.socket = f.string(); }},
    {"mode", [](const field& f, T& s) { s.mode = f.mode(); }},
    {"group", [](const field& f, T& s) { s.group = f.string(); }},
};

const std::vector<key_spec<metrics_section>> metrics_keys = {
    {"listen", [](const field& f, metrics_section& s) { s.listen = f.listen_address(); }},
};

const std::vector<key_spec<proxy_section>> proxy_keys = {
    // 0: one per core. More than 256 buys nothing but memory.
    {"threads", [](const field& f, proxy_section& s) {
       s.threads = static_cast<std::uint32_t>(f.integer(0, 256, "an integer (0 = one per core)"));
     }},
};

const std::vector<key_spec<log_section>> log_keys = {
    {"level", [](const field& f, log_section& s) { s.level = f.one_of<log_level>(level_names); }},
};

// [legacy_servers.NAME]: each a table with [legacy]'s keys.
void read_legacy_servers(const toml::table& t, const std::string& file, std::string_view section,
                         config& c) {
  for (auto [name, node] : in_document_order(t)) {
    const std::string where = std::string(section) + "." + std::string(name);
    auto* table = node->as_table();
    if (!table)
      fail_at(file, node->source().begin.line, section, name,
              "expected a table [legacy_servers." + std::string(name) + "] with [legacy]'s keys");
    if (name == "legacy" || name == "new" || name.empty() ||
        name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
            std::string_view::npos)
      fail_at(file, node->source().begin.line, section, name,
              "a server name is letters, digits, '-' and '_', not \"legacy\" (the default) nor \"new\"");
    named_legacy& s = c.legacy_servers.emplace_back();
    s.name = name;
    read_keys(*table, file, where, legacy_keys, s.server);
    if (s.server.host.empty())
      fail_at(file, table->source().begin.line, where, "host", "required");
  }
}

struct section_spec {
  std::string_view name;
  void (*read)(const toml::table&, const std::string& file, std::string_view section, config&);
};

// Reads a section through its key table into the member of config that holds it.
template <auto member, const auto& keys>
void read_section(const toml::table& t, const std::string& file, std::string_view section,
                  config& c) {
  read_keys(t, file, section, keys, c.*member);
}

const std::vector<section_spec> sections = {
    {"listen", read_section<&config::listen, listen_keys>},
    {"new", read_section<&config::fresh, new_keys>},
    {"legacy", read_section<&config::legacy, legacy_keys>},
    {"legacy_servers", read_legacy_servers},
    {"users", read_section<&config::users, users_keys>},
    {"auth", read_section<&config::auth, auth_keys>},
    {"limits", read_section<&config::limits, limits_keys>},
    {"sync", read_section<&config::sync, sync_keys>},
    {"folders", read_section<&config::folders, folders_keys>},
    {"status", read_section<&config::status, status_keys>},
    {"metrics", read_section<&config::metrics, metrics_keys>},
    {"proxy", read_section<&config::proxy, proxy_keys>},
    {"log", read_section<&config::log, log_keys>},
};

// The line of a key, else of its section's header, else 1: where to point for
// a problem about a key that may be absent.
std::uint32_t line_of(const toml::table& root, std::string_view section, std::string_view key) {
  if (auto* s = root.get_as<toml::table>(section)) {
    if (auto* n = s->get(key)) return n->source().begin.line;
    return s->source().begin.line;
  }
  return 1;
}

// Every server with its section's name: "new", "legacy", then each
// [legacy_servers.NAME] as NAME.
std::vector<std::pair<std::string, const server_section*>> servers(const config& c) {
  std::vector<std::pair<std::string, const server_section*>> out = {{"new", &c.fresh},
                                                                   {"legacy", &c.legacy}};
  for (const auto& s : c.legacy_servers) out.emplace_back(s.name, &s.server);
  return out;
}

// Rules between keys, checked once every section is read.
void check_combinations(const toml::table& root, const std::string& file, const config& c) {
  if (c.fresh.host.empty()) {
    fail_at(file, line_of(root, "new", "host"), "new", "host",
            "required (the server suction fronts)");
  }
  if (c.legacy.host.empty()) {
    fail_at(file, line_of(root, "legacy", "host"), "legacy", "host",
            "required (the server mail is copied from)");
  }
  // Master credentials come in pairs; verify = "legacy" needs the new server's.
  for (auto [name, s] : servers(c)) {
    const bool named = name != "new" && name != "legacy";
    const std::string where = named ? "legacy_servers." + name : name;
    const toml::table* table = named ? root.at_path("legacy_servers").as_table() : &root;
    if (!s->master_user.empty() && s->master_password_file.empty())
      fail_at(file, line_of(*table, name, "master_user"), where, "master_password_file",
              "required with master_user");
    if (s->master_user.empty() && !s->master_password_file.empty())
      fail_at(file, line_of(*table, name, "master_password_file"), where, "master_user",
              "required with master_password_file");
  }
  for (const auto& [domain, server] : c.users.legacy_by_domain)
    if (!known_legacy_server(c, server))
      fail_at(file, line_of(root, "users", "legacy_by_domain"), "users",
              "legacy_by_domain." + domain,
              "no legacy server " + in_quotes(server) +
                  " (\"legacy\" or the NAME of a [legacy_servers.NAME])");
  if (c.auth.verify != verify_mode::fresh && c.fresh.master_user.empty())
    fail_at(file, line_of(root, "auth", "verify"), "new", "master_user",
            "required with [auth] verify = \"" + std::string(to_string(c.auth.verify)) +
                "\" (the new server is logged in to with master credentials)");
  const listen_section& l = c.listen;
  if (l.imap.empty() && l.imaps.empty()) {
    fail_at(file, line_of(root, "listen", "imap"), "listen", "imap",
            "nothing to listen on (imap and imaps are both \"\")");
  }
  // Which key makes a certificate necessary, and how to say so.
  std::string_view cause, reason;
  if (!l.imaps.empty()) {
    cause = "imaps", reason = "required when imaps is set";
  } else if (l.login_requires_tls) {
    cause = "login_requires_tls", reason = "required when login_requires_tls = true";
  } else if (!l.tls_cert.empty()) {
    cause = "tls_cert", reason = "required with tls_cert";
  } else if (!l.tls_key.empty()) {
    cause = "tls_key", reason = "required with tls_key";
  }
  if (cause.empty()) return;
  for (auto [key, value] : {std::pair{"tls_cert", &l.tls_cert}, {"tls_key", &l.tls_key}}) {
    if (value->empty()) fail_at(file, line_of(root, "listen", cause), "listen", key, reason);
  }
}

// errno of the failing call, 0 once `out` holds the file. POSIX rather than
// iostreams because the message needs that errno.
int read_file(const std::string& path, std::string& out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  int error = 0;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) error = errno;
    if (n <= 0) break;
    if (out.size() + static_cast<std::size_t>(n) > max_file_size) {
      error = EFBIG;
      break;
    }
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return error;
}

}  // namespace

config parse(std::string_view toml_text, const std::filesystem::path& source_name) {
  const std::string file = source_name.string();
  toml::table root;
  try {
    root = toml::parse(toml_text, std::string_view(file));
  } catch (const toml::parse_error& e) {
    fail_at(file, e.source().begin.line, {}, {}, e.description());
  }

  config c;
  c.source = source_name;
  std::vector<std::string_view> valid;
  for (auto& s : sections) valid.push_back(s.name);
  for (auto [name, node] : in_document_order(root)) {
    auto spec = std::ranges::find(sections, name, &section_spec::name);
    auto* table = node->as_table();
    std::uint32_t line = node->source().begin.line;
    // A key above the first [section] header lands at the top level.
    const bool known = spec != sections.end();
    if (!table && !known) fail_at(file, line, {}, name, "a key outside any section");
    if (!known) fail_at(file, line, name, {}, unknown("section", name, valid));
    if (!table) {
      fail_at(file, line, name, {},
              "expected a table, got " + std::string(type_name(node->type())));
    }
    spec->read(*table, file, name, c);
  }
  check_combinations(root, file, c);
  return c;
}

config load(const std::filesystem::path& path) {
  std::string text;
  if (int error = read_file(path.string(), text)) {
    throw config_error(path.string() + ": cannot read: " + std::strerror(error));
  }
  return parse(text, path);
}

std::vector<std::string> check_files(const config& c) {
  struct reference {
    std::string_view section, key;
    const std::string& path;
  };
  const reference references[] = {
      {"listen", "tls_cert", c.listen.tls_cert},
      {"listen", "tls_key", c.listen.tls_key},
      {"new", "ca_file", c.fresh.ca_file},
      {"legacy", "ca_file", c.legacy.ca_file},
  };
  std::vector<std::string> problems;
  for (const auto& r : references) {
    if (r.path.empty()) continue;  // not configured, or "" = the system store
    std::string content;
    std::string reason;
    if (int error = read_file(r.path, content)) {
      reason = "cannot read " + in_quotes(r.path) + ": " + std::strerror(error);
    } else if (content.empty()) {
      reason = in_quotes(r.path) + " is empty";
    } else {
      continue;
    }
    problems.push_back(c.source.string() + ": [" + std::string(r.section) + "] " +
                       std::string(r.key) + ": " + reason);
  }
  // Master passwords: read (and dropped) here so a bad file stops the start
  // with its one line; the composition root reads them again to use them.
  for (auto [name, s] : servers(c)) {
    const std::string section =
        name == "new" || name == "legacy" ? name : "legacy_servers." + name;
    if (!s->ca_file.empty() && name != "new" && name != "legacy") {
      std::string content;
      if (int error = read_file(s->ca_file, content))
        problems.push_back(c.source.string() + ": [" + section + "] ca_file: cannot read " +
                           in_quotes(s->ca_file) + ": " + std::strerror(error));
    }
    if (s->master_password_file.empty()) continue;
    try {
      std::string pw = read_password_file(c, section, "master_password_file", s->master_password_file);
      ::explicit_bzero(pw.data(), pw.size());
    } catch (const config_error& e) {
      problems.push_back(e.what());
    }
  }
  // The map file: a bad row stops the start, naming file and line.
  try {
    (void)read_map_file(c);
  } catch (const config_error& e) {
    problems.push_back(e.what());
  }
  return problems;
}

std::optional<host_port> split_host_port(std::string_view address) {
  std::string_view host, port;
  if (address.starts_with('[')) {
    auto close = address.find(']');
    if (close == std::string_view::npos || address.substr(close + 1, 1) != ":") return std::nullopt;
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
    if (host.find(':') == std::string_view::npos) return std::nullopt;  // brackets are for IPv6
  } else {
    auto colon = address.find(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    // A second colon: a bare IPv6 address, ambiguous without brackets.
    if (port.find(':') != std::string_view::npos) return std::nullopt;
  }
  if (host.empty()) return std::nullopt;
  if (host != "*") {
    bool plain = std::ranges::all_of(host, [](char ch) {
      return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             std::string_view(".-_:%").find(ch) != std::string_view::npos;
    });
    if (!plain) return std::nullopt;
  }
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  bool whole = !port.empty() && ec == std::errc{} && end == port.data() + port.size();
  if (!whole || value < 1 || value > 65535) return std::nullopt;
  return host_port{std::string(host), static_cast<std::uint16_t>(value)};
}

const legacy_section* find_legacy(const config& c, std::string_view name) {
  if (name.empty() || name == "legacy") return &c.legacy;
  for (const auto& s : c.legacy_servers)
    if (s.name == name) return &s.server;
  return nullptr;
}

std::string_view to_string(tls_mode m) { return tls_names.at(static_cast<std::size_t>(m)); }
std::string_view to_string(verify_mode m) { return verify_names.at(static_cast<std::size_t>(m)); }

std::string read_password_file(const config& c, std::string_view section, std::string_view key,
                               const std::string& path) {
  auto fail = [&](const std::string& reason) -> std::string {
    throw config_error(c.source.string() + ": [" + std::string(section) + "] " +
                       std::string(key) + ": " + reason);
  };
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return fail("cannot read " + in_quotes(path) + ": " + std::strerror(errno));
  if ((st.st_mode & 077) != 0)
    return fail(in_quotes(path) + " is readable or writable by group or others (chmod 600 it)");
  std::string content;
  if (int error = read_file(path, content))
    return fail("cannot read " + in_quotes(path) + ": " + std::strerror(error));
  std::string line = content.substr(0, content.find('\n'));
  if (!line.empty() && line.back() == '\r') line.pop_back();
  ::explicit_bzero(content.data(), content.size());  // the rest of the file
  if (line.empty()) return fail(in_quotes(path) + " is empty (the password is its first line)");
  return line;
}
std::string_view to_string(log_level l) { return level_names.at(static_cast<std::size_t>(l)); }

}  // namespace suction::config
