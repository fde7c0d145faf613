#include "proxy/cli/metrics.hpp"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <mutex>
#include <stdexcept>
#include <vector>

namespace suction::cli {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

ClientMetric value(MetricType type, double v, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (type == MetricType::Counter) m.counter.value = v;
  else m.gauge.value = v;
  return m;
}

MetricFamily family(std::string name, std::string help, MetricType type,
                    std::vector<ClientMetric> metrics) {
  return MetricFamily{std::move(name), std::move(help), type, std::move(metrics)};
}

// The counters and gauges, built from the sources' snapshots at each scrape.
class snapshot_collector : public prometheus::Collectable {
 public:
  void set(std::function<proxy::proxy_stats()> p, std::function<sync::scheduler_totals()> m) {
    std::lock_guard lock(m_);
    proxy_ = std::move(p);
    migration_ = std::move(m);
  }

  std::vector<MetricFamily> Collect() const override {
    std::function<proxy::proxy_stats()> p;
    std::function<sync::scheduler_totals()> m;
    {
      std::lock_guard lock(m_);
      p = proxy_;
      m = migration_;
    }
    std::vector<MetricFamily> out;
    if (p) collect_proxy(p(), out);
    if (m) collect_migration(m(), out);
    return out;
  }

 private:
  static void collect_proxy(const proxy::proxy_stats& s, std::vector<MetricFamily>& out) {
    const auto C = MetricType::Counter, G = MetricType::Gauge;
    out.push_back(family("suction_uptime_seconds", "Seconds since the proxy started.", G,
                         {value(G, static_cast<double>(s.uptime_s))}));
    out.push_back(family("suction_sessions_open", "Client connections open now.", G,
                         {value(G, static_cast<double>(s.active_sessions))}));
    out.push_back(family("suction_logins_total", "Logins answered, by result.", C,
                         {value(C, static_cast<double>(s.logins_ok), {{"result", "ok"}}),
                          value(C, static_cast<double>(s.logins_failed), {{"result", "failed"}})}));
    out.push_back(family(
        "suction_backend_failures_total",
        "Logins the new server could not take: unreachable (connect, TLS, protocol, timeout) or "
        "refusing for now itself ([UNAVAILABLE] and the like).",
        C,
        {value(C, static_cast<double>(s.backend_unavailable), {{"kind", "unavailable"}}),
         value(C, static_cast<double>(s.backend_temporary), {{"kind", "temporary"}})}));
    out.push_back(family("suction_relayed_bytes_total", "Bytes relayed by sessions that ended.", C,
                         {value(C, static_cast<double>(s.bytes_from_clients), {{"direction", "from_client"}}),
                          value(C, static_cast<double>(s.bytes_to_clients), {{"direction", "to_client"}})}));
    out.push_back(family("suction_preauth_limits_total",
                         "Connections closed by a pre-auth limit (line, literal, bad commands, failed "
                         "logins, deadlines).",
                         C, {value(C, static_cast<double>(s.preauth_limits))}));
    out.push_back(family("suction_connections_refused_total",
                         "Connections refused over [limits] max_connections or max_connections_per_ip.", C,
                         {value(C, static_cast<double>(s.connections_refused))}));
    out.push_back(family("suction_proxy_protocol_refused_total",
                         "Connections refused for their PROXY protocol header (missing, malformed, "
                         "or from an address not listed).",
                         C, {value(C, static_cast<double>(s.proxy_protocol_refused))}));
  }

  static void collect_migration(const sync::scheduler_totals& t, std::vector<MetricFamily>& out) {
    const auto C = MetricType::Counter, G = MetricType::Gauge;
    auto state = [&](const char* name, std::uint64_t n) {
      return value(G, static_cast<double>(n), {{"state", name}});
    };
    out.push_back(family("suction_migrations", "Users known to the scheduler, by state.", G,
                         {state("queued", t.queued), state("running", t.running), state("done", t.done),
                          state("failed", t.failed), state("interrupted", t.interrupted)}));
    out.push_back(family("suction_queue_length", "Migration jobs waiting to start (logins, bulk, retries).", G,
                         {value(G, static_cast<double>(t.queued))}));
    out.push_back(family("suction_messages_copied_total", "Messages copied by every recorded run.", C,
                         {value(C, static_cast<double>(t.messages_copied))}));
    out.push_back(family("suction_copied_bytes_total", "Bytes copied by every recorded run.", C,
                         {value(C, static_cast<double>(t.bytes_copied))}));
    out.push_back(family("suction_legacy_connections", "Connections to legacy servers the jobs hold now.", G,
                         {value(G, static_cast<double>(t.legacy_connections))}));
    out.push_back(family("suction_migration_paused", "1 while the scheduler is paused or draining.", G,
                         {value(G, t.paused || t.draining ? 1.0 : 0.0)}));
  }

  mutable std::mutex m_;
  std::function<proxy::proxy_stats()> proxy_;
  std::function<sync::scheduler_totals()> migration_;
};

}  // namespace

struct metrics_endpoint::impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::shared_ptr<snapshot_collector> snapshots = std::make_shared<snapshot_collector>();
  prometheus::Histogram& login = prometheus::BuildHistogram()
                                     .Name("suction_login_duration_seconds")
                                     .Help("Backend logins (the password checked, the new server "
                                           "logged in to), from LOGIN to its answer.")
                                     .Register(*registry)
                                     .Add({}, prometheus::Histogram::BucketBoundaries{
                                                  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10});
  prometheus::Histogram& run = prometheus::BuildHistogram()
                                   .Name("suction_run_duration_seconds")
                                   .Help("Migration runs, from start to end, whatever their result.")
                                   .Register(*registry)
                                   .Add({}, prometheus::Histogram::BucketBoundaries{
                                                0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600});
  std::unique_ptr<prometheus::Exposer> exposer;
};

metrics_endpoint::metrics_endpoint() : impl_(std::make_unique<impl>()) {}
metrics_endpoint::~metrics_endpoint() = default;

void metrics_endpoint::observe_login(std::chrono::milliseconds d) { impl_->login.Observe(d.count() / 1000.0); }
void metrics_endpoint::observe_run(std::chrono::milliseconds d) { impl_->run.Observe(d.count() / 1000.0); }

void metrics_endpoint::set_sources(std::function<proxy::proxy_stats()> proxy,
                                   std::function<sync::scheduler_totals()> migration) {
  impl_->snapshots->set(std::move(proxy), std::move(migration));
}

void metrics_endpoint::start(const std::string& listen) {
  try {
    // civetweb's form: "[::1]:9143" for IPv6, "127.0.0.1:9143" for IPv4.
    impl_->exposer = std::make_unique<prometheus::Exposer>(listen, 2);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot listen on " + listen + ": " + e.what());
  }
  impl_->exposer->RegisterCollectable(impl_->registry);
  impl_->exposer->RegisterCollectable(impl_->snapshots);
}

void metrics_endpoint::stop() {
  impl_->exposer.reset();
  impl_->snapshots->set({}, {});
}

}  // namespace suction::cli
