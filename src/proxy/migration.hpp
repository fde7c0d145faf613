// Migrate at login (issue 5): the daemon's login trigger and status backend
// over one sync::scheduler. A successful login hands the credentials to the
// scheduler and returns at once; the status socket's answers are built here
// from the scheduler's views and the daemon's counters. Nothing here ever
// puts a credential into an answer or a log line.
#pragma once

#include <functional>
#include <memory>

#include "config/config.hpp"
#include "proxy/daemon.hpp"
#include "proxy/status_server.hpp"
#include "proxy/trigger.hpp"
#include "sync/scheduler.hpp"

namespace suction::proxy {

// A server's address, TLS and timeouts from its config section ([new], [legacy]).
sync::server_options to_server(const config::server_section& s);

// The engine's options from the config: [legacy], [new], [folders], and
// [sync] batch sizes, connections_per_user (capped by [legacy]
// max_connections) and recent_first_days. `suction sync` uses them too.
sync::user_sync_options sync_options_from(const config::config& c);

class migration final : public login_trigger, public status_backend {
 public:
  // Opens the state store ([sync] state_db; throws sync::state_error) and
  // starts the scheduler's thread.
  explicit migration(const config::config& cfg);
  ~migration() override;  // stop()

  // Where {"cmd":"status"} gets the proxy's counters (the daemon, once made).
  void set_proxy_stats(std::function<proxy_stats()> f) { proxy_stats_ = std::move(f); }
  // Ends the running jobs (they become "interrupted") and wipes credentials.
  void stop() { scheduler_.stop(); }

  void on_login(login_event event) override;

  nlohmann::json status() override;
  nlohmann::json users() override;
  std::optional<nlohmann::json> user(std::string_view name) override;
  std::string resync(std::string_view name) override;
  void pause() override;
  void resume() override;
  void drain() override;

 private:
  sync::scheduler scheduler_;
  std::function<proxy_stats()> proxy_stats_;
};

}  // namespace suction::proxy
