#include "config/config.hpp"

#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

namespace cfg = suction::config;
using namespace std::chrono_literals;

namespace {

// What parse() says about `text` read as "test.toml", or "" if it accepts it.
std::string error_of(const std::string& text) {
  try {
    cfg::parse(text, "test.toml");
  } catch (const cfg::config_error& e) {
    return e.what();
  }
  return "";
}

struct error_case {
  std::string text;
  std::string expected;  // the whole message: file, line, section, key and reason
};

void check_errors(const std::vector<error_case>& cases) {
  for (const auto& c : cases) {
    INFO("document:\n", c.text);
    CHECK(error_of(c.text) == c.expected);
  }
}

// The smallest valid document: both servers, and a certificate for the
// default imaps listener. Seven lines; a section appended starts on line 8.
const std::string minimal = R"([new]
host = "new.example.net"
[legacy]
host = "old.example.net"
[listen]
tls_cert = "cert.pem"
tls_key = "key.pem"
)";

// Hosts for both servers and no TLS listener: a valid rest for documents
// that test [listen]. Four lines.
const std::string servers = R"([new]
host = "new.example.net"
[legacy]
host = "old.example.net"
)";

std::string regex_error(const std::string& pattern) {
  try {
    std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    return e.what();
  }
  return "(compiles)";
}

// A fresh directory for files, removed with its contents at the end of the test.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("suction-config-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
  std::filesystem::path write(const std::string& name, const std::string& content) const {
    auto file = path / name;
    std::ofstream(file) << content;
    return file;
  }
};

}  // namespace

TEST_CASE("the contract example parses to its values") {
  const auto c = cfg::parse(R"([listen]
imap = "127.0.0.1:1143"      # plaintext + STARTTLS; "" disables
imaps = "127.0.0.1:1993"     # implicit TLS; "" disables
tls_cert = "/etc/suction/cert.pem"
tls_key = "/etc/suction/key.pem"
login_requires_tls = false   # true: LOGINDISABLED until STARTTLS on the plaintext listener

[new]                        # the server suction fronts
host = "127.0.0.1"
port = 143
tls = "none"                 # none | starttls | implicit
ca_file = ""                 # "" = system store
forward_client_info = true

[legacy]                     # the server mail is copied from
host = "old.example.net"
port = 993
tls = "implicit"
ca_file = ""

[sync]
state_db = "/var/lib/suction/state.db"

[status]
socket = "/run/suction/status.sock"

[log]
level = "info"               # trace | debug | info | warn | error
)",
                            "suction.toml");
  CHECK(c.source == "suction.toml");
  CHECK(c.listen.imap == "127.0.0.1:1143");
  CHECK(c.listen.imaps == "127.0.0.1:1993");
  CHECK(c.listen.tls_cert == "/etc/suction/cert.pem");
  CHECK(c.listen.tls_key == "/etc/suction/key.pem");
  CHECK_FALSE(c.listen.login_requires_tls);
  CHECK(c.fresh.host == "127.0.0.1");
  CHECK(c.fresh.port == 143);
  CHECK(c.fresh.tls == cfg::tls_mode::none);
  CHECK(c.fresh.ca_file == "");
  CHECK(c.fresh.forward_client_info);
  CHECK(c.legacy.host == "old.example.net");
  CHECK(c.legacy.port == 993);
  CHECK(c.legacy.tls == cfg::tls_mode::implicit);
  CHECK(c.legacy.ca_file == "");
  CHECK(c.sync.state_db == "/var/lib/suction/state.db");
  CHECK(c.status.socket == "/run/suction/status.sock");
  CHECK(c.log.level == cfg::log_level::info);
}

TEST_CASE("omitted sections and keys keep the defaults") {
  const auto c = cfg::parse(minimal, "test.toml");
  CHECK(c.fresh.host == "new.example.net");
  CHECK(c.legacy.host == "old.example.net");
  CHECK(c.listen.imap == "127.0.0.1:1143");
  CHECK(c.listen.imaps == "127.0.0.1:1993");
  CHECK_FALSE(c.listen.login_requires_tls);
  CHECK(c.fresh.port == 143);
  CHECK(c.fresh.tls == cfg::tls_mode::none);
  CHECK(c.fresh.verify_certificate);
  CHECK(c.fresh.connect_timeout == 10s);
  CHECK(c.fresh.command_timeout == 120s);
  CHECK(c.fresh.forward_client_info);
  CHECK(c.legacy.port == 143);
  CHECK(c.legacy.max_connections == 16);
  CHECK(c.limits == cfg::limits_section{});
  CHECK(c.limits.relay_idle == 1800s);
  CHECK(c.sync == cfg::sync_section{});
  CHECK(c.sync.state_db == "/var/lib/suction/state.db");
  CHECK(c.folders.rename.empty());
  CHECK(c.folders.exclude.empty());
  CHECK(c.status.mode == 0600);
  CHECK(c.status.socket == "/run/suction/status.sock");
  CHECK(c.log.level == cfg::log_level::info);
}

