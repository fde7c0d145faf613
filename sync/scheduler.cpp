#include "sync/scheduler.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include "imap/client/secure_wipe.hpp"

namespace suction::sync {

namespace asio = boost::asio;

namespace {

std::int64_t unix_now() { return static_cast<std::int64_t>(std::time(nullptr)); }

using imap::secret;

}  // namespace

struct scheduler::impl {
  explicit impl(scheduler_options o)
      : opts(std::move(o)),
        table(rules_of(opts)),
        store(opts.state_db, opts.store),
        reader(opts.state_db, opts.store),
        work(asio::make_work_guard(io)),
        sweeper(io) {
    store.claim_node();
    store.mark_interrupted(unix_now());
    for (auto& r : reader.latest_runs()) table.restore(r);
  }

  static job_rules rules_of(const scheduler_options& o) {
    job_rules r;
    r.max_concurrent_users = o.max_concurrent_users;
    r.legacy_max_connections = o.legacy_max_connections;
    for (const auto& t : o.more_legacy) r.more_legacy.emplace(t.name, t.max_connections);
    r.resync_interval = o.resync_interval;
    r.credential_ttl = o.credential_ttl;
    r.retry = o.retry;
    return r;
  }

  scheduler_options opts;
  mutable std::mutex m;  // guards table, passwords, progress
  job_table table;       // the policy: which job runs, what a run's end means
  std::map<std::string, std::string, std::less<>> passwords;  // by key; wiped by drop()
  std::map<std::string, std::shared_ptr<sync_progress>, std::less<>> progress;
  std::set<std::string, std::less<>> cluster_taken;  // users this node took from the cluster's queue
  std::condition_variable idle;  // a job ended (stop() waits for the last one)
  // Cuts the running jobs off at stop(), on the worker thread.
  std::shared_ptr<run_stopper> stopper = std::make_shared<run_stopper>();
  state_store store;   // the jobs', on the worker thread only
  mutable std::mutex reader_m;  // guards `reader`, apart: logins never wait on SQLite
  mutable state_store reader;   // queries from other threads

  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> work;
  asio::steady_timer sweeper;
  std::thread thread;

  const server_options& legacy_of(std::string_view server) const {
    for (const auto& t : opts.more_legacy)
      if (t.name == server) return t.server;
    return opts.sync.legacy;
  }

  void log(const std::string& line) {
    if (opts.log) opts.log(line);
  }

  // Under m.
  void drop(const std::string& key) {
    if (auto it = passwords.find(key); it != passwords.end()) {
      imap::secure_wipe(it->second);
      passwords.erase(it);
    }
  }

  void kick_later() {
    asio::post(io, [this] { kick(); });
  }

  // Starts queued jobs while the table allows. On the worker thread. The jobs
  // are spawned after the lock is released: co_spawn may run a job at once,
  // up to its first wait, and a job that ends without waiting (its run
  // refused as busy, a CA file that cannot be read) locks m in finish().
  using starting_jobs =
      std::vector<std::tuple<job_start, std::shared_ptr<secret>, std::shared_ptr<sync_progress>>>;

  // Both servers' master credentials for jobs of this legacy server: what
  // lets any node run a user's job without the user's password.
  bool masters_for(std::string_view server) const {
    return legacy_of(server).master.configured() && opts.bulk_new_master.configured();
  }

