// Migrate at login (issue 5): the daemon's login trigger and status backend
// over one sync::scheduler. A successful login hands the credentials to the
// scheduler and returns at once; the status socket's answers are built here
// from the scheduler's views and the daemon's counters. Nothing here ever
// puts a credential into an answer or a log line.
#pragma once

#include <functional>
#include <memory>

#include "proxy/cli/accounts.hpp"
#include "proxy/daemon.hpp"
#include "proxy/status_server.hpp"
#include "proxy/trigger.hpp"
#include "sync/scheduler.hpp"

namespace suction::cli {

class migration final : public proxy::login_trigger, public proxy::status_backend {
 public:
  // Opens the state store (opts.state_db; throws sync::state_error) and
  // starts the scheduler's thread.
  // `accounts` names who is who ([users]); the status socket's names go
  // through it (a login name, or the canonical identity itself).
  migration(sync::scheduler_options opts, std::shared_ptr<const account_book> accounts);
  ~migration() override;  // stop()

  // Where {"cmd":"status"} gets the proxy's counters (the daemon, once made).
  void set_proxy_stats(std::function<proxy::proxy_stats()> f) { proxy_stats_ = std::move(f); }
  // Ends the running jobs (they become "interrupted") and wipes credentials.
  void stop() { scheduler_.stop(); }

  void on_login(proxy::login_event event) override;
  sync::scheduler_totals totals() const { return scheduler_.totals(); }

  nlohmann::json status() override;
  nlohmann::json users() override;
  std::optional<nlohmann::json> user(std::string_view name) override;
  std::string resync(std::string_view name) override;
  std::string enqueue(std::string_view login) override;
  void pause() override;
  void resume() override;
  void drain() override;

 private:
  // The scheduler's key for what an operator typed: the identity itself if
  // the scheduler knows it, else the identity the name resolves to.
  std::string key_of(std::string_view name) const;

  std::shared_ptr<const account_book> accounts_;
  sync::scheduler scheduler_;
  std::function<proxy::proxy_stats()> proxy_stats_;
};

}  // namespace suction::cli
