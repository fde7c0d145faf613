#include "proxy/cli/status_command.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "proxy/cli/status_link.hpp"

namespace suction::cli {

namespace {

using json = nlohmann::json;

// The whole exchange (connect, ask, every answer) has this long.
constexpr std::chrono::seconds kTimeout{5};

using failure = link_failure;

// ---- reading the daemon's JSON: any field may be null or missing

std::optional<std::int64_t> number(const json& o, const char* key) {
  if (!o.is_object()) return std::nullopt;
  auto it = o.find(key);
  if (it == o.end()) return std::nullopt;
  if (it->is_number_integer()) return it->get<std::int64_t>();
  if (it->is_number_float()) return static_cast<std::int64_t>(it->get<double>());
  return std::nullopt;
}

std::string text(const json& o, const char* key) {
  if (!o.is_object()) return {};
  auto it = o.find(key);
  if (it == o.end() || !it->is_string()) return {};
  return it->get<std::string>();
}

bool flag(const json& o, const char* key) {
  if (!o.is_object()) return false;
  auto it = o.find(key);
  return it != o.end() && it->is_boolean() && it->get<bool>();
}

const json& member(const json& o, const char* key) {
  static const json null_value;
  if (!o.is_object()) return null_value;
  auto it = o.find(key);
  return it == o.end() ? null_value : *it;
}

// ---- formatting

std::string count_text(std::optional<std::int64_t> n) { return n ? std::to_string(*n) : "?"; }

std::string human_bytes(std::int64_t n) {
  static const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  if (n < 1024) return std::to_string(n) + " B";
  double v = static_cast<double>(n);
  std::size_t u = 0;
  v /= 1024;
  while (v >= 1024 && u + 1 < std::size(units)) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

std::string bytes_text(std::optional<std::int64_t> n) { return n ? human_bytes(*n) : "?"; }

// Local time, or "-" when unknown.
std::string time_text(std::optional<std::int64_t> unix_seconds) {
  if (!unix_seconds) return "-";
  std::time_t t = static_cast<std::time_t>(*unix_seconds);
  std::tm tm{};
  if (!localtime_r(&t, &tm)) return "-";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string duration_text(std::int64_t s) {
  char buf[48];
  if (s >= 86400)
    std::snprintf(buf, sizeof buf, "%lldd %02lld:%02lld:%02lld", static_cast<long long>(s / 86400),
                  static_cast<long long>(s % 86400 / 3600), static_cast<long long>(s % 3600 / 60),
                  static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%02lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60), static_cast<long long>(s % 60));
  return buf;
}

// "copied/total" when the total is known, else "copied".
std::string of_total(const std::string& copied, std::optional<std::int64_t> total,
                     std::string (*fmt)(std::optional<std::int64_t>)) {
  if (!total || *total <= 0) return copied;
  return copied + "/" + fmt(total);
}

struct fraction {
  std::int64_t done = 0, total = 0;
};

// By bytes when their total is known, else by messages, else by folders.
std::optional<fraction> progress_fraction(const json& progress) {
  const std::pair<const char*, const char*> measures[] = {
      {"bytes_copied", "bytes_total"},
      {"messages_copied", "messages_total"},
      {"folders_done", "folders_total"}};
  for (auto [done, total] : measures) {
    auto t = number(progress, total);
    if (t && *t > 0) return fraction{std::max<std::int64_t>(0, number(progress, done).value_or(0)), *t};
  }
  return std::nullopt;
}

// "[#######.............]  35%"
std::string progress_bar(const fraction& f) {
  constexpr std::int64_t width = 20;
  std::int64_t done = std::min(f.done, f.total);
  std::int64_t filled = done * width / f.total;
  std::int64_t percent = done * 100 / f.total;
  std::string bar = "[" + std::string(static_cast<std::size_t>(filled), '#') +
                    std::string(static_cast<std::size_t>(width - filled), '.') + "]";
  char pct[16];
  std::snprintf(pct, sizeof pct, " %3lld%%", static_cast<long long>(percent));
  return bar + pct;
}

// Display width of UTF-8 text, one column per code point (enough for names).
std::size_t columns(std::string_view s) {
  std::size_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

// Left-aligned columns two spaces apart; the last column is not padded.
void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width;
  for (auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], columns(r[i]));
    }
  for (auto& r : rows) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - columns(r[i]) + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

std::string or_dash(std::string s) { return s.empty() ? "-" : s; }

void print_summary(const json& status) {
  const json& p = member(status, "proxy");
  std::string uptime = number(p, "uptime_s") ? duration_text(*number(p, "uptime_s")) : "?";
  std::printf("proxy:     up %s, %s active sessions, logins %s ok / %s failed, %s backend errors\n",
              uptime.c_str(), count_text(number(p, "active_sessions")).c_str(),
              count_text(number(p, "logins_ok")).c_str(), count_text(number(p, "logins_failed")).c_str(),
              count_text(number(p, "backend_errors")).c_str());
  const json& m = member(status, "migration");
  std::string flags;
  if (flag(m, "paused")) flags += " [paused]";
  if (flag(m, "draining")) flags += " [draining]";
  std::printf("migration: users %s queued, %s running, %s done, %s failed, %s interrupted; "
              "%s messages, %s copied%s\n",
              count_text(number(m, "users_queued")).c_str(), count_text(number(m, "users_running")).c_str(),
              count_text(number(m, "users_done")).c_str(), count_text(number(m, "users_failed")).c_str(),
              count_text(number(m, "users_interrupted")).c_str(),
              count_text(number(m, "messages_copied")).c_str(),
              bytes_text(number(m, "bytes_copied")).c_str(), flags.c_str());
}

// Several nodes sharing the state store: one line for the cluster, then
// every node's running runs (at most 50 rows: the rest counted).
void print_cluster(const json& status) {
  const json& c = member(status, "cluster");
  if (!c.is_object()) return;
  if (!text(c, "error").empty()) {
    std::printf("cluster:   this node %s; the shared state store did not answer: %s\n",
                or_dash(text(c, "node")).c_str(), text(c, "error").c_str());
    return;
  }
  const json& running = member(c, "running");
  const json& legacy = member(c, "legacy_connections");
  std::string held;
  if (legacy.is_object())
    for (auto it = legacy.begin(); it != legacy.end(); ++it)
      held += (held.empty() ? "" : ", ") + it.key() + " " + (it->is_number() ? it->dump() : "?");
  std::printf("cluster:   this node %s; %zu running on all nodes, %s queued; legacy connections: %s\n",
              or_dash(text(c, "node")).c_str(), running.is_array() ? running.size() : 0,
              count_text(number(c, "queued")).c_str(), held.empty() ? "none" : held.c_str());
  if (!running.is_array() || running.empty()) return;
  std::vector<std::vector<std::string>> rows{{"RUNNING", "NODE", "SINCE"}};
  for (const auto& r : running) {
    if (rows.size() > 50) break;
    rows.push_back({or_dash(text(r, "user")), or_dash(text(r, "node")), time_text(number(r, "started_at"))});
  }
  std::printf("\n");
  print_table(rows);
  if (running.size() > 50) std::printf("... and %zu more\n", running.size() - 50);
}

std::string messages_cell(const json& progress) {
  if (!progress.is_object()) return "-";
  return of_total(count_text(number(progress, "messages_copied")), number(progress, "messages_total"),
                  count_text);
}

std::string bytes_cell(const json& progress) {
  if (!progress.is_object()) return "-";
  return of_total(bytes_text(number(progress, "bytes_copied")), number(progress, "bytes_total"),
                  bytes_text);
}

void print_users(const json& answer) {
  const json& users = member(answer, "users");
  std::printf("\n");
  if (!users.is_array() || users.empty()) {
    std::printf("no users yet\n");
    return;
  }
  std::vector<std::vector<std::string>> rows{{"USER", "STATE", "PROGRESS", "MESSAGES", "BYTES", "LAST-ERROR"}};
  for (auto& u : users) {
    const json& progress = member(u, "progress");
    std::string state = or_dash(text(u, "state"));
    // Handed over to the cluster's queue: any node with room runs it.
    if (auto in_cluster = u.find("in_cluster_queue"); in_cluster != u.end() && in_cluster->is_boolean() &&
                                                      in_cluster->get<bool>())
      state += " (cluster queue)";
    std::string bar = "-";
    if (state == "running") {
      auto f = progress_fraction(progress);
      bar = f ? progress_bar(*f) : "[ starting ]";
    }
    rows.push_back({or_dash(text(u, "user")), state, bar, messages_cell(progress), bytes_cell(progress),
                    or_dash(text(u, "last_error"))});
  }
  print_table(rows);
}

void print_user_detail(const json& u) {
  const json& progress = member(u, "progress");
  auto field = [](const char* name, const std::string& value) {
    std::printf("%-11s %s\n", name, value.c_str());
  };
  std::printf("\n");
  field("user:", or_dash(text(u, "user")));
  field("state:", or_dash(text(u, "state")));
  if (auto f = progress_fraction(progress)) field("progress:", progress_bar(*f));
  if (progress.is_object()) {
    field("folders:", of_total(count_text(number(progress, "folders_done")),
                               number(progress, "folders_total"), count_text));
    field("messages:", messages_cell(progress));
    field("bytes:", bytes_cell(progress));
  }
  field("started:", time_text(number(u, "started_at")));
  field("finished:", time_text(number(u, "finished_at")));
  field("last error:", or_dash(text(u, "last_error")));

  const json& runs = member(u, "runs");
  std::printf("\n");
  if (!runs.is_array() || runs.empty()) {
    std::printf("no runs yet\n");
    return;
  }
  std::printf("runs (newest first):\n");
  std::vector<std::vector<std::string>> rows{{"ID", "STARTED", "FINISHED", "RESULT", "MESSAGES", "BYTES", "ERROR"}};
  for (auto& r : runs) {
    std::string messages = count_text(number(r, "messages_copied"));
    if (auto failed = number(r, "messages_failed"); failed && *failed > 0)
      messages += " (" + std::to_string(*failed) + " failed)";
    rows.push_back({count_text(number(r, "id")), time_text(number(r, "started_at")),
                    time_text(number(r, "finished_at")), or_dash(text(r, "result")), messages,
                    bytes_text(number(r, "bytes_copied")), or_dash(text(r, "error"))});
  }
  print_table(rows);
}

// ---- the exchange

std::optional<std::string> socket_from_config(const status_command_args& a) {
  if (!a.socket_path.empty()) return a.socket_path;
  if (a.config_path.empty()) return config::status_section{}.socket;
  try {
    return config::load(a.config_path).status.socket;
  } catch (const config::config_error& e) {
    std::fprintf(stderr, "suction: %s\n", e.what());
    return std::nullopt;
  }
}

std::vector<json> requests_for(const status_command_args& a) {
  if (!a.resync_user.empty()) return {json{{"cmd", "resync"}, {"user", a.resync_user}}};
  if (a.pause) return {json{{"cmd", "pause"}}};
  if (a.resume) return {json{{"cmd", "resume"}}};
  if (a.drain) return {json{{"cmd", "drain"}}};
  std::vector<json> r{json{{"cmd", "status"}}};
  if (!a.user.empty()) r.push_back(json{{"cmd", "user"}, {"user", a.user}});
  else r.push_back(json{{"cmd", "users"}});
  return r;
}

struct answer {
  json value;
};

// Sends every request at once (the daemon answers in order) and reads the answers.
std::vector<answer> ask_daemon(const std::string& path, const std::vector<json>& requests) {
  daemon_link link(path, kTimeout);
  link.connect();
  std::string out;
  for (auto& r : requests) out += r.dump() + "\n";
  link.send_all(out);
  std::vector<answer> answers;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    answer a;
    a.value = json::parse(link.read_line(), nullptr, false);
    if (a.value.is_discarded() || !a.value.is_object())
      throw failure{path + " answered something that is not a JSON object: not a suction status socket?"};
    answers.push_back(std::move(a));
  }
  return answers;
}

bool is_control(const status_command_args& a) {
  return !a.resync_user.empty() || a.pause || a.resume || a.drain;
}

// --json: the status answer's members ("proxy", "migration") plus "users"
// (the table) or "user" (with --user); a steering command's answer as it is.
// An error answer of the daemon becomes the document's "error".
json json_document(const status_command_args& a, const std::vector<answer>& answers) {
  if (is_control(a)) return answers[0].value;
  json doc = answers[0].value;
  const json& second = answers[1].value;
  if (second.contains("error")) doc["error"] = second["error"];
  else if (!a.user.empty()) doc["user"] = second;
  else doc["users"] = member(second, "users");
  return doc;
}

}  // namespace