  // A shared store: users handed over on any node, and logins other nodes
  // could not start, taken while this node has room for them. On the worker
  // thread.
  void pull_cluster_queue() {
    std::uint32_t room = 0;
    {
      std::lock_guard lock(m);
      room = table.room_for_bulk();
    }
    if (room == 0) return;
    std::vector<queued_user> taken;
    try {
      taken = store.take_queued(room);
    } catch (const state_error& e) {
      log(std::string("state store: taking queued users failed: ") + e.what());
      return;
    }
    for (const auto& u : taken) {
      const job* j = nullptr;
      std::string refused;
      {
        std::lock_guard lock(m);
        // Its own login back: run with the password it still holds.
        if (u.login_node == store.node() && table.taken_back(u.key)) {
          cluster_taken.insert(u.key);
          continue;
        }
        refused = masters_for(u.legacy_server) || !table.known_server(u.legacy_server)
                      ? table.enqueue_bulk({u.key, {u.legacy_login, u.legacy_user}, {u.new_login, u.new_user}},
                                           u.legacy_server, u.client)
                      : "no master credentials for its servers on this node";
        j = table.find(u.key);
        // Held by this node until its job here is over (whatever starts it).
        if (refused.empty() || (j && (j->queued || j->running))) cluster_taken.insert(u.key);
      }
      if (refused.empty()) continue;
      if (j && (j->queued || j->running)) continue;  // a login's job here does it, then unqueues
      // Not runnable here (a legacy server this node does not know, a stop):
      // back to the queue for another node.
      log("cluster queue: user=" + log_value(u.key) + " given back: " + refused);
      queue_call([&] { store.give_back(u.key); }, "giving back");
    }
  }

  // A shared store: the logins' jobs that could not start here (no job slot
  // or legacy connection free, paused, draining) go to the cluster's queue
  // when master credentials let another node run them; the password stays
  // here. On the worker thread, after the table took what it could.
  void offer_waiting_logins() {
    std::vector<queued_user> offers;
    {
      std::lock_guard lock(m);
      for (const auto& key : table.waiting_logins()) {
        const job& j = *table.find(key);
        if (masters_for(j.legacy_server))
          offers.push_back({key, j.who.legacy.login, j.who.legacy.user, j.who.fresh.login,
                            j.who.fresh.user, j.legacy_server, store.node(), j.client_address});
      }
    }
    for (const auto& u : offers) {
      bool queued = false;
      queue_call([&] { queued = store.queue_user(u, unix_now()); }, "offering");
      if (!queued) continue;  // a node holds its row and runs it now: it waits here
      std::lock_guard lock(m);
      if (table.offer(u.key))
        log("cluster queue: user=" + log_value(u.key) + " login's job handed over (no room on this node)");
    }
  }

  // The offered logins whose rows are gone (another node ran them): their
  // state is their last run's. On the worker thread, once a second.
  void settle_offered() {
    std::vector<std::string> keys;
    {
      std::lock_guard lock(m);
      keys = table.offered();
    }
    for (const auto& key : keys) {
      std::optional<std::string> holder;
      std::vector<run_record> last;
      try {
        holder = store.queue_holder(key);
        if (!holder) last = store.runs(key, 1);
      } catch (const state_error& e) {
        log(std::string("state store: reading the cluster's queue failed: ") + e.what());
        return;
      }
      if (holder) continue;
      std::lock_guard lock(m);
      if (table.settle_offered(key, last.empty() ? std::nullopt : std::optional<run_record>(last.front())))
        drop(key);
    }
  }

  // A store call for the cluster's queue, on the worker thread: a failure is
  // logged; the row's lease then runs out and another node takes it.
  template <class F>
  void queue_call(F f, const char* what) {
    try {
      f();
    } catch (const state_error& e) {
      log(std::string("state store: ") + what + " a queued user failed: " + e.what());
    }
  }

  void kick() {
    starting_jobs starting;
    if (store.shared()) pull_cluster_queue();
    if (!store.shared()) {
      take_startable(starting);
    } else {
      // Several nodes: the legacy caps are the cluster's. What the others
      // hold is read, the jobs taken and what this node holds now written,
      // in one transaction under the store's lock.
      try {
        store.claim_legacy([&](const legacy_counts& elsewhere) {
          std::lock_guard lock(m);
          table.set_held_elsewhere(elsewhere);
          return take_startable_locked(starting);
        });
      } catch (const state_error& e) {
        // Jobs taken before the failure run; the next claim counts them.
        log(std::string("state store: claiming legacy connections failed: ") + e.what());
      }
    }
    if (store.shared()) offer_waiting_logins();
    for (auto& [start, pw, p] : starting)
      asio::co_spawn(io, run_job(std::move(start), pw, p), asio::detached);
  }