TEST_CASE("every key reaches its field") {
  const auto c = cfg::parse(R"([listen]
imap = "[::1]:143"
imaps = "*:993"
tls_cert = "c.pem"
tls_key = "k.pem"
login_requires_tls = true
[new]
host = "new.example.net"
port = 1143
tls = "starttls"
ca_file = "new-ca.pem"
verify_certificate = false
connect_timeout = 5
command_timeout = 60
forward_client_info = false
[legacy]
host = "old.example.net"
port = 1993
tls = "implicit"
ca_file = "old-ca.pem"
verify_certificate = false
connect_timeout = 7
command_timeout = 90
max_connections = 3
[limits]
max_line = 1000
max_literal = 2000
max_bad_commands = 0
login_attempts = 1
preauth_idle = 15
preauth_total = 40
relay_idle = 300
max_connections = 100
max_connections_per_ip = 5
shutdown_grace = 0
[sync]
state_db = "/tmp/s.db"
node_name = "mx-2.example"
lease = 30
connections_per_user = 1
recent_first_days = 0
max_concurrent_users = 2
resync_interval = 60
credential_ttl = 0
batch_messages = 1
batch_bytes = 65536
parallel_threshold = 0
fold_user_case = false
[folders]
rename = [{from = "^INBOX\\.(.*)$", to = "$1"}, {from = "^Sent Items$", to = "Sent"}]
exclude = ["^Trash$", "^Public/"]
[status]
socket = "/tmp/s.sock"
mode = 0o660
group = "mail"
[proxy]
threads = 3
[log]
level = "debug"
)",
                            "test.toml");
  CHECK(c.listen == cfg::listen_section{.imap = "[::1]:143", .imaps = "*:993", .tls_cert = "c.pem",
                                        .tls_key = "k.pem", .login_requires_tls = true});

  cfg::new_section fresh;
  fresh.host = "new.example.net";
  fresh.port = 1143;
  fresh.tls = cfg::tls_mode::starttls;
  fresh.ca_file = "new-ca.pem";
  fresh.verify_certificate = false;
  fresh.connect_timeout = 5s;
  fresh.command_timeout = 60s;
  fresh.forward_client_info = false;
  CHECK(c.fresh == fresh);

  cfg::legacy_section legacy;
  legacy.host = "old.example.net";
  legacy.port = 1993;
  legacy.tls = cfg::tls_mode::implicit;
  legacy.ca_file = "old-ca.pem";
  legacy.verify_certificate = false;
  legacy.connect_timeout = 7s;
  legacy.command_timeout = 90s;
  legacy.max_connections = 3;
  CHECK(c.legacy == legacy);

  CHECK(c.limits == cfg::limits_section{.max_line = 1000, .max_literal = 2000,
                                        .max_bad_commands = 0, .login_attempts = 1,
                                        .preauth_idle = 15s, .preauth_total = 40s, .relay_idle = 300s,
                                        .max_connections = 100, .max_connections_per_ip = 5,
                                        .shutdown_grace = 0s});
  CHECK(c.sync == cfg::sync_section{.state_db = "/tmp/s.db", .node_name = "mx-2.example",
                                    .lease = 30s, .connections_per_user = 1,
                                    .recent_first_days = 0, .max_concurrent_users = 2,
                                    .resync_interval = 60s, .credential_ttl = 0s,
                                    .batch_messages = 1, .batch_bytes = 65536,
                                    .parallel_threshold = 0, .fold_user_case = false});
  CHECK(c.folders.rename ==
        std::vector<cfg::folder_rename>{{"^INBOX\\.(.*)$", "$1"}, {"^Sent Items$", "Sent"}});
  CHECK(c.folders.exclude == std::vector<std::string>{"^Trash$", "^Public/"});
  CHECK(c.proxy.threads == 3);
  CHECK(c.status == cfg::status_section{.socket = "/tmp/s.sock", .mode = 0660, .group = "mail"});
  CHECK(c.log.level == cfg::log_level::debug);
}

