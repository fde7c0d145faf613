#include "proxy/cli/migration.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace suction::cli {

using proxy::proxy_stats;

namespace {

nlohmann::json optional_time(const std::optional<std::int64_t>& t) {
  return t ? nlohmann::json(*t) : nlohmann::json(nullptr);
}

nlohmann::json optional_text(const std::string& s) {
  return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s);
}

nlohmann::json to_json(const sync::user_view& v) {
  return {
      {"user", v.user},
      {"state", sync::to_string(v.state)},
      {"progress",
       {{"folders_done", v.progress.folders_done},
        {"folders_total", v.progress.folders_total},
        {"messages_copied", v.progress.messages_copied},
        {"messages_total", v.progress.messages_total},
        {"bytes_copied", v.progress.bytes_copied},
        {"bytes_total", v.progress.bytes_total}}},
      {"started_at", optional_time(v.started_at)},
      {"finished_at", optional_time(v.finished_at)},
      {"last_error", optional_text(v.last_error)},
      {"credentials_held", v.credentials_held},
      {"attempts", v.attempts},
      {"retry_at", optional_time(v.retry_at)},
      {"queued_by", v.bulk ? "bulk" : "login"},
      {"in_cluster_queue", v.offered},
      {"legacy_server", v.legacy_server.empty() ? "legacy" : v.legacy_server},
  };
}

nlohmann::json to_json(const sync::run_record& r) {
  return {
      {"id", r.id},
      {"started_at", r.started_at},
      {"finished_at", r.finished_at ? nlohmann::json(r.finished_at) : nlohmann::json(nullptr)},
      {"result", sync::to_string(r.result)},
      {"messages_copied", r.messages_copied},
      {"bytes_copied", r.bytes_copied},
      {"messages_failed", r.messages_failed},
      {"error", optional_text(r.error)},
      {"node", optional_text(r.node)},  // a shared state store: the node that ran it
  };
}

}  // namespace

migration::migration(sync::scheduler_options opts, std::shared_ptr<const account_book> accounts)
    : accounts_(std::move(accounts)), scheduler_(std::move(opts)) {
  scheduler_.start();
}

std::string migration::key_of(std::string_view name) const {
  if (scheduler_.user(name)) return std::string(name);
  return accounts_->resolve(name).identity;
}

migration::~migration() { scheduler_.stop(); }

void migration::on_login(proxy::login_event event) {
  // The scheduler takes copies; the event's credentials are wiped when it goes.
  scheduler_.on_login(to_identity(event.names), event.names.legacy_server, event.creds.password,
                      event.client_address);
}

nlohmann::json migration::status() {
  proxy_stats p = proxy_stats_ ? proxy_stats_() : proxy_stats{};
  sync::scheduler_totals t = scheduler_.totals();
  nlohmann::json doc = {
      {"proxy",
       {{"uptime_s", p.uptime_s},
        {"active_sessions", p.active_sessions},
        {"logins_ok", p.logins_ok},
        {"logins_failed", p.logins_failed},
        {"backend_errors", p.backend_errors}}},
      {"migration",
       {{"paused", t.paused},
        {"draining", t.draining},
        {"users_queued", t.queued},
        {"users_running", t.running},
        {"users_done", t.done},
        {"users_failed", t.failed},
        {"users_interrupted", t.interrupted},
        {"messages_copied", t.messages_copied},
        {"bytes_copied", t.bytes_copied},
        {"legacy_connections", t.legacy_connections}}},
  };
  // Several nodes: what every one of them runs, from the shared store.
  try {
    if (auto c = scheduler_.cluster()) {
      nlohmann::json running = nlohmann::json::array();
      for (const auto& r : c->running)
        running.push_back({{"user", r.user}, {"node", r.node}, {"started_at", optional_time(r.started_at)}});
      doc["cluster"] = {{"node", scheduler_.node()},
                        {"queued", c->queued},
                        {"running", std::move(running)},
                        {"legacy_connections", c->legacy_by_node}};
    }
  } catch (const sync::state_error& e) {
    doc["cluster"] = {{"node", scheduler_.node()}, {"error", e.what()}};
  }
  return doc;
}

nlohmann::json migration::users() {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& v : scheduler_.users()) list.push_back(to_json(v));
  return {{"users", std::move(list)}};
}

std::optional<nlohmann::json> migration::user(std::string_view name) {
  const std::string key = key_of(name);
  auto v = scheduler_.user(key);
  if (!v) return std::nullopt;
  nlohmann::json j = to_json(*v);
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& r : scheduler_.runs(key, 20)) runs.push_back(to_json(r));
  j["runs"] = std::move(runs);
  return j;
}

std::string migration::resync(std::string_view name) { return scheduler_.resync(key_of(name)); }

std::string migration::enqueue(std::string_view login) {
  const config::account a = accounts_->resolve(login);
  return scheduler_.enqueue(to_identity(a), a.legacy_server);
}
void migration::pause() { scheduler_.pause(); }
void migration::resume() { scheduler_.resume(); }
void migration::drain() { scheduler_.drain(); }

}  // namespace suction::cli