  void take_startable(starting_jobs& starting) {
    std::lock_guard lock(m);
    take_startable_locked(starting);
  }

  // Under m: the jobs the table lets start now, each with its password and
  // progress; returns the legacy connections this node then holds.
  legacy_counts take_startable_locked(starting_jobs& starting) {
    while (auto start = table.take_next(job_time::now())) {
      auto p = std::make_shared<sync_progress>();
      progress[start->key] = p;
      // The job's own copy of the password, made here: never a moved-from string.
      auto pw = std::make_shared<secret>(start->bulk ? std::string() : passwords[start->key]);
      starting.emplace_back(std::move(*start), std::move(pw), std::move(p));
    }
    for (const auto& key : table.failed_without_credentials)
      log("migration user=" + log_value(key) + " result=failed error=" +
          log_value(table.find(key)->last_error));
    table.failed_without_credentials.clear();
    return table.legacy_held();
  }

  // This node holds fewer legacy connections now: tell the cluster. On the
  // worker thread; a failure leaves the count high until the next claim.
  void publish_legacy() {
    if (!store.shared()) return;
    legacy_counts held;
    {
      std::lock_guard lock(m);
      held = table.legacy_held();
    }
    try {
      store.publish_legacy(held);
    } catch (const state_error& e) {
      log(std::string("state store: publishing legacy connections failed: ") + e.what());
    }
  }

  // The options of one job: its legacy server; a login's job logs in with
  // the user's password, a bulk job with both servers' master credentials.
  user_sync_options job_options(const job_start& j) const {
    user_sync_options o = opts.sync;
    // Another node's login run here with master credentials is a login's.
    o.started_by = j.bulk && j.client.empty() ? "bulk" : "login";
    o.legacy = legacy_of(j.legacy_server);
    if (j.bulk) {
      o.fresh.master = opts.bulk_new_master;
    } else {
      o.legacy.master = {};
    }
    o.connections = std::max<std::uint32_t>(1, std::min(o.connections, table.cap_of(j.legacy_server)));
    return o;
  }

  asio::awaitable<void> run_job(job_start start, std::shared_ptr<secret> pw,
                                std::shared_ptr<sync_progress> p) {
    // Never inside kick(): a job that ends without waiting would start the
    // next one from its finish(), recursively.
    co_await asio::post(io, asio::use_awaitable);
    user_sync_options job = job_options(start);
    job.stopper = stopper;
    // More pairs of connections only as the legacy cap allows, counted per job.
    const std::string key = start.key;
    job.acquire_connections = [this, key](std::uint32_t n) -> std::uint32_t {
      if (!store.shared()) {
        std::lock_guard lock(m);
        return table.grant(key, n);
      }
      std::uint32_t granted = 0;
      try {
        store.claim_legacy([&](const legacy_counts& elsewhere) {
          std::lock_guard lock(m);
          table.set_held_elsewhere(elsewhere);
          granted = table.grant(key, n);
          return table.legacy_held();
        });
      } catch (const state_error& e) {
        log(std::string("state store: claiming legacy connections failed: ") + e.what());
      }
      return granted;
    };
    job.release_connections = [this, key](std::uint32_t n) {
      {
        std::lock_guard lock(m);
        table.release(key, n);
      }
      publish_legacy();
    };
    user_sync_report rep;
    // sync_user recorded the run with its failure, then threw it on: named
    // here as the table must see it (a lost lease is retried like a busy
    // user; the store failing is not).
    std::exception_ptr thrown;
    try {
      rep = co_await sync_user(io.get_executor(), job, start.who, pw->value, store, false, p.get());
    } catch (...) {
      thrown = std::current_exception();
    }
    if (thrown) {
      rep = {};
      rep.user = key;
      rep.outcome = sync_outcome::failed;
      try {
        std::rethrow_exception(thrown);
      } catch (const run_busy& e) {
        rep.failure = failure_kind::busy;
        rep.errors.push_back(e.what());
      } catch (const state_error& e) {
        rep.failure = failure_kind::state_store;
        rep.errors.push_back(e.what());
      } catch (const std::exception& e) {
        rep.errors.push_back(e.what());
      }
    }
    finish(start, rep);
  }