TEST_CASE("deploy/suction.example.toml: the contract example, every other key at its default") {
  const std::filesystem::path path = SUCTION_SOURCE_DIR "/deploy/suction.example.toml";
  const auto c = cfg::load(path);
  cfg::config want;
  want.source = path;
  want.listen.tls_cert = "/etc/suction/cert.pem";
  want.listen.tls_key = "/etc/suction/key.pem";
  want.fresh.host = "127.0.0.1";
  want.legacy.host = "old.example.net";
  want.legacy.port = 993;
  want.legacy.tls = cfg::tls_mode::implicit;
  CHECK(c.listen == want.listen);
  CHECK(c.fresh == want.fresh);
  CHECK(c.legacy == want.legacy);
  CHECK(c.limits == want.limits);
  CHECK(c.sync == want.sync);
  CHECK(c.folders == want.folders);
  CHECK(c.status == want.status);
  CHECK(c.log == want.log);
  CHECK(c == want);
}

TEST_CASE("other accepted forms") {
  SUBCASE("[status] mode as an octal or decimal integer, or an octal string") {
    for (std::string mode : {"0o640", "416", "\"0640\"", "\"640\""}) {
      INFO("mode = ", mode);
      auto c = cfg::parse(minimal + "[status]\nmode = " + mode + "\n", "test.toml");
      CHECK(c.status.mode == 0640);
    }
    CHECK(cfg::parse(minimal + "[status]\nmode = \"0\"\n", "test.toml").status.mode == 0);
    CHECK(cfg::parse(minimal + "[status]\nmode = 0o777\n", "test.toml").status.mode == 0777);
  }
  SUBCASE("rename rules as [[folders.rename]] tables") {
    const auto c = cfg::parse(minimal + R"([[folders.rename]]
from = "^Sent Items$"
to = "Sent"
[[folders.rename]]
from = "^Deleted Items$"
to = "Trash"
)",
                              "test.toml");
    CHECK(c.folders.rename ==
          std::vector<cfg::folder_rename>{{"^Sent Items$", "Sent"}, {"^Deleted Items$", "Trash"}});
  }
  SUBCASE("plaintext only: no certificate needed when imaps is \"\"") {
    const auto c = cfg::parse(servers + "[listen]\nimaps = \"\"\n", "test.toml");
    CHECK(c.listen.imaps == "");
    CHECK(c.listen.tls_cert == "");
  }
  SUBCASE("implicit TLS only") {
    const auto c = cfg::parse(minimal + "imap = \"\"\n", "test.toml");
    CHECK(c.listen.imap == "");
    CHECK(c.listen.imaps == "127.0.0.1:1993");
  }
}

TEST_CASE("to_string and the names parse() accepts are the same") {
  CHECK(cfg::to_string(cfg::tls_mode::none) == "none");
  CHECK(cfg::to_string(cfg::tls_mode::starttls) == "starttls");
  CHECK(cfg::to_string(cfg::tls_mode::implicit) == "implicit");
  CHECK(cfg::to_string(cfg::log_level::trace) == "trace");
  CHECK(cfg::to_string(cfg::log_level::debug) == "debug");
  CHECK(cfg::to_string(cfg::log_level::info) == "info");
  CHECK(cfg::to_string(cfg::log_level::warn) == "warn");
  CHECK(cfg::to_string(cfg::log_level::error) == "error");
  for (auto name : {"none", "starttls", "implicit"}) {
    // servers ends in [legacy].
    auto c = cfg::parse(servers + "tls = \"" + name + "\"\n[listen]\nimaps = \"\"\n", "test.toml");
    CHECK(cfg::to_string(c.legacy.tls) == name);
  }
  for (auto name : {"trace", "debug", "info", "warn", "error"}) {
    auto c = cfg::parse(minimal + "[log]\nlevel = \"" + name + "\"\n", "test.toml");
    CHECK(cfg::to_string(c.log.level) == name);
  }
}

TEST_CASE("split_host_port") {
  using hp = cfg::host_port;
  CHECK(cfg::split_host_port("127.0.0.1:143") == hp{"127.0.0.1", 143});
  CHECK(cfg::split_host_port("[::1]:993") == hp{"::1", 993});
  CHECK(cfg::split_host_port("*:143") == hp{"*", 143});
  CHECK(cfg::split_host_port("0.0.0.0:143") == hp{"0.0.0.0", 143});
  CHECK(cfg::split_host_port("[::]:143") == hp{"::", 143});
  CHECK(cfg::split_host_port("localhost:65535") == hp{"localhost", 65535});
  CHECK(cfg::split_host_port("[fe80::1%eth0]:1") == hp{"fe80::1%eth0", 1});
  for (auto bad : {"", "127.0.0.1", "127.0.0.1:", ":143", "::1:993", "[::1]993", "[::1:993",
                   "[::1]:", "[]:143", "[127.0.0.1]:143", "[*]:143", "host:0", "host:65536",
                   "host:99999999999", "host:+143", "host:-1", "host:14a", "host: 143",
                   "ho st:143", "*.*:143"}) {
    INFO("address: \"", bad, "\"");
    CHECK_FALSE(cfg::split_host_port(bad).has_value());
  }
}

