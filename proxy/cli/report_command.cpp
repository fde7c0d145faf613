#include "proxy/cli/report_command.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "imap/log_value.hpp"
#include "proxy/cli/accounts.hpp"
#include "proxy/cli/options.hpp"
#include "proxy/cli/users_file.hpp"
#include "sync/report.hpp"
#include "sync/state_store.hpp"
#include "sync/user_sync.hpp"

namespace suction::cli {

namespace {

std::string iso_time(std::int64_t t) {
  if (t == 0) return "";
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string csv_field(const std::string& v) {
  if (v.find_first_of(",\"\r\n") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

void print_table(const sync::migration_report& rep) {
  std::printf("%-32s %-11s %5s %-20s %-20s %10s %14s  %s\n", "USER", "STATE", "RUNS", "LAST RUN",
              "DONE AT", "MESSAGES", "BYTES", "ERROR");
  for (const auto& r : rep.rows)
    std::printf("%-32s %-11s %5zu %-20s %-20s %10llu %14llu  %s\n",
                imap::log_value(r.user).c_str(), std::string(sync::to_string(r.state)).c_str(), r.runs,
                iso_time(r.last_run_at).c_str(), iso_time(r.done_at).c_str(),
                static_cast<unsigned long long>(r.messages_copied),
                static_cast<unsigned long long>(r.bytes_copied),
                r.error.empty() ? "" : imap::log_value(r.error).c_str());
  auto count = [&](sync::user_progress p) { return rep.counts[static_cast<std::size_t>(p)]; };
  std::printf("%zu users: %zu done, %zu running, %zu interrupted, %zu failed, %zu never seen; "
              "%llu messages, %llu bytes copied\n",
              rep.rows.size(), count(sync::user_progress::done), count(sync::user_progress::running),
              count(sync::user_progress::interrupted), count(sync::user_progress::failed),
              count(sync::user_progress::never_seen),
              static_cast<unsigned long long>(rep.messages_copied),
              static_cast<unsigned long long>(rep.bytes_copied));
  if (rep.all_done)
    std::printf("every listed user is done\n");
  else
    std::printf("not done: %zu of %zu users\n", rep.rows.size() - count(sync::user_progress::done),
                rep.rows.size());
}

nlohmann::json to_json(const sync::migration_report& rep) {
  nlohmann::json users = nlohmann::json::array();
  for (const auto& r : rep.rows)
    users.push_back({{"user", r.user},
                     {"state", sync::to_string(r.state)},
                     {"runs", r.runs},
                     {"last_run_at", iso_time(r.last_run_at)},
                     {"done_at", iso_time(r.done_at)},
                     {"messages_copied", r.messages_copied},
                     {"bytes_copied", r.bytes_copied},
                     {"error", r.error}});
  nlohmann::json counts;
  for (std::size_t i = 0; i < 5; ++i)
    counts[std::string(sync::to_string(static_cast<sync::user_progress>(i)))] = rep.counts[i];
  return {{"users", users},
          {"counts", counts},
          {"messages_copied", rep.messages_copied},
          {"bytes_copied", rep.bytes_copied},
          {"all_done", rep.all_done}};
}

}  // namespace

CLI::App* add_report_subcommand(CLI::App& app, report_command_args& a) {
  auto* cmd = app.add_subcommand(
      "report",
      "Where every user's migration stands (from the state store): never seen, running, "
      "interrupted, failed (why), done (when).\n"
      "Exit codes: 0 every listed user is done; 1 not yet; 2 bad command line, config or users "
      "file; 3 the state store cannot be read");
  cmd->add_option("-c,--config", a.config_path, "Configuration file (TOML)")->required();
  cmd->add_option("--users", a.users_path,
                  "File of users: one login per line, or a CSV whose first column is the login "
                  "(default: every user the state store knows)");
  auto* json = cmd->add_flag("--json", a.json, "One JSON document");
  auto* csv = cmd->add_flag("--csv", a.csv, "CSV with a header line");
  json->excludes(csv);
  csv->excludes(json);
  return cmd;
}

int run_report_command(const report_command_args& a) {
  const auto cfg = load_config(a.config_path, false);
  if (!cfg) return 2;
  std::vector<std::string> listed;
  if (!a.users_path.empty()) {
    std::string why;
    if (!read_users(a.users_path, listed, why)) {
      std::fprintf(stderr, "suction report: %s\n", why.c_str());
      return 2;
    }
  }
  std::vector<std::pair<std::string, std::vector<sync::run_record>>> histories;
  try {
    if (!std::filesystem::exists(cfg->sync.state_db) && a.users_path.empty()) {
      std::fprintf(stderr, "suction report: %s: no state store yet ([sync] state_db)\n",
                   cfg->sync.state_db.c_str());
      return 3;
    }
    sync::state_store store(cfg->sync.state_db);
    if (listed.empty()) {
      // The store's own keys: the canonical identities.
      for (const auto& r : store.latest_runs()) histories.emplace_back(r.user, store.runs(r.user, 1u << 20));
    } else {
      // A login of the list is the account [users] makes of it.
      const account_book accounts(*cfg);
      for (const auto& login : listed)
        histories.emplace_back(login, store.runs(accounts.resolve(login).identity, 1u << 20));
    }
  } catch (const config::config_error& e) {
    std::fprintf(stderr, "suction: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "suction report: %s\n", e.what());
    return 3;
  }
  const sync::migration_report rep = sync::build_report(histories);
  if (a.json) {
    std::printf("%s\n", to_json(rep).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else if (a.csv) {
    std::printf("user,state,runs,last_run_at,done_at,messages_copied,bytes_copied,error\n");
    for (const auto& r : rep.rows)
      std::printf("%s,%s,%zu,%s,%s,%llu,%llu,%s\n", csv_field(r.user).c_str(),
                  std::string(sync::to_string(r.state)).c_str(), r.runs, iso_time(r.last_run_at).c_str(),
                  iso_time(r.done_at).c_str(), static_cast<unsigned long long>(r.messages_copied),
                  static_cast<unsigned long long>(r.bytes_copied), csv_field(r.error).c_str());
  } else {
    print_table(rep);
  }
  return rep.all_done ? 0 : 1;
}

}  // namespace suction::cli
