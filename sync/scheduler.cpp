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
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>

#include "imap/client/secure_wipe.hpp"

namespace suction::sync {

namespace asio = boost::asio;

namespace {

std::int64_t unix_now() { return static_cast<std::int64_t>(std::time(nullptr)); }

using imap::secret;

struct entry {
  user_state state = user_state::pending;
  bool queued = false, running = false;
  std::string password;  // wiped by drop_credentials
  bool has_password = false;
  std::chrono::steady_clock::time_point credentials_until{};
  sync_identity who;           // names for the servers (the map's key is who.key)
  std::string legacy_server;   // "" = the default legacy server
  bool bulk = false;           // queued by enqueue: no password, master credentials
  std::string client_address;  // of the last login
  std::optional<std::int64_t> started_at, finished_at, completed_at;
  std::string last_error;
  std::shared_ptr<sync_progress> progress;
  std::uint32_t attempts = 0;
  std::optional<std::int64_t> retry_at;
  std::uint32_t extra_connections = 0;  // granted beyond the first pair, while running
  std::uint64_t retry_generation = 0;   // a retry timer counts only if it is the latest

  void drop_credentials() {
    imap::secure_wipe(password);  // empties it too
    has_password = false;
  }
};

user_state from_run(run_result r) {
  switch (r) {
    case run_result::done: return user_state::done;
    case run_result::failed: return user_state::failed;
    case run_result::running:  // not after mark_interrupted; and a crash is an interruption
    case run_result::interrupted: return user_state::interrupted;
  }
  return user_state::interrupted;
}


}  // namespace

std::string_view to_string(user_state s) {
  switch (s) {
    case user_state::pending: return "pending";
    case user_state::running: return "running";
    case user_state::done: return "done";
    case user_state::failed: return "failed";
    case user_state::interrupted: return "interrupted";
  }
  return "pending";
}

struct scheduler::impl {
  explicit impl(scheduler_options o)
      : opts(std::move(o)),
        store(opts.state_db),
        reader(opts.state_db),
        work(asio::make_work_guard(io)),
        sweeper(io) {
    store.mark_interrupted(unix_now());
    for (auto& r : reader.latest_runs()) {
      entry& e = users[r.user];
      e.state = from_run(r.result);
      e.started_at = r.started_at;
      if (r.finished_at != 0) e.finished_at = r.finished_at;
      if (r.result == run_result::done) e.completed_at = r.finished_at;
      e.last_error = r.error;
    }
  }

  scheduler_options opts;
  state_store store;   // the jobs', on the worker thread only
  mutable std::mutex reader_m;  // guards `reader`, apart: logins never wait on SQLite
  mutable state_store reader;   // queries from other threads
  mutable std::mutex m;         // guards everything below
  std::map<std::string, entry, std::less<>> users;
  std::deque<std::string> queue;       // logins' jobs, first
  std::deque<std::string> bulk_queue;  // enqueue's, when no login waits
  bool paused = false, draining = false, stopped = false;
  std::uint32_t running = 0;
  std::map<std::string, std::uint32_t, std::less<>> legacy_in_use;  // by server name

  const legacy_target* target(std::string_view server) const {
    for (const auto& t : opts.more_legacy)
      if (t.name == server) return &t;
    return nullptr;
  }
  const server_options& legacy_of(std::string_view server) const {
    const legacy_target* t = target(server);
    return t ? t->server : opts.sync.legacy;
  }
  std::uint32_t cap_of(std::string_view server) const {
    const legacy_target* t = target(server);
    return t ? t->max_connections : opts.legacy_max_connections;
  }
  std::uint32_t room_on(const std::string& server) const {
    auto it = legacy_in_use.find(server);
    const std::uint32_t used = it == legacy_in_use.end() ? 0 : it->second;
    const std::uint32_t cap = cap_of(server);
    return used < cap ? cap - used : 0;
  }
  // Queued jobs that could start now on `server`.
  std::size_t waiting_on(const std::string& server) const {
    std::size_t n = 0;
    for (const auto* q : {&queue, &bulk_queue})
      for (const auto& name : *q)
        if (auto it = users.find(name); it != users.end() && it->second.legacy_server == server) ++n;
    return n;
  }

  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> work;
  asio::steady_timer sweeper;
  std::thread thread;

  // Under m: more legacy connections for a running job, within the cap and
  // leaving one for each queued job that could start now (a big mailbox does
  // not keep small ones waiting).
  std::uint32_t grant(const std::string& name, std::uint32_t wanted) {
    entry& e = users[name];
    const std::uint32_t free_slots =
        running < opts.max_concurrent_users ? opts.max_concurrent_users - running : 0;
    const std::uint32_t kept = static_cast<std::uint32_t>(
        std::min<std::size_t>(paused || draining ? 0 : waiting_on(e.legacy_server), free_slots));
    const std::uint32_t room = room_on(e.legacy_server);
    const std::uint32_t g = std::min(wanted, room > kept ? room - kept : 0);
    legacy_in_use[e.legacy_server] += g;
    e.extra_connections += g;
    return g;
  }