TEST_CASE("errors: TOML syntax, with toml++'s description and line") {
  for (const auto& [text, line] : std::vector<std::pair<std::string, std::string>>{
           {minimal + "[limits\n", "test.toml:8: "},
           {"# comment\n[new]\nhost = \"a\nport = 1\n", "test.toml:3: "},
           {minimal + "[new]\n", "test.toml:8: "},  // a section twice
       }) {
    INFO("document:\n", text);
    auto message = error_of(text);
    CAPTURE(message);
    CHECK(message.starts_with(line));
    // toml++'s description follows, after exactly one ": ".
    REQUIRE(message.size() > line.size() + 10);
    CHECK(std::isalpha(static_cast<unsigned char>(message[line.size()])));
    CHECK(message.find('\n') == std::string::npos);
  }
}

TEST_CASE("errors: unknown sections and keys") {
  check_errors({
      {minimal + "[limit]\nmax_line = 1\n",
       "test.toml:8: [limit]: unknown section (did you mean \"limits\"?)"},
      {minimal + "\n[server]\n",
       "test.toml:9: [server]: unknown section "
       "(valid: listen, new, legacy, legacy_servers, users, auth, limits, sync, folders, status, metrics, proxy, "
       "log)"},
      {"level = \"info\"\n" + minimal, "test.toml:1: level: a key outside any section"},
      {"log = \"info\"\n" + minimal, "test.toml:1: [log]: expected a table, got a string"},
      {minimal + "[sync]\nstate_dbs = \"x\"\n",
       "test.toml:9: [sync] state_dbs: unknown key (did you mean \"state_db\"?)"},
      {"[new]\nhost = \"a\"\nprot = 143\n",
       "test.toml:3: [new] prot: unknown key (did you mean \"port\"?)"},
      {"[legacy]\nhost = \"b\"\n\nverify_certificates = true\n",
       "test.toml:4: [legacy] verify_certificates: "
       "unknown key (did you mean \"verify_certificate\"?)"},
      {"[legacy]\nforward_client_info = true\n",
       "test.toml:2: [legacy] forward_client_info: unknown key (valid: host, port, tls, ca_file, "
       "verify_certificate, connect_timeout, command_timeout, master_user, master_password_file, "
       "master_login, master_separator, max_connections)"},
      {minimal + "log = \"info\"\n",
       "test.toml:8: [listen] log: "
       "unknown key (valid: imap, imaps, tls_cert, tls_key, login_requires_tls, proxy_protocol_from)"},
      {"[folders]\nrename = [{from = \"a\", too = \"b\"}]\n",
       "test.toml:2: [folders] rename[0].too: unknown key (did you mean \"to\"?)"},
  });
}

TEST_CASE("errors: wrong types") {
  check_errors({
      {"[new]\nhost = 1\n", "test.toml:2: [new] host: expected a string, got an integer"},
      {"# c\n[listen]\nlogin_requires_tls = \"yes\"\n",
       "test.toml:3: [listen] login_requires_tls: expected a boolean, got a string"},
      {"[limits]\nrelay_idle = 1.5\n",
       "test.toml:2: [limits] relay_idle: expected an integer (seconds), got a float"},
      {"[legacy]\nport = \"993\"\n",
       "test.toml:2: [legacy] port: expected an integer, got a string"},
      {"[sync]\nconnections_per_user = [2]\n",
       "test.toml:2: [sync] connections_per_user: expected an integer, got an array"},
      {"[log]\nlevel = 2024-01-01\n", "test.toml:2: [log] level: expected a string, got a date"},
      {"[folders]\nexclude = \"^Trash$\"\n",
       "test.toml:2: [folders] exclude: expected an array of regexes, got a string"},
      {"[folders]\nexclude = [\n  \"a\",\n  1,\n]\n",
       "test.toml:4: [folders] exclude[1]: expected a string, got an integer"},
      {"[folders]\nrename = [\"a\"]\n",
       "test.toml:2: [folders] rename[0]: "
       "expected a table {from = \"regex\", to = \"replacement\"}, got a string"},
      {"[folders]\nrename = {from = \"a\", to = \"b\"}\n",
       "test.toml:2: [folders] rename: expected an array of {from, to} tables, got a table"},
      {"[status]\nmode = true\n",
       "test.toml:2: [status] mode: expected an integer or a string, got a boolean"},
  });
}

