#include "proxy/cli/migrate_command.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <vector>

#include "config/config.hpp"
#include "proxy/cli/options.hpp"
#include "proxy/cli/users_file.hpp"
#include "sync/state_store.hpp"
#include "sync/user_sync.hpp"

namespace suction::cli {

namespace asio = boost::asio;

namespace {

// The users of the list, migrated at most `users_at_once` at a time; the
// extra connection pairs of a big mailbox come out of what the legacy cap
// has left (one io_context, one thread: plain counters).
struct bulk_run {
  const sync::user_sync_options& opts;
  sync::state_store& state;
  const std::vector<std::string>& users;
  std::size_t next = 0;
  std::uint32_t legacy_free = 0;  // connections to legacy not in use
  std::vector<sync::user_sync_report> reports;
};

asio::awaitable<void> bulk_worker(bulk_run& run, asio::any_io_executor ex) {
  while (run.next < run.users.size()) {
    const std::size_t i = run.next++;
    --run.legacy_free;  // the user's first pair
    sync::user_sync_options o = run.opts;
    o.acquire_connections = [&run](std::uint32_t n) {
      const std::uint32_t granted = std::min(n, run.legacy_free);
      run.legacy_free -= granted;
      return granted;
    };
    o.release_connections = [&run](std::uint32_t n) { run.legacy_free += n; };
    // No password: both servers are logged in to with their master credentials.
    run.reports[i] = co_await sync::sync_user(ex, o, run.users[i], "", run.state, false);
    ++run.legacy_free;
    std::fprintf(stderr, "suction: migrate %s\n", sync::describe_run(run.reports[i]).c_str());
  }
}

}  // namespace

CLI::App* add_migrate_subcommand(CLI::App& app, migrate_command_args& a) {
  auto* cmd = app.add_subcommand(
      "migrate",
      "Migrate a list of users who may never log in, with the master credentials of [legacy] "
      "and [new] ([legacy]/[new] master_user, master_password_file).\n"
      "Exit codes: 0 every user migrated; 1 some not, or no master credentials; 2 bad command "
      "line, config or users file");
  cmd->add_option("-c,--config", a.config_path, "Configuration file (TOML)")->required();
  cmd->add_option("--users", a.users_path,
                  "File of users: one login per line, or a CSV whose first column is the login")
      ->required();
  cmd->add_flag("--standalone", a.standalone,
                "Run the migrations in this process (required for now: handing them to the "
                "running daemon is not there yet)");
  cmd->add_flag("--json", a.json, "Print the per-user results as one JSON document");
  return cmd;
}

int run_migrate_command(const migrate_command_args& a) {
  if (!a.standalone) {
    std::fputs("suction migrate: --standalone is required (handing users to the running "
               "daemon is not implemented yet)\n",
               stderr);
    return 2;
  }
  const auto cfg = load_config(a.config_path, true);
  if (!cfg) return 2;
  std::vector<std::string> users;
  std::string why;
  if (!read_users(a.users_path, users, why)) {
    std::fprintf(stderr, "suction migrate: %s\n", why.c_str());
    return 2;
  }
  // Nobody's password is known here: without master credentials nothing is
  // guessed, the users are listed as needing a login.
  if (cfg->legacy.master_user.empty() || cfg->fresh.master_user.empty()) {
    const char* missing = cfg->legacy.master_user.empty() ? "[legacy]" : "[new]";
    for (const auto& u : users)
      std::printf("%s: not migrated: needs a login (no %s master_user)\n", u.c_str(), missing);
    std::fprintf(stderr,
                 "suction migrate: %s: %s master_user and master_password_file are required to "
                 "migrate users who do not log in; %zu users listed as needing a login\n",
                 cfg->source.c_str(), missing, users.size());
    return 1;
  }
  sync::user_sync_options opts;
  try {
    opts = sync_options_from(*cfg);
    opts.legacy.master = master_of(*cfg, cfg->legacy, "legacy");
    opts.fresh.master = master_of(*cfg, cfg->fresh, "new");
  } catch (const config::config_error& e) {
    std::fprintf(stderr, "suction: %s\n", e.what());
    return 2;
  }
  std::vector<sync::user_sync_report> reports;
  try {
    std::filesystem::path db = cfg->sync.state_db;
    if (db.has_parent_path()) std::filesystem::create_directories(db.parent_path());
    sync::state_store state(db);
    state.mark_interrupted(static_cast<std::int64_t>(std::time(nullptr)));
    bulk_run run{opts, state, users};
    run.reports.resize(users.size());
    const std::uint32_t cap = std::max<std::uint32_t>(1, cfg->legacy.max_connections);
    run.legacy_free = cap;
    const std::size_t workers = std::min<std::size_t>(
        {users.size(), std::max<std::uint32_t>(1, cfg->sync.max_concurrent_users), cap});
    asio::io_context io(1);
    std::exception_ptr failure;
    for (std::size_t w = 0; w < workers; ++w)
      asio::co_spawn(io, bulk_worker(run, io.get_executor()), [&](std::exception_ptr e) {
        if (e && !failure) failure = e;
      });
    io.run();
    if (failure) std::rethrow_exception(failure);
    reports = std::move(run.reports);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "suction migrate: %s\n", e.what());
    return 1;
  }
  std::size_t ok = 0;
  std::uint64_t messages = 0, bytes = 0;
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : reports) {
    ok += r.outcome == sync::sync_outcome::ok ? 1 : 0;
    messages += r.messages_copied;
    bytes += r.bytes;
    out.push_back({{"user", r.user},
                   {"outcome", sync::to_string(r.outcome)},
                   {"failure", sync::to_string(r.failure)},
                   {"messages_copied", r.messages_copied},
                   {"bytes", r.bytes},
                   {"error", r.errors.empty() ? std::string() : r.errors.front()}});
  }
  if (a.json)
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  else
    std::printf("%zu of %zu users migrated; %llu messages, %llu bytes copied\n", ok, reports.size(),
                static_cast<unsigned long long>(messages), static_cast<unsigned long long>(bytes));
  return ok == reports.size() ? 0 : 1;
}

}  // namespace suction::cli