  void log(const std::string& line) {
    if (opts.log) opts.log(line);
  }

  // Under m.
  void enqueue(const std::string& name, entry& e) {
    e.queued = true;
    e.state = user_state::pending;
    e.retry_at.reset();
    (e.bulk ? bulk_queue : queue).push_back(name);
    asio::post(io, [this] { kick(); });
  }

  // Under m: the next queued job whose legacy server has room, logins first;
  // "" when none.
  std::string take_next() {
    for (auto* q : {&queue, &bulk_queue}) {
      for (auto it = q->begin(); it != q->end(); ++it) {
        if (room_on(users[*it].legacy_server) == 0) continue;
        std::string name = std::move(*it);
        q->erase(it);
        return name;
      }
    }
    return {};
  }

  // Starts queued jobs while the caps allow. On the worker thread. The jobs
  // are spawned after the lock is released: co_spawn may run a job at once,
  // up to its first wait, and a job that ends without waiting (its run
  // refused as busy, a CA file that cannot be read) locks m in finish().
  void kick() {
    std::vector<std::tuple<std::string, std::shared_ptr<secret>, std::shared_ptr<sync_progress>>>
        starting;
    std::unique_lock lock(m);
    while (!stopped && !paused && !draining && running < opts.max_concurrent_users) {
      std::string name = take_next();
      if (name.empty()) break;
      entry& e = users[name];
      e.queued = false;
      if (!e.has_password && !e.bulk) {
        e.state = user_state::failed;
        e.last_error = "no credentials held any more (credential_ttl): waiting for the next login";
        log("migration user=" + log_value(name) + " result=failed error=" + log_value(e.last_error));
        continue;
      }
      e.running = true;
      e.state = user_state::running;
      e.started_at = unix_now();
      e.finished_at.reset();
      e.progress = std::make_shared<sync_progress>();
      ++running;
      legacy_in_use[e.legacy_server] += 1;  // the job's first pair; more through grant()
      // The job's own copy of the password, made here: never a moved-from string.
      starting.emplace_back(name, std::make_shared<secret>(e.password), e.progress);
    }
    lock.unlock();
    for (auto& [name, pw, progress] : starting)
      asio::co_spawn(io, run_job(name, pw, progress), asio::detached);
  }

  // The options of one job: its legacy server; a login's job logs in with
  // the user's password, a bulk job with both servers' master credentials.
  user_sync_options job_options(const entry& e) const {
    user_sync_options job = opts.sync;
    job.started_by = e.bulk ? "bulk" : "login";
    job.legacy = legacy_of(e.legacy_server);
    if (e.bulk) {
      job.fresh.master = opts.bulk_new_master;
    } else {
      job.legacy.master = {};
    }
    job.connections = std::max<std::uint32_t>(1, std::min(job.connections, cap_of(e.legacy_server)));
    return job;
  }

  // name: the user's key (the names for the servers are in its entry).
  asio::awaitable<void> run_job(std::string name, std::shared_ptr<secret> pw,
                                std::shared_ptr<sync_progress> progress) {
    // Never inside kick(): a job that ends without waiting would start the
    // next one from its finish(), recursively.
    co_await asio::post(io, asio::use_awaitable);
    user_sync_options job;
    sync_identity who;
    {
      std::lock_guard lock(m);
      const entry& e = users[name];
      job = job_options(e);
      who = e.who;
    }
    // More pairs of connections only as the legacy cap allows, counted per job.
    job.acquire_connections = [this, name](std::uint32_t n) {
      std::lock_guard lock(m);
      return grant(name, n);
    };
    job.release_connections = [this, name](std::uint32_t n) {
      std::lock_guard lock(m);
      entry& e = users[name];
      n = std::min(n, e.extra_connections);
      e.extra_connections -= n;
      legacy_in_use[e.legacy_server] -= n;
    };
    user_sync_report rep;
    try {
      rep = co_await sync_user(io.get_executor(), job, who, pw->value, store, false,
                               progress.get());
    } catch (const std::exception& e) {
      rep.user = name;
      rep.outcome = sync_outcome::failed;
      rep.errors.push_back(e.what());  // sync_user recorded the run with it
    }
    finish(name, rep);
  }