TEST_CASE("errors: numbers out of range") {
  check_errors({
      {"[new]\nhost = \"a\"\nport = 0\n",
       "test.toml:3: [new] port: must be between 1 and 65535 (got 0)"},
      {"[legacy]\nport = 65536\n",
       "test.toml:2: [legacy] port: must be between 1 and 65535 (got 65536)"},
      {"[legacy]\nport = -143\n",
       "test.toml:2: [legacy] port: must be between 1 and 65535 (got -143)"},
      {"[legacy]\nmax_connections = 0\n",
       "test.toml:2: [legacy] max_connections: must be at least 1 (got 0)"},
      {"[new]\nconnect_timeout = 0\n",
       "test.toml:2: [new] connect_timeout: must be at least 1 (got 0)"},
      {"[legacy]\ncommand_timeout = 0\n",
       "test.toml:2: [legacy] command_timeout: must be at least 1 (got 0)"},
      {"[limits]\nmax_line = 0\n", "test.toml:2: [limits] max_line: must be at least 1 (got 0)"},
      {"[limits]\nmax_literal = 0\n",
       "test.toml:2: [limits] max_literal: must be at least 1 (got 0)"},
      {"[limits]\nlogin_attempts = 0\n",
       "test.toml:2: [limits] login_attempts: must be at least 1 (got 0)"},
      {"[limits]\npreauth_idle = 0\n",
       "test.toml:2: [limits] preauth_idle: must be at least 1 (got 0)"},
      {"[limits]\npreauth_total = 0\n",
       "test.toml:2: [limits] preauth_total: must be at least 1 (got 0)"},
      {"[limits]\nrelay_idle = 0\n",
       "test.toml:2: [limits] relay_idle: must be at least 1 (got 0)"},
      {"[limits]\nmax_connections = 0\n",
       "test.toml:2: [limits] max_connections: must be at least 1 (got 0)"},
      {"[limits]\nmax_connections_per_ip = 0\n",
       "test.toml:2: [limits] max_connections_per_ip: must be at least 1 (got 0)"},
      {"[sync]\nconnections_per_user = 0\n",
       "test.toml:2: [sync] connections_per_user: must be at least 1 (got 0)"},
      {"[sync]\nmax_concurrent_users = 0\n",
       "test.toml:2: [sync] max_concurrent_users: must be at least 1 (got 0)"},
      {"[sync]\nresync_interval = -1\n",
       "test.toml:2: [sync] resync_interval: must not be negative (got -1)"},
      {"[proxy]\nthreads = 257\n", "test.toml:2: [proxy] threads: must be at most 256 (got 257)"},
      {"[proxy]\nthreads = -1\n", "test.toml:2: [proxy] threads: must not be negative (got -1)"},
      {"[sync]\nlease = 4\n", "test.toml:2: [sync] lease: must be at least 5 (got 4)"},
      {"[sync]\nnode_name = \"node a\"\n",
       "test.toml:2: [sync] node_name: a node name is at most 64 letters, digits, '.', '-' and '_'"},
      {"[sync]\nbatch_messages = 0\n",
       "test.toml:2: [sync] batch_messages: must be at least 1 (got 0)"},
      {"[sync]\nbatch_bytes = 1000\n",
       "test.toml:2: [sync] batch_bytes: must be at least 65536 (got 1000)"},
      {"[limits]\nshutdown_grace = -1\n",
       "test.toml:2: [limits] shutdown_grace: must not be negative (got -1)"},
      {"[limits]\nmax_bad_commands = -1\n",
       "test.toml:2: [limits] max_bad_commands: must not be negative (got -1)"},
      {"[limits]\nmax_line = 4294967296\n",
       "test.toml:2: [limits] max_line: must be at most 4294967295 (got 4294967296)"},
      {"[sync]\ncredential_ttl = 31536001\n",
       "test.toml:2: [sync] credential_ttl: must be at most 31536000 (got 31536001)"},
  });
}

TEST_CASE("errors: values outside the allowed set") {
  const std::string bad_mode =
      "test.toml:2: [status] mode: expected a file mode 0..0777 in octal, like 0o600 or \"0600\"";
  check_errors({
      {"[new]\nhost = \"a\"\ntls = \"ssl\"\n",
       "test.toml:3: [new] tls: expected one of none, starttls, implicit (got \"ssl\")"},
      {"[legacy]\ntls = \"STARTTLS\"\n",
       "test.toml:2: [legacy] tls: expected one of none, starttls, implicit (got \"STARTTLS\")"},
      {"[log]\nlevel = \"warning\"\n",
       "test.toml:2: [log] level: "
       "expected one of trace, debug, info, warn, error (got \"warning\")"},
      // A value quoted from a multi-line string keeps the message on one line.
      {"[log]\nlevel = \"\"\"\nloud\n\"\"\"\n",
       "test.toml:2: [log] level: expected one of trace, debug, info, warn, error (got \"loud \")"},
      {"[status]\nmode = \"0698\"\n", bad_mode + " (got \"0698\")"},
      {"[status]\nmode = \"1777\"\n", bad_mode + " (got \"1777\")"},
      {"[status]\nmode = \"\"\n", bad_mode + " (got \"\")"},
      {"[status]\nmode = 0o1000\n", bad_mode + " (got 0o1000)"},
      {"[status]\nmode = -1\n", bad_mode + " (got -1)"},
  });
}