CLI::App* add_status_subcommand(CLI::App& app, status_command_args& a) {
  auto* status = app.add_subcommand(
      "status",
      "Ask the running proxy (its status socket) how it and the migration are doing, or steer the "
      "migration.\n"
      "Exit codes: 0 answered; 1 no daemon, no answer within 5 s, or an error answer "
      "(e.g. an unknown user); 2 bad command line or config");
  auto* socket = status->add_option("-s,--socket", a.socket_path,
                                    "The status socket (default: [status] socket of --config, else " +
                                        config::status_section{}.socket + ")");
  auto* cfg = status->add_option("-c,--config", a.config_path,
                                 "Configuration file (TOML) to read [status] socket from");
  socket->excludes(cfg);
  status->add_flag("--json", a.json,
                   "Print one JSON document: \"proxy\", \"migration\" and \"users\" (or \"user\" with --user)");
  std::vector<CLI::Option*> exclusive{
      status->add_option("-u,--user", a.user, "Show one user's progress and runs instead of the table"),
      status->add_option("--resync", a.resync_user, "Queue a migration run for this user now"),
      status->add_flag("--pause", a.pause, "Start no new migration runs (running ones go on)"),
      status->add_flag("--resume", a.resume, "Start migration runs again after --pause"),
      status->add_flag("--drain", a.drain, "Finish the queue, take no new users")};
  for (auto* x : exclusive)
    for (auto* y : exclusive)
      if (x != y) x->excludes(y);
  return status;
}