  // A job ended. On the worker thread.
  void finish(const std::string& name, const user_sync_report& rep) {
    std::string retry_note;
    {
      std::lock_guard lock(m);
      entry& e = users[name];
      e.running = false;
      --running;
      legacy_in_use[e.legacy_server] -= 1 + e.extra_connections;
      e.extra_connections = 0;
      e.finished_at = unix_now();
      e.last_error = rep.errors.empty() ? std::string() : rep.errors.front();
      if (opts.observe_run) opts.observe_run(rep.duration);
      if (rep.outcome == sync_outcome::ok) {
        e.state = user_state::done;
        e.completed_at = e.finished_at;
        e.attempts = 0;
      } else if (policy(rep.failure).retried) {
        ++e.attempts;
        if (stopped) {
          e.state = user_state::interrupted;
        } else if (!opts.retry.allows(e.attempts)) {
          e.state = user_state::failed;
          retry_note = " retry=no (" + std::to_string(e.attempts) + " attempts)";
        } else if (!e.has_password && !e.bulk) {
          e.state = user_state::failed;
          retry_note = " retry=no (no credentials held)";
        } else {
          const auto delay = opts.retry.delay(e.attempts);
          e.state = user_state::pending;
          e.retry_at = unix_now() + std::chrono::ceil<std::chrono::seconds>(delay).count();
          char buf[48];
          std::snprintf(buf, sizeof buf, " retry_in=%.1fs", delay.count() / 1000.0);
          retry_note = buf;
          asio::co_spawn(io, retry_later(name, delay, ++e.retry_generation), asio::detached);
        }
      } else {
        // Not retried (failure.hpp): refused credentials are dropped; refused
        // messages are reported and were accounted for.
        e.state = user_state::failed;
        e.attempts = 0;
        if (!policy(rep.failure).keeps_credentials) e.drop_credentials();
      }
      if (opts.credential_ttl.count() == 0 && !e.retry_at) e.drop_credentials();
      log("migration " + describe_run(rep) + " client=" + (e.bulk ? "bulk" : e.client_address) +
          " legacy=" + imap::display(legacy_of(e.legacy_server).endpoint) + " new=" +
          imap::display(opts.sync.fresh.endpoint) +
          " attempt=" + std::to_string(std::max<std::uint32_t>(e.attempts, 1)) + retry_note);
    }
    kick();
  }

  asio::awaitable<void> retry_later(std::string name, std::chrono::milliseconds delay,
                                    std::uint64_t generation) {
    asio::steady_timer t(io, delay);
    boost::system::error_code ec;
    co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    std::lock_guard lock(m);
    auto it = users.find(name);
    // Not when another run came in between (a login or a resync) and set its own.
    if (stopped || it == users.end() || !it->second.retry_at || it->second.running ||
        it->second.queued || it->second.retry_generation != generation)
      co_return;
    enqueue(name, it->second);
  }

  // Drops credentials older than credential_ttl, once a second.
  asio::awaitable<void> sweep() {
    for (;;) {
      sweeper.expires_after(std::chrono::seconds(1));
      boost::system::error_code ec;
      co_await sweeper.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return;
      std::lock_guard lock(m);
      const auto now = std::chrono::steady_clock::now();
      for (auto& [name, e] : users)
        // Not while queued: the job is about to use them (a storm's queue
        // can be longer than a short credential_ttl).
        if (e.has_password && !e.running && !e.queued && opts.credential_ttl.count() > 0 &&
            now >= e.credentials_until) {
          e.drop_credentials();
          log("credentials dropped user=" + log_value(name) + " (credential_ttl " +
              std::to_string(opts.credential_ttl.count()) + "s)");
        }
    }
  }