TEST_CASE("errors: the servers' hosts are required") {
  check_errors({
      {"# c\n\n[new]\nport = 143\n[legacy]\nhost = \"b\"\n[listen]\nimaps = \"\"\n",
       "test.toml:3: [new] host: required (the server suction fronts)"},
      {"[legacy]\nhost = \"b\"\n[listen]\nimaps = \"\"\n",
       "test.toml:1: [new] host: required (the server suction fronts)"},
      {"[new]\nport = 143\nhost = \"\"\n", "test.toml:3: [new] host: must not be empty"},
      {"[new]\nhost = \"a\"\n[legacy]\nport = 993\n[listen]\nimaps = \"\"\n",
       "test.toml:3: [legacy] host: required (the server mail is copied from)"},
      {"[new]\nhost = \"a\"\n[listen]\nimaps = \"\"\n",
       "test.toml:1: [legacy] host: required (the server mail is copied from)"},
      {"[legacy]\nhost = \"\"\n", "test.toml:2: [legacy] host: must not be empty"},
  });
}

TEST_CASE("errors: listen addresses and TLS for the listeners") {
  const std::string bad_address =
      "expected \"HOST:PORT\" or \"[IPv6]:PORT\" with a port 1..65535, or \"\" to disable";
  check_errors({
      {"[listen]\nimap = \"127.0.0.1\"\n",
       "test.toml:2: [listen] imap: " + bad_address + " (got \"127.0.0.1\")"},
      {"[listen]\nimap = \"\"\nimaps = \"::1:993\"\n",
       "test.toml:3: [listen] imaps: " + bad_address + " (got \"::1:993\")"},
      {"[listen]\nimap = \"127.0.0.1:0\"\n",
       "test.toml:2: [listen] imap: " + bad_address + " (got \"127.0.0.1:0\")"},
      {"[listen]\nimaps = \"[::1]:99999\"\n",
       "test.toml:2: [listen] imaps: " + bad_address + " (got \"[::1]:99999\")"},
      {servers + "[listen]\nimap = \"\"\nimaps = \"\"\n",
       "test.toml:6: [listen] imap: nothing to listen on (imap and imaps are both \"\")"},
      // imaps is on by default, so a config without [listen] needs a certificate.
      {servers, "test.toml:1: [listen] tls_cert: required when imaps is set"},
      {servers + "[listen]\nimap = \"*:143\"\n",
       "test.toml:5: [listen] tls_cert: required when imaps is set"},
      {servers + "[listen]\nimaps = \"[::]:993\"\ntls_cert = \"c.pem\"\n",
       "test.toml:6: [listen] tls_key: required when imaps is set"},
      {servers + "[listen]\nimaps = \"\"\n\nlogin_requires_tls = true\n",
       "test.toml:8: [listen] tls_cert: required when login_requires_tls = true"},
      {servers + "[listen]\nimaps = \"\"\ntls_key = \"k.pem\"\n",
       "test.toml:7: [listen] tls_cert: required with tls_key"},
      {servers + "[listen]\nimaps = \"\"\ntls_cert = \"c.pem\"\n",
       "test.toml:7: [listen] tls_key: required with tls_cert"},
  });
}

TEST_CASE("errors: [folders] regexes") {
  check_errors({
      {"[folders]\nrename = [\n"
       "  {from = \"^Sent$\", to = \"Sent\"},\n"
       "  {from = \"(Junk\", to = \"Junk\"},\n"
       "]\n",
       "test.toml:4: [folders] rename[1].from: invalid regex \"(Junk\": " + regex_error("(Junk")},
      {"[folders]\nexclude = [\"^Trash$\", \"[z-a]\"]\n",
       "test.toml:2: [folders] exclude[1]: invalid regex \"[z-a]\": " + regex_error("[z-a]")},
      {"[[folders.rename]]\nfrom = \"^a$\"\nto = \"b\"\n"
       "[[folders.rename]]\nfrom = \"*\"\nto = \"b\"\n",
       "test.toml:5: [folders] rename[1].from: invalid regex \"*\": " + regex_error("*")},
      {"[folders]\nexclude = [\"\"]\n", "test.toml:2: [folders] exclude[0]: must not be empty"},
      {"[folders]\nrename = [\n  {from = \"^a$\"},\n]\n",
       "test.toml:3: [folders] rename[0].to: required"},
      {"[folders]\nrename = [{to = \"b\"}]\n", "test.toml:2: [folders] rename[0].from: required"},
  });
  // The expected messages above are only meaningful if std::regex rejects these.
  CHECK(regex_error("(Junk") != "(compiles)");
  CHECK(regex_error("[z-a]") != "(compiles)");
  CHECK(regex_error("*") != "(compiles)");
}