int run_status_command(const status_command_args& a) {
  auto path = socket_from_config(a);
  if (!path) return 2;
  std::vector<answer> answers;
  try {
    answers = ask_daemon(*path, requests_for(a));
  } catch (const failure& f) {
    std::fprintf(stderr, "suction status: %s\n", f.message.c_str());
    return 1;
  }
  int rc = 0;
  for (auto& ans : answers) {
    if (!ans.value.contains("error")) continue;
    const json& e = ans.value["error"];
    std::string message = e.is_string() ? e.get<std::string>() : e.dump();
    // The daemon never echoes a name back; we know which one we asked for.
    if (message == "unknown user" && !a.user.empty()) message += " " + a.user;
    std::fprintf(stderr, "suction status: %s\n", message.c_str());
    rc = 1;
  }
  if (a.json) {
    // One JSON document (jq needs no -s), errors included: scripts read stdout.
    std::printf("%s\n", json_document(a, answers).dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    return rc;
  }
  if (rc != 0) return rc;
  if (is_control(a)) {
    std::printf("ok\n");
    return 0;
  }
  print_summary(answers[0].value);
  print_cluster(answers[0].value);
  if (!a.user.empty()) print_user_detail(answers[1].value);
  else print_users(answers[1].value);
  return 0;
}

}  // namespace suction::cli
