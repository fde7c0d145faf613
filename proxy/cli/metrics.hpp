// Prometheus metrics at [metrics] listen (issue 12 must 5): the proxy's and
// the scheduler's counters, read when Prometheus scrapes (no second copy to
// keep in step), and two histograms fed as logins and runs end. Served by
// Debian's prometheus-cpp (its pull exposer, threads of its own); nothing of
// it is included outside metrics.cpp.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "proxy/daemon.hpp"
#include "sync/scheduler.hpp"

namespace suction::cli {

class metrics_endpoint {
 public:
  metrics_endpoint();
  ~metrics_endpoint();
  metrics_endpoint(const metrics_endpoint&) = delete;
  metrics_endpoint& operator=(const metrics_endpoint&) = delete;

  // Thread-safe; called as logins and runs end.
  void observe_login(std::chrono::milliseconds d);
  void observe_run(std::chrono::milliseconds d);

  // Where the gauges and counters come from at scrape time.
  void set_sources(std::function<proxy::proxy_stats()> proxy,
                   std::function<sync::scheduler_totals()> migration);

  // Serves GET /metrics on "HOST:PORT". Throws std::runtime_error (one line)
  // when it cannot listen there.
  void start(const std::string& listen);
  // Stops serving (joins the exposer's threads): before the sources go.
  void stop();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace suction::cli