  // A job ended. On the worker thread.
  enum class queue_end : std::uint8_t { keep, unqueue, give_back };

  void finish(const job_start& start, const user_sync_report& rep) {
    queue_end after = queue_end::keep;
    {
      std::lock_guard lock(m);
      if (opts.observe_run) opts.observe_run(rep.duration);
      const job_end end = table.finished(start.key, rep.outcome == sync_outcome::ok, rep.failure,
                                         rep.errors.empty() ? std::string() : rep.errors.front(),
                                         job_time::now());
      if (end.drop_credentials) drop(start.key);
      idle.notify_all();
      // A user of the cluster's queue: out of it when its job is over; back
      // in it for any node when the store failed or this node is stopping;
      // kept while retried here.
      if (!end.retry_in && cluster_taken.erase(start.key) > 0)
        after = rep.failure == failure_kind::state_store || rep.failure == failure_kind::stopped
                    ? queue_end::give_back
                    : queue_end::unqueue;
      if (end.retry_in)
        asio::co_spawn(io, retry_later(start.key, *end.retry_in, end.generation), asio::detached);
      const job* j = table.find(start.key);
      log("migration " + describe_run(rep) + " client=" + (start.client.empty() ? "bulk" : start.client) +
          " legacy=" + imap::display(legacy_of(start.legacy_server).endpoint) + " new=" +
          imap::display(opts.sync.fresh.endpoint) +
          " attempt=" + std::to_string(std::max<std::uint32_t>(j->attempts, 1)) + end.note);
    }
    if (after == queue_end::unqueue) queue_call([&] { store.unqueue(start.key); }, "removing");
    if (after == queue_end::give_back) queue_call([&] { store.give_back(start.key); }, "giving back");
    publish_legacy();
    kick();
  }

  asio::awaitable<void> retry_later(std::string key, std::chrono::milliseconds delay,
                                    std::uint64_t generation) {
    asio::steady_timer t(io, delay);
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    std::lock_guard lock(m);
    if (table.retry_due(key, generation)) kick_later();
  }

  // When the sweep looks next: once a second with a shared store (leases,
  // other nodes' queue), else when the next held password expires, at most
  // once a second (a running job keeps an expired one until it ends) and at
  // least once a day. A lone node with nothing to expire does not wake up.
  std::chrono::steady_clock::duration next_sweep_in() {
    using namespace std::chrono;
    if (store.shared()) return seconds(1);
    std::lock_guard lock(m);
    const auto next = table.next_credential_expiry();
    if (!next) return hours(24);
    return std::clamp<steady_clock::duration>(*next - steady_clock::now(), seconds(1), hours(24));
  }

  // A login gave a password: the sweep looks again when it expires.
  void rearm_sweep() {
    asio::post(io, [this] { sweeper.cancel(); });
  }

  // Drops credentials older than credential_ttl; renews the leases of this
  // node's runs every third of a lease, so a long FETCH that records nothing
  // keeps its user (a shared store only).
  asio::awaitable<void> sweep() {
    auto renewed = std::chrono::steady_clock::now();
    const auto renew_every = std::chrono::milliseconds(opts.store.lease_seconds * 1000 / 3);
    for (;;) {
      sweeper.expires_after(next_sweep_in());
      boost::system::error_code ec;
      co_await sweeper.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      {
        std::lock_guard lock(m);
        if (table.stopped()) co_return;
      }
      if (ec) continue;  // rearm_sweep(): a login gave a password
      if (store.shared() && std::chrono::steady_clock::now() - renewed >= renew_every) {
        renewed = std::chrono::steady_clock::now();
        try {
          store.renew_leases();
        } catch (const state_error& e) {
          // The next record renews it or finds it lost; a database away for
          // longer than the lease hands the users to another node.
          log(std::string("state store: renewing leases failed: ") + e.what());
        }
      }
      // Other nodes let go of legacy connections without telling this one:
      // queued jobs look again once a second.
      // So do users queued on other nodes.
      bool look_again = false;
      {
        std::lock_guard lock(m);
        look_again = store.shared() && !table.paused();
      }
      if (store.shared()) settle_offered();
      if (look_again) kick();
      std::lock_guard lock(m);
      for (const auto& key : table.expired_credentials(job_time::now())) {
        drop(key);
        log("credentials dropped user=" + log_value(key) + " (credential_ttl " +
            std::to_string(opts.credential_ttl.count()) + "s)");
      }
    }
  }