TEST_CASE("errors: the first problem in the file is the one reported") {
  // toml++ keeps keys sorted; alphabetical order would name [limits] and max_line.
  check_errors({
      {"[sync]\nconnections_per_user = 0\n[limits]\nmax_line = 0\n",
       "test.toml:2: [sync] connections_per_user: must be at least 1 (got 0)"},
      {"[limits]\nrelay_idle = 0\nmax_line = 0\n",
       "test.toml:2: [limits] relay_idle: must be at least 1 (got 0)"},
  });
}

TEST_CASE("load: reads the file and names it in messages") {
  temp_dir dir;
  SUBCASE("a valid file") {
    auto path = dir.write("suction.toml", minimal);
    auto c = cfg::load(path);
    CHECK(c.source == path);
    CHECK(c.fresh.host == "new.example.net");
  }
  SUBCASE("a missing file") {
    auto path = dir.path / "absent.toml";
    auto expected = path.string() + ": cannot read: No such file or directory";
    CHECK_THROWS_WITH_AS(cfg::load(path), expected.c_str(), cfg::config_error);
  }
  SUBCASE("a directory") {
    auto expected = dir.path.string() + ": cannot read: Is a directory";
    CHECK_THROWS_WITH_AS(cfg::load(dir.path), expected.c_str(), cfg::config_error);
  }
  SUBCASE("an error in the file") {
    auto path = dir.write("bad.toml", minimal + "[log]\nlevel = \"loud\"\n");
    auto expected = path.string() +
                    ":9: [log] level: "
                    "expected one of trace, debug, info, warn, error (got \"loud\")";
    CHECK_THROWS_WITH_AS(cfg::load(path), expected.c_str(), cfg::config_error);
  }
}

TEST_CASE("check_files: one line per referenced file that cannot be read") {
  temp_dir dir;
  cfg::config c;
  c.source = "suction.toml";
  c.listen.tls_cert = dir.write("cert.pem", "-----BEGIN CERTIFICATE-----\n").string();
  c.listen.tls_key = dir.write("key.pem", "-----BEGIN PRIVATE KEY-----\n").string();
  SUBCASE("all readable; \"\" ca_file is the system store") {
    CHECK(cfg::check_files(c).empty());
    c.fresh.ca_file = c.listen.tls_cert;
    c.legacy.ca_file = c.listen.tls_cert;
    CHECK(cfg::check_files(c).empty());
  }
  SUBCASE("a missing certificate") {
    c.listen.tls_cert = (dir.path / "missing.pem").string();
    CHECK(cfg::check_files(c) == std::vector<std::string>{
                                     "suction.toml: [listen] tls_cert: cannot read \"" +
                                     c.listen.tls_cert + "\": No such file or directory"});
  }
  SUBCASE("several problems, in the order of the file's sections") {
    c.listen.tls_key = dir.path.string();
    c.fresh.ca_file = dir.write("empty.pem", "").string();
    c.legacy.ca_file = "/nonexistent/ca.pem";
    CHECK(cfg::check_files(c) ==
          std::vector<std::string>{
              "suction.toml: [listen] tls_key: cannot read \"" + dir.path.string() +
                  "\": Is a directory",
              "suction.toml: [new] ca_file: \"" + c.fresh.ca_file + "\" is empty",
              "suction.toml: [legacy] ca_file: cannot read \"/nonexistent/ca.pem\": "
              "No such file or directory"});
  }
}

