#include "proxy/cli/migrate_command.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "proxy/cli/accounts.hpp"
#include "proxy/cli/options.hpp"
#include "proxy/cli/status_link.hpp"
#include "proxy/cli/users_file.hpp"
#include "sync/scheduler.hpp"

namespace suction::cli {

namespace {

using json = nlohmann::json;

// Requests sent before their answers are read: the daemon answers in order,
// and a bounded window keeps both sides' socket buffers from filling.
constexpr std::size_t kEnqueueWindow = 64;

// The users handed to the running daemon. Exit 0 when it queued them all.
int hand_to_daemon(const config::config& cfg, const std::vector<std::string>& users, bool as_json) {
  std::size_t queued = 0;
  json out = json::array();
  try {
    // 30 s, and one more per thousand users: a stuck daemon still ends it.
    daemon_link link(cfg.status.socket,
                     std::chrono::seconds(30 + users.size() / 1000));
    link.connect();
    for (std::size_t first = 0; first < users.size(); first += kEnqueueWindow) {
      const std::size_t last = std::min(users.size(), first + kEnqueueWindow);
      std::string requests;
      for (std::size_t i = first; i < last; ++i)
        requests += json{{"cmd", "enqueue"}, {"user", users[i]}}.dump() + "\n";
      link.send_all(requests);
      for (std::size_t i = first; i < last; ++i) {
        json a = json::parse(link.read_line(), nullptr, false);
        const bool ok = a.is_object() && a.value("ok", false);
        const std::string why = ok ? "" : (a.is_object() ? a.value("error", "no answer") : "bad answer");
        queued += ok ? 1 : 0;
        out.push_back({{"user", users[i]}, {"queued", ok}, {"error", why}});
        if (!ok && !as_json) std::printf("%s: not queued: %s\n", users[i].c_str(), why.c_str());
      }
    }
  } catch (const link_failure& f) {
    std::fprintf(stderr, "suction migrate: %s\n", f.message.c_str());
    return 1;
  }
  if (as_json)
    std::printf("%s\n", out.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  else
    std::printf("%zu of %zu users queued by the daemon at %s (behind the users who log in); "
                "`suction status` and `suction report` show their progress\n",
                queued, users.size(), cfg.status.socket.c_str());
  return queued == users.size() ? 0 : 1;
}

// One user of the list as the standalone run sees it.
struct listed {
  std::string login;
  config::account account;
  std::string refused;  // the scheduler would not queue it: why
};

bool finished(const std::optional<sync::user_view>& v) {
  return v && (v->state == sync::user_state::done || v->state == sync::user_state::failed);
}

// "[########............]  12/30 users  3 running  1 failed  1,234 messages  12.3 MiB"
void draw_progress(const std::vector<listed>& list, const sync::scheduler& s, bool final) {
  std::size_t done = 0, failed = 0, running = 0;
  std::uint64_t messages = 0, bytes = 0;
  for (const auto& u : list) {
    auto v = s.user(u.account.identity);
    if (!v) continue;
    done += v->state == sync::user_state::done;
    failed += v->state == sync::user_state::failed;
    running += v->state == sync::user_state::running;
    messages += v->progress.messages_copied;
    bytes += v->progress.bytes_copied;
  }
  constexpr std::size_t width = 20;
  const std::size_t total = std::max<std::size_t>(1, list.size());
  const std::size_t filled = (done + failed) * width / total;
  std::fprintf(stderr, "\r[%s%s] %zu/%zu users  %zu running  %zu failed  %llu messages  %.1f MiB%s",
               std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
               done + failed, list.size(), running, failed,
               static_cast<unsigned long long>(messages), bytes / 1048576.0, final ? "\n" : "");
  std::fflush(stderr);
}

int run_standalone(const config::config& cfg, const account_book& accounts,
                   const std::vector<std::string>& users, bool as_json) {
  sync::scheduler_options opts = scheduler_options_from(cfg);
  // A command, not a daemon: retried as `suction sync --retries` does (1 s
  // to 60 s), and every run's line on stderr.
  opts.retry = sync::backoff_policy{std::chrono::seconds(1), std::chrono::seconds(60), 5};
  opts.log = [](const std::string& line) {
    std::fprintf(stderr, "%ssuction: %s\n", isatty(2) ? "\r\033[K" : "", line.c_str());
  };
  sync::scheduler s(std::move(opts));
  s.start();
  std::vector<listed> list;
  std::map<std::string, std::size_t> by_identity;  // two logins of one account: one job
  for (const auto& login : users) {
    listed u{login, accounts.resolve(login), {}};
    if (by_identity.emplace(u.account.identity, list.size()).second)
      u.refused = s.enqueue(to_identity(u.account), u.account.legacy_server);
    else
      u.refused = "the same account as " + list[by_identity[u.account.identity]].login;
    list.push_back(std::move(u));
  }
  const bool tty = isatty(2) == 1;
  for (;;) {
    bool all = true;
    for (const auto& u : list)
      if (u.refused.empty() && !finished(s.user(u.account.identity))) all = false;
    if (all) break;
    if (tty) draw_progress(list, s, false);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (tty) draw_progress(list, s, true);
  s.stop();

  std::size_t ok = 0;
  std::uint64_t messages = 0, bytes = 0;
  json out = json::array();
  for (const auto& u : list) {
    auto v = s.user(u.account.identity);
    auto runs = s.runs(u.account.identity, 1);
    const bool done = u.refused.empty() && v && v->state == sync::user_state::done;
    const std::uint64_t m = !u.refused.empty() || runs.empty() ? 0 : runs.front().messages_copied;
    const std::uint64_t b = !u.refused.empty() || runs.empty() ? 0 : runs.front().bytes_copied;
    const std::string error = !u.refused.empty() ? u.refused : v ? v->last_error : "";
    ok += done;
    messages += m;
    bytes += b;
    out.push_back({{"user", u.login},
                   {"identity", u.account.identity},
                   {"legacy_server", u.account.legacy_server.empty() ? "legacy" : u.account.legacy_server},
                   {"outcome", done ? "ok" : !u.refused.empty() ? "not_queued" : "failed"},
                   {"messages_copied", m},
                   {"bytes", b},
                   {"error", error}});
    if (!done && !as_json) std::printf("%s: not migrated: %s\n", u.login.c_str(), error.c_str());
  }
  if (as_json)
    std::printf("%s\n", out.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
  else
    std::printf("%zu of %zu users migrated; %llu messages, %llu bytes copied\n", ok, list.size(),
                static_cast<unsigned long long>(messages), static_cast<unsigned long long>(bytes));
  return ok == list.size() ? 0 : 1;
}

}  // namespace

CLI::App* add_migrate_subcommand(CLI::App& app, migrate_command_args& a) {
  auto* cmd = app.add_subcommand(
      "migrate",
      "Migrate a list of users who may never log in, with the master credentials of their legacy "
      "server and of [new] (master_user, master_password_file): handed to the running daemon "
      "(status socket), or with --standalone run here.\n"
      "Exit codes: 0 every user queued (or, --standalone, migrated); 1 some not, no master "
      "credentials, or no daemon; 2 bad command line, config or users file");
  cmd->add_option("-c,--config", a.config_path, "Configuration file (TOML)")->required();
  cmd->add_option("--users", a.users_path,
                  "File of users: one login per line, or the map CSV (first column the login)")
      ->required();
  cmd->add_flag("--standalone", a.standalone,
                "Run the migrations in this process instead of handing them to the daemon");
  cmd->add_flag("--json", a.json, "Print the per-user results as one JSON document");
  return cmd;
}

int run_migrate_command(const migrate_command_args& a) {
  const auto cfg = load_config(a.config_path, true);
  if (!cfg) return 2;
  std::vector<std::string> users;
  std::string why;
  if (!read_users(a.users_path, users, why)) {
    std::fprintf(stderr, "suction migrate: %s\n", why.c_str());
    return 2;
  }
  std::optional<account_book> accounts;
  try {
    accounts.emplace(*cfg);
  } catch (const config::config_error& e) {
    std::fprintf(stderr, "suction: %s\n", e.what());
    return 2;
  }
  // Nobody's password is known here: without master credentials nothing is
  // guessed, the users are listed as needing a login.
  std::vector<std::string> missing;
  if (cfg->fresh.master_user.empty()) missing.push_back("[new]");
  for (const auto& u : users) {
    const std::string server = accounts->resolve(u).legacy_server;
    const config::legacy_section* l = config::find_legacy(*cfg, server);
    if (l && l->master_user.empty()) {
      const std::string name = server.empty() ? "[legacy]" : "[legacy_servers." + server + "]";
      if (std::find(missing.begin(), missing.end(), name) == missing.end()) missing.push_back(name);
    }
  }
  if (!missing.empty()) {
    std::string names;
    for (const auto& m : missing) names += (names.empty() ? "" : ", ") + m;
    for (const auto& u : users)
      std::printf("%s: not migrated: needs a login (no %s master_user)\n", u.c_str(), names.c_str());
    std::fprintf(stderr,
                 "suction migrate: %s: %s master_user and master_password_file are required to "
                 "migrate users who do not log in; %zu users listed as needing a login\n",
                 cfg->source.c_str(), names.c_str(), users.size());
    return 1;
  }
  if (!a.standalone) return hand_to_daemon(*cfg, users, a.json);
  try {
    return run_standalone(*cfg, *accounts, users, a.json);
  } catch (const config::config_error& e) {
    std::fprintf(stderr, "suction: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "suction migrate: %s\n", e.what());
    return 1;
  }
}

}  // namespace suction::cli
