#include "proxy/cli/report_command.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "imap/log_value.hpp"
#include "proxy/cli/accounts.hpp"
#include "proxy/cli/options.hpp"
#include "proxy/cli/status_link.hpp"
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

std::string bytes_left_text(std::int64_t n) { return n < 0 ? "?" : std::to_string(n); }

void print_table(const sync::migration_report& rep) {
  std::printf("%-32s %-11s %5s %-20s %-20s %-7s %10s %14s %12s  %s\n", "USER", "STATE", "RUNS",
              "LAST RUN", "DONE AT", "DONE BY", "MESSAGES", "BYTES", "BYTES LEFT", "ERROR");
  for (const auto& r : rep.rows)
    std::printf("%-32s %-11s %5zu %-20s %-20s %-7s %10llu %14llu %12s  %s\n",
                imap::log_value(r.user).c_str(), std::string(sync::to_string(r.state)).c_str(), r.runs,
                iso_time(r.last_run_at).c_str(), iso_time(r.done_at).c_str(), r.done_by.c_str(),
                static_cast<unsigned long long>(r.messages_copied),
                static_cast<unsigned long long>(r.bytes_copied), bytes_left_text(r.bytes_left).c_str(),
                r.error.empty() ? "" : imap::log_value(r.error).c_str());
  auto count = [&](sync::user_progress p) { return rep.counts[static_cast<std::size_t>(p)]; };
  std::printf("%zu users: %zu done, %zu queued, %zu running, %zu interrupted, %zu failed, %zu never "
              "seen; %llu messages, %llu bytes copied; %llu bytes left known%s\n",
              rep.rows.size(), count(sync::user_progress::done), count(sync::user_progress::queued),
              count(sync::user_progress::running),
              count(sync::user_progress::interrupted), count(sync::user_progress::failed),
              count(sync::user_progress::never_seen),
              static_cast<unsigned long long>(rep.messages_copied),
              static_cast<unsigned long long>(rep.bytes_copied),
              static_cast<unsigned long long>(rep.bytes_left),
              rep.bytes_left_unknown == 0
                  ? ""
                  : (" (and " + std::to_string(rep.bytes_left_unknown) + " users not scanned yet)").c_str());
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
                     {"done_by", r.done_by},
                     {"bytes_left", r.bytes_left < 0 ? nlohmann::json(nullptr) : nlohmann::json(r.bytes_left)},
                     {"messages_copied", r.messages_copied},
                     {"bytes_copied", r.bytes_copied},
                     {"error", r.error},
                     {"node", r.node.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.node)}});
  nlohmann::json counts;
  for (std::size_t i = 0; i < std::size(rep.counts); ++i)
    counts[std::string(sync::to_string(static_cast<sync::user_progress>(i)))] = rep.counts[i];
  return {{"users", users},
          {"counts", counts},
          {"messages_copied", rep.messages_copied},
          {"bytes_copied", rep.bytes_copied},
          {"bytes_left", rep.bytes_left},
          {"users_bytes_left_unknown", rep.bytes_left_unknown},
          {"all_done", rep.all_done}};
}

// What the running daemon says of the users it has queued or running, by
// canonical identity; empty when no daemon answers (the report still stands
// on the state store alone).
std::map<std::string, sync::user_progress, std::less<>> live_states(const config::config& cfg) {
  std::map<std::string, sync::user_progress, std::less<>> out;
  try {
    daemon_link link(cfg.status.socket, std::chrono::seconds(5));
    link.connect();
    link.send_all("{\"cmd\":\"users\"}\n");
    auto answer = nlohmann::json::parse(link.read_line(), nullptr, false);
    if (!answer.is_object() || !answer.contains("users") || !answer["users"].is_array()) return out;
    for (const auto& u : answer["users"]) {
      if (!u.is_object() || !u.contains("user") || !u["user"].is_string()) continue;
      const std::string state = u.value("state", "");
      if (state == "pending") out[u["user"].get<std::string>()] = sync::user_progress::queued;
      if (state == "running") out[u["user"].get<std::string>()] = sync::user_progress::running;
    }
  } catch (const link_failure&) {
    // No daemon (or not ours to ask): the state store alone.
  }
  return out;
}

}  // namespace

CLI::App* add_report_subcommand(CLI::App& app, report_command_args& a) {
  auto* cmd = app.add_subcommand(
      "report",
      "Where every user's migration stands (from the state store, and the running daemon's "
      "queue when it answers): never seen, queued, running, interrupted (partly done, resumes), "
      "failed (why), done (when, by a login or a bulk run); bytes left.\n"
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
  const auto live_by_identity = live_states(*cfg);
  std::map<std::string, sync::user_progress, std::less<>> live;  // by the names of the rows
  try {
    if (!sync::sql_location_is_shared(cfg->sync.state_db) && !std::filesystem::exists(cfg->sync.state_db) &&
        a.users_path.empty()) {
      std::fprintf(stderr, "suction report: %s: no state store yet ([sync] state_db)\n",
                   cfg->sync.state_db.c_str());
      return 3;
    }
    sync::state_store store(cfg->sync.state_db, store_identity_from(*cfg));
    if (listed.empty()) {
      // The store's own keys: the canonical identities.
      for (const auto& r : store.latest_runs()) histories.emplace_back(r.user, store.runs(r.user, 1u << 20));
      live = live_by_identity;
    } else {
      // A login of the list is the account [users] makes of it.
      const account_book accounts(*cfg);
      for (const auto& login : listed) {
        const std::string identity = accounts.resolve(login).identity;
        histories.emplace_back(login, store.runs(identity, 1u << 20));
        if (auto it = live_by_identity.find(identity); it != live_by_identity.end())
          live[login] = it->second;
      }
    }
  } catch (const config::config_error& e) {
    std::fprintf(stderr, "suction: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "suction report: %s\n", e.what());
    return 3;
  }
  const sync::migration_report rep = sync::build_report(histories, live);
  if (a.json) {
    std::printf("%s\n", to_json(rep).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else if (a.csv) {
    std::printf("user,state,runs,last_run_at,done_at,messages_copied,bytes_copied,error,done_by,"
                "bytes_left\n");
    for (const auto& r : rep.rows)
      std::printf("%s,%s,%zu,%s,%s,%llu,%llu,%s,%s,%s\n", csv_field(r.user).c_str(),
                  std::string(sync::to_string(r.state)).c_str(), r.runs, iso_time(r.last_run_at).c_str(),
                  iso_time(r.done_at).c_str(), static_cast<unsigned long long>(r.messages_copied),
                  static_cast<unsigned long long>(r.bytes_copied), csv_field(r.error).c_str(),
                  r.done_by.c_str(), r.bytes_left < 0 ? "" : std::to_string(r.bytes_left).c_str());
  } else {
    print_table(rep);
  }
  return rep.all_done ? 0 : 1;
}

}  // namespace suction::cli