TEST_CASE("[auth] verify and the master credentials of [new] and [legacy]") {
  SUBCASE("read into their fields") {
    auto c = cfg::parse(R"([new]
host = "new.example.net"
master_user = "admin"
master_password_file = "/etc/suction/new-master.pw"
master_login = "separator"
master_separator = "%"
[legacy]
host = "old.example.net"
[listen]
imaps = ""
[auth]
verify = "new_then_legacy"
failure_delay = 0
max_failures = 5
failure_window = 60
)",
                        "test.toml");
    CHECK(c.auth.verify == cfg::verify_mode::fresh_then_legacy);
    CHECK(c.auth.failure_delay == 0s);
    CHECK(c.auth.max_failures == 5u);
    CHECK(c.auth.failure_window == 60s);
    CHECK(c.fresh.master_user == "admin");
    CHECK(c.fresh.master_login == cfg::master_login_form::separator);
    CHECK(c.fresh.master_separator == "%");
    CHECK(cfg::parse(minimal, "test.toml").auth.verify == cfg::verify_mode::fresh);
    auto p = cfg::parse(minimal + "[auth]\nprovision_command = [\"/usr/local/bin/prov\", \"\", \"--x\"]\n"
                                  "provision_timeout = 30\n",
                        "test.toml");
    CHECK(p.auth.provision_command == std::vector<std::string>{"/usr/local/bin/prov", "", "--x"});
    CHECK(p.auth.provision_timeout == 30s);
  }
  SUBCASE("errors name file, line, section and key") {
    check_errors({
        {minimal + "[auth]\nverify = \"legacy\"\n",
         "test.toml:9: [new] master_user: required with [auth] verify = \"legacy\" (the new "
         "server is logged in to with master credentials)"},
        {minimal + "[auth]\nverify = \"old\"\n",
         "test.toml:9: [auth] verify: expected one of new, legacy, new_then_legacy (got \"old\")"},
        {servers + "master_user = \"admin\"\n[listen]\nimaps = \"\"\n",
         "test.toml:5: [legacy] master_password_file: required with master_user"},
        {minimal + "[auth]\nprovision_command = [\"prov.sh\"]\n",
         "test.toml:9: [auth] provision_command: the program must be an absolute path (got \"prov.sh\")"},
        {minimal + "[auth]\nprovision_command = \"/bin/prov --x\"\n",
         "test.toml:9: [auth] provision_command: expected an array of strings (the program and "
         "its arguments, no shell), got a string"},
    });
  }
}

TEST_CASE("a master password file: first line, mode 0600 or stricter, never echoed") {
  char tmpl[] = "/tmp/suction-pw-XXXXXX";
  REQUIRE(mkdtemp(tmpl));
  const std::string dir = tmpl;
  const std::string path = dir + "/master.pw";
  {
    std::ofstream f(path);
    f << "s3cret\r\nsecond line\n";
  }
  auto c = cfg::parse(minimal, "test.toml");
  chmod(path.c_str(), 0600);
  CHECK(cfg::read_password_file(c, "new", "master_password_file", path) == "s3cret");
  chmod(path.c_str(), 0640);
  try {
    cfg::read_password_file(c, "new", "master_password_file", path);
    FAIL("a group-readable file was accepted");
  } catch (const cfg::config_error& e) {
    const std::string what = e.what();
    CHECK(what == "test.toml: [new] master_password_file: \"" + path +
                      "\" is readable or writable by group or others (chmod 600 it)");
    CHECK(what.find("s3cret") == std::string::npos);
  }
  c.fresh.master_user = "admin";
  c.fresh.master_password_file = path;
  auto problems = cfg::check_files(c);  // also cert.pem and key.pem, which do not exist here
  std::erase_if(problems, [](const std::string& p) { return p.find("master_password_file") == std::string::npos; });
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("readable or writable by group or others") != std::string::npos);
  {
    std::ofstream f(path, std::ios::trunc);
  }
  chmod(path.c_str(), 0600);
  CHECK_THROWS_WITH_AS(cfg::read_password_file(c, "new", "master_password_file", path),
                       ("test.toml: [new] master_password_file: \"" + path +
                        "\" is empty (the password is its first line)")
                           .c_str(),
                       cfg::config_error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("[listen] proxy_protocol_from: a list of addresses or networks") {
  const auto c = cfg::parse(servers + "[listen]\nimaps = \"\"\nproxy_protocol_from = [\"10.0.0.0/8\", \"::1\"]\n",
                            "test.toml");
  CHECK(c.listen.proxy_protocol_from == std::vector<std::string>{"10.0.0.0/8", "::1"});
  CHECK(error_of(servers + "[listen]\nimaps = \"\"\nproxy_protocol_from = \"10.0.0.0/8\"\n") ==
        "test.toml:7: [listen] proxy_protocol_from: expected an array of addresses or networks "
        "(\"10.0.0.0/8\"), got a string");
  CHECK(error_of(servers + "[listen]\nimaps = \"\"\nproxy_protocol_from = [\"\"]\n") ==
        "test.toml:7: [listen] proxy_protocol_from[0]: must not be empty");
}
