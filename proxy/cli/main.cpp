// The `suction` command line.
#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>

#include "config/config.hpp"
#include "proxy/cli/metrics.hpp"
#include "proxy/cli/migration.hpp"
#include "proxy/cli/migrate_command.hpp"
#include "proxy/cli/options.hpp"
#include "proxy/cli/report_command.hpp"
#include "proxy/cli/status_command.hpp"
#include "proxy/cli/sync_command.hpp"
#include "proxy/daemon.hpp"

namespace {

spdlog::level::level_enum to_spdlog(suction::config::log_level l) {
  using suction::config::log_level;
  switch (l) {
    case log_level::trace: return spdlog::level::trace;
    case log_level::debug: return spdlog::level::debug;
    case log_level::info: return spdlog::level::info;
    case log_level::warn: return spdlog::level::warn;
    case log_level::error: return spdlog::level::err;
  }
  return spdlog::level::info;
}

int run_proxy(const std::string& config_path) {
  auto cfg = suction::cli::load_config(config_path, true);
  if (!cfg) return 2;
  auto logger = spdlog::stderr_color_mt("suction");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_level(to_spdlog(cfg->log.level));
  spdlog::flush_on(spdlog::level::trace);

  // Migration at login: the scheduler (its own thread) behind the login
  // trigger and the status socket.
  std::shared_ptr<suction::cli::account_book> accounts;
  suction::sync::scheduler_options sched;
  suction::proxy::options popts;
  try {
    accounts = std::make_shared<suction::cli::account_book>(*cfg);
    sched = suction::cli::scheduler_options_from(*cfg);
    popts = suction::cli::proxy_options_from(*cfg);
  } catch (const suction::config::config_error& e) {
    std::fprintf(stderr, "suction: %s\n", e.what());
    return 2;
  }
  // [users]: every login's names, and the map file read again on SIGHUP.
  popts.map_login = [accounts](std::string_view login) {
    return suction::cli::to_mapped(accounts->resolve(login));
  };
  popts.reload = [accounts] { return accounts->reload(); };
  // [metrics]: the histograms are fed from the start; served once all runs.
  std::shared_ptr<suction::cli::metrics_endpoint> metrics;
  if (!cfg->metrics.listen.empty()) {
    metrics = std::make_shared<suction::cli::metrics_endpoint>();
    popts.observe_login = [metrics](std::chrono::milliseconds d) { metrics->observe_login(d); };
    sched.observe_run = [metrics](std::chrono::milliseconds d) { metrics->observe_run(d); };
  }
  std::shared_ptr<suction::cli::migration> migration;
  try {
    migration = std::make_shared<suction::cli::migration>(std::move(sched), accounts);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "suction: %s: [sync] state_db: %s\n", cfg->source.c_str(), e.what());
    return 1;
  }
  boost::asio::io_context io(1);
  suction::proxy::daemon d(io, std::move(popts), migration, migration.get());
  migration->set_proxy_stats([&d] { return d.stats(); });
  if (metrics) {
    metrics->set_sources([&d] { return d.stats(); }, [migration] { return migration->totals(); });
    try {
      metrics->start(cfg->metrics.listen);
    } catch (const std::exception& e) {
      metrics->stop();  // it holds the migration: let the scheduler stop with it
      std::fprintf(stderr, "suction: %s: [metrics] listen: %s\n", cfg->source.c_str(), e.what());
      return 1;
    }
    spdlog::info("metrics at http://{}/metrics", cfg->metrics.listen);
  }
  try {
    d.start();
  } catch (const suction::proxy::startup_error& e) {
    if (metrics) metrics->stop();
    std::fprintf(stderr, "suction: %s\n", e.what());
    return 1;
  }
  io.run();
  if (metrics) metrics->stop();  // its scrapes read `d` and the scheduler
  migration->stop();  // running jobs end as "interrupted" and resume at the next login
  spdlog::info("stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "suction: a transparent IMAP proxy that migrates each user's mail from the legacy "
      "server when they log in"};
  app.set_version_flag("--version", std::string("suction ") + SUCTION_VERSION);
  app.require_subcommand(0, 1);

  std::string config_path;
  auto* proxy = app.add_subcommand("proxy", "Run the IMAP proxy in the foreground (logs to stderr)");
  proxy->add_option("-c,--config", config_path, "Configuration file (TOML)")->required();

  suction::cli::sync_command_args sync_args;
  auto* sync = app.add_subcommand(
      "sync",
      "Migrate one user now, in the foreground, and print a report.\n"
      "The password is read from stdin (one line) or from the first line of a file, never "
      "from the command line.\n"
      "Exit codes: 0 everything copied; 1 other failure (e.g. a server unreachable); "
      "2 bad command line or config; 3 login refused (legacy or new server); "
      "4 finished with errors");
  sync->add_option("-c,--config", sync_args.config_path, "Configuration file (TOML)")->required();
  sync->add_option("-u,--user", sync_args.user, "The user to migrate")->required();
  auto* pw_stdin = sync->add_flag("--password-stdin", sync_args.password_stdin,
                                  "Read the password from the first line of stdin");
  auto* pw_file = sync->add_option("--password-file", sync_args.password_file,
                                   "Read the password from the first line of this file");
  pw_stdin->excludes(pw_file);
  pw_file->excludes(pw_stdin);
  sync->add_flag("--dry-run", sync_args.dry_run,
                 "Print the folder plan and counts; copy nothing, create nothing");
  sync->add_flag("--json", sync_args.json, "Print the report as one JSON object");
  sync->add_option("--retries", sync_args.retries,
                   "Times to try again after a transient failure (server unreachable, "
                   "connection lost, login refused for now with [UNAVAILABLE] and the like), "
                   "waiting 1, 2, 4, ... s (max 60 s) in between")
      ->check(CLI::Range(0u, 100u))
      ->capture_default_str();

  suction::cli::status_command_args status_args;
  auto* status = suction::cli::add_status_subcommand(app, status_args);
  suction::cli::report_command_args report_args;
  auto* report = suction::cli::add_report_subcommand(app, report_args);
  suction::cli::migrate_command_args migrate_args;
  auto* migrate = suction::cli::add_migrate_subcommand(app, migrate_args);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    // --help / --version exit 0; any other command line error is exit code 2.
    return rc == 0 ? 0 : 2;
  }
  if (*proxy) return run_proxy(config_path);
  if (*sync) {
    if (!sync_args.password_stdin && sync_args.password_file.empty()) {
      std::fputs("suction sync: --password-stdin or --password-file is required\n", stderr);
      return 2;
    }
    return suction::cli::run_sync_command(sync_args);
  }
  if (*status) return suction::cli::run_status_command(status_args);
  if (*report) return suction::cli::run_report_command(report_args);
  if (*migrate) return suction::cli::run_migrate_command(migrate_args);
  std::fputs(app.help().c_str(), stdout);
  return 0;
}