  user_view view(const std::string& name, const entry& e) const {
    user_view v;
    v.user = name;
    v.state = e.state;
    if (e.progress) {
      const sync_progress& p = *e.progress;
      v.progress = {p.folders_done.load(), p.folders_total.load(), p.messages_copied.load(),
                    p.messages_total.load(), p.bytes_copied.load(), p.bytes_total.load()};
    }
    v.started_at = e.started_at;
    v.finished_at = e.finished_at;
    v.last_error = e.last_error;
    v.credentials_held = e.has_password;
    v.attempts = e.attempts;
    v.retry_at = e.retry_at;
    v.bulk = e.bulk;
    v.legacy_server = e.legacy_server;
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
    if (impl_->stopped) return;
    impl_->stopped = true;
    for (auto& [name, e] : impl_->users) {
      e.drop_credentials();
      if (e.running) e.state = user_state::interrupted;
      e.queued = false;
      e.retry_at.reset();
    }
    impl_->queue.clear();
    impl_->bulk_queue.clear();
  }
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  // The jobs' coroutines are suspended for good: their runs were cut off.
  impl_->store.mark_interrupted(unix_now());
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
  const std::string key = who.key;
  std::lock_guard lock(impl_->m);
  if (impl_->stopped) return;
  entry& e = impl_->users[key];
  imap::secure_wipe(e.password);
  e.password = pw.value;
  e.has_password = true;
  e.credentials_until = std::chrono::steady_clock::now() + impl_->opts.credential_ttl;
  e.client_address = std::move(client_address);
  if (e.running) return;  // one job per user: the running one keeps its names
  e.who = std::move(who);
  e.legacy_server = std::move(legacy_server);
  if (e.queued && e.bulk) {
    // A login goes first: the bulk job moves to the logins' queue.
    std::erase(impl_->bulk_queue, key);
    e.bulk = false;
    impl_->queue.push_back(key);
    asio::post(impl_->io, [i = impl_.get()] { i->kick(); });
    return;
  }
  e.bulk = false;
  if (e.queued || e.retry_at) return;  // one job per user
  if (e.state == user_state::done && e.completed_at &&
      unix_now() - *e.completed_at < impl_->opts.resync_interval.count())
    return;
  impl_->enqueue(key, e);
}

std::string scheduler::enqueue(sync_identity who, std::string legacy_server) {
  const std::string key = who.key;
  std::lock_guard lock(impl_->m);
  if (impl_->stopped) return "the daemon is stopping";
  if (!legacy_server.empty() && !impl_->target(legacy_server))
    return "no legacy server \"" + legacy_server + "\"";
  if (!impl_->legacy_of(legacy_server).master.configured() ||
      !impl_->opts.bulk_new_master.configured())
    return "needs a login: no master credentials for " +
           std::string(impl_->opts.bulk_new_master.configured() ? "its legacy server" : "[new]");
  entry& e = impl_->users[key];
  if (e.running || e.queued) return "already queued or running";
  e.who = std::move(who);
  e.legacy_server = std::move(legacy_server);
  e.bulk = true;
  e.client_address.clear();
  impl_->enqueue(key, e);
  return "";
}

std::string scheduler::resync(std::string_view user) {
  const std::string key = user_key(impl_->opts.sync, user);
  std::lock_guard lock(impl_->m);
  auto it = impl_->users.find(key);
  if (it == impl_->users.end()) return "unknown user " + std::string(user);
  entry& e = it->second;
  if (e.running || e.queued)
    return "a migration of " + std::string(user) + " is already queued or running";
  if (!e.has_password && !e.bulk)
    return "no credentials held for " + std::string(user) +
           ": they are kept only for credential_ttl after a login; the user must log in again";
  impl_->enqueue(it->first, e);
  return "";
}

void scheduler::pause() {
  std::lock_guard lock(impl_->m);
  impl_->paused = true;
}

void scheduler::resume() {
  std::lock_guard lock(impl_->m);
  impl_->paused = impl_->draining = false;
  asio::post(impl_->io, [i = impl_.get()] { i->kick(); });
}

void scheduler::drain() {
  std::lock_guard lock(impl_->m);
  impl_->draining = true;
}

scheduler_totals scheduler::totals() const {
  std::unique_lock lock(impl_->m);
  scheduler_totals t;
  t.paused = impl_->paused;
  t.draining = impl_->draining;
  for (auto& [name, e] : impl_->users) {
    switch (e.state) {
      case user_state::pending: ++t.queued; break;
      case user_state::running: ++t.running; break;
      case user_state::done: ++t.done; break;
      case user_state::failed: ++t.failed; break;
      case user_state::interrupted: ++t.interrupted; break;
    }
    // A running job's run is recorded with its counts only when it ends.
    if (e.running && e.progress) {
      t.messages_copied += e.progress->messages_copied.load();
      t.bytes_copied += e.progress->bytes_copied.load();
    }
  }
  for (const auto& [server, n] : impl_->legacy_in_use) t.legacy_connections += n;
  lock.unlock();
  std::lock_guard reader_lock(impl_->reader_m);
  run_totals recorded = impl_->reader.totals();
  t.messages_copied += recorded.messages_copied;
  t.bytes_copied += recorded.bytes_copied;
  return t;
}

std::vector<user_view> scheduler::users() const {
  std::lock_guard lock(impl_->m);
  std::vector<user_view> out;
  out.reserve(impl_->users.size());
  for (auto& [name, e] : impl_->users) out.push_back(impl_->view(name, e));
  return out;
}

std::optional<user_view> scheduler::user(std::string_view name) const {
  const std::string key = user_key(impl_->opts.sync, name);
  std::lock_guard lock(impl_->m);
  auto it = impl_->users.find(key);
  if (it == impl_->users.end()) return std::nullopt;
  return impl_->view(it->first, it->second);
}

std::vector<run_record> scheduler::runs(std::string_view name, std::size_t limit) const {
  const std::string key = user_key(impl_->opts.sync, name);
  std::lock_guard lock(impl_->reader_m);
  return impl_->reader.runs(key, limit);
}

}  // namespace suction::sync