  // Under m.
  user_view view(const std::string& key, const job& j) const {
    user_view v;
    v.user = key;
    v.state = j.state;
    if (auto it = progress.find(key); it != progress.end()) {
      const sync_progress& p = *it->second;
      v.progress = {p.folders_done.load(), p.folders_total.load(), p.messages_copied.load(),
                    p.messages_total.load(), p.bytes_copied.load(), p.bytes_total.load()};
    }
    v.started_at = j.started_at;
    v.finished_at = j.finished_at;
    v.last_error = j.last_error;
    v.credentials_held = j.has_credentials;
    v.attempts = j.attempts;
    v.retry_at = j.retry_at;
    v.bulk = j.bulk;
    v.offered = j.offered;
    v.legacy_server = j.legacy_server;
    return v;
  }
};

scheduler::scheduler(scheduler_options opts) : impl_(std::make_unique<impl>(std::move(opts))) {}

scheduler::~scheduler() { stop(); }

void scheduler::start() {
  asio::co_spawn(impl_->io, impl_->sweep(), asio::detached);
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

void scheduler::stop() {
  {
    std::lock_guard lock(impl_->m);
    if (impl_->table.stopped()) return;
    impl_->table.stop();
    for (auto& [key, pw] : impl_->passwords) imap::secure_wipe(pw);
    impl_->passwords.clear();
  }
  // The running jobs are cut off on their thread and let unwind: each is
  // recorded interrupted and ends before the io_context stops. (A job's
  // coroutines destroyed while suspended would be destroyed in no set order:
  // a folder worker after the connections it uses.) Bounded: a job stuck in
  // a database call is left to the io_context's end and mark_interrupted.
  if (impl_->thread.joinable()) {
    asio::post(impl_->io, [this] {
      impl_->stopper->stop();
      impl_->sweeper.cancel();
    });
    std::unique_lock lock(impl_->m);
    impl_->idle.wait_for(lock, std::chrono::seconds(10), [this] { return impl_->table.running() == 0; });
  }
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  // Jobs still suspended (only past the wait above) are cut off for good.
  // A database that does not answer now is not a reason to die: a shared
  // store's leases run out by themselves.
  try {
    impl_->store.mark_interrupted(unix_now());
  } catch (const state_error& e) {
    impl_->log(std::string("state store: marking this node's runs interrupted failed: ") + e.what());
  }
}

void scheduler::on_login(std::string user, std::string password, std::string client_address) {
  sync_identity who = same_names(impl_->opts.sync, user);
  imap::secure_wipe(user);
  on_login(std::move(who), "", std::move(password), std::move(client_address));
}

void scheduler::on_login(sync_identity who, std::string legacy_server, std::string password,
                         std::string client_address) {
  secret pw(password);  // copies, never moves: a moved-from string keeps its bytes
  imap::secure_wipe(password);
  std::lock_guard lock(impl_->m);
  if (impl_->table.stopped()) return;
  std::string& held = impl_->passwords[who.key];
  imap::secure_wipe(held);
  held = pw.value;
  const std::string key = who.key;
  if (impl_->table.on_login(who, std::move(legacy_server), std::move(client_address),
                            job_time::now()))
    impl_->kick_later();
  if (!impl_->table.find(key)->has_credentials) impl_->drop(key);  // credential_ttl 0, no job
  else impl_->rearm_sweep();
}

std::string scheduler::enqueue(sync_identity who, std::string legacy_server) {
  std::unique_lock lock(impl_->m);
  if (impl_->table.known_server(legacy_server) &&
      (!impl_->legacy_of(legacy_server).master.configured() ||
       !impl_->opts.bulk_new_master.configured()))
    return "needs a login: no master credentials for " +
           std::string(impl_->opts.bulk_new_master.configured() ? "its legacy server" : "[new]");
  if (impl_->store.shared()) {
    // Into the cluster's queue: whichever node has room runs it. The
    // database is asked without the table's lock: logins wait on that one.
    if (!impl_->table.known_server(legacy_server)) return "no legacy server \"" + legacy_server + "\"";
    lock.unlock();
    const queued_user u{who.key,         who.legacy.login, who.legacy.user, who.fresh.login,
                        who.fresh.user, legacy_server};
    try {
      std::lock_guard reader_lock(impl_->reader_m);
      if (!impl_->reader.queue_user(u, unix_now())) return "already queued in the cluster";
    } catch (const state_error& e) {
      return std::string("state store: ") + e.what();
    }
    impl_->kick_later();
    return "";
  }
  std::string refused = impl_->table.enqueue_bulk(who, std::move(legacy_server));
  if (refused.empty()) impl_->kick_later();
  return refused;
}

std::string scheduler::resync(std::string_view user) {
  const std::string key = user_key(impl_->opts.sync, user);
  std::lock_guard lock(impl_->m);
  std::string refused = impl_->table.resync(key);
  if (refused.empty()) impl_->kick_later();
  return refused;
}

void scheduler::pause() {
  std::lock_guard lock(impl_->m);
  impl_->table.pause();
}

void scheduler::resume() {
  std::lock_guard lock(impl_->m);
  impl_->table.resume();
  impl_->kick_later();
}

void scheduler::drain() {
  std::lock_guard lock(impl_->m);
  impl_->table.drain();
}

scheduler_totals scheduler::totals() const {
  std::unique_lock lock(impl_->m);
  scheduler_totals t;
  t.paused = impl_->table.paused();
  t.draining = impl_->table.draining();
  for (auto& [key, j] : impl_->table.jobs()) {
    switch (j.state) {
      case user_state::pending: ++t.queued; break;
      case user_state::running: ++t.running; break;
      case user_state::done: ++t.done; break;
      case user_state::failed: ++t.failed; break;
      case user_state::interrupted: ++t.interrupted; break;
    }
    // A running job's run is recorded with its counts only when it ends.
    if (auto it = impl_->progress.find(key); j.running && it != impl_->progress.end()) {
      t.messages_copied += it->second->messages_copied.load();
      t.bytes_copied += it->second->bytes_copied.load();
    }
  }
  t.legacy_connections = impl_->table.legacy_in_use();
  lock.unlock();
  std::lock_guard reader_lock(impl_->reader_m);
  run_totals recorded = impl_->reader.totals();
  t.messages_copied += recorded.messages_copied;
  t.bytes_copied += recorded.bytes_copied;
  return t;
}

std::optional<cluster_view> scheduler::cluster() const {
  std::lock_guard lock(impl_->reader_m);
  if (!impl_->reader.shared()) return std::nullopt;
  return impl_->reader.cluster();
}

std::string scheduler::node() const { return impl_->reader.node(); }

std::vector<user_view> scheduler::users() const {
  std::lock_guard lock(impl_->m);
  std::vector<user_view> out;
  out.reserve(impl_->table.jobs().size());
  for (auto& [key, j] : impl_->table.jobs()) out.push_back(impl_->view(key, j));
  return out;
}

std::optional<user_view> scheduler::user(std::string_view name) const {
  const std::string key = user_key(impl_->opts.sync, name);
  std::lock_guard lock(impl_->m);
  const job* j = impl_->table.find(key);
  if (!j) return std::nullopt;
  return impl_->view(key, *j);
}

std::vector<run_record> scheduler::runs(std::string_view name, std::size_t limit) const {
  const std::string key = user_key(impl_->opts.sync, name);
  std::lock_guard lock(impl_->reader_m);
  return impl_->reader.runs(key, limit);
}

}  // namespace suction::sync
