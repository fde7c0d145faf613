// The scheduler's policy (issue 12 must 3): which user's job starts, which
// waits, how many legacy connections a job may hold, and what the end of a
// run means (done, retried later, failed, credentials dropped). A pure object:
// events in, decisions out, the time passed in by the caller; no threads, no
// sockets, no passwords (only whether the runner holds one). The scheduler
// (scheduler.cpp) is the mechanism around it: it keeps the passwords, runs
// the jobs, and asks this table under its lock.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sync/failure.hpp"
#include "sync/state_store.hpp"
#include "sync/user_sync.hpp"

namespace suction::sync {

enum class user_state : std::uint8_t { pending, running, done, failed, interrupted };
std::string_view to_string(user_state s);

// The time of an event, both ways: a steady clock for deadlines (a password's
// lifetime must not stretch when the wall clock is stepped) and unix seconds
// for what the views and the runs show.
struct job_time {
  std::chrono::steady_clock::time_point mono{};
  std::int64_t unix = 0;

  static job_time now();
  job_time operator+(std::chrono::seconds d) const { return {mono + d, unix + d.count()}; }
};

struct job_rules {
  std::uint32_t max_concurrent_users = 4;
  std::uint32_t legacy_max_connections = 16;              // the default legacy server's
  std::map<std::string, std::uint32_t, std::less<>> more_legacy;  // other servers' caps, by name
  std::chrono::seconds resync_interval{600};
  std::chrono::seconds credential_ttl{3600};
  backoff_policy retry;
};

// One user's job, as the table keeps it.
struct job {
  user_state state = user_state::pending;
  bool queued = false, running = false;
  bool bulk = false;                 // queued by enqueue: master credentials, behind logins
  // A login's job this node could not start, handed to the cluster's queue
  // (a shared store, master credentials): whichever node has room runs it.
  // Not queued here meanwhile; settled when the row is gone.
  bool offered = false;
  sync_identity who;                 // names for the servers
  std::string legacy_server;         // "" = the default legacy server
  std::string client_address;        // of the last login
  bool has_credentials = false;      // the runner holds a password
  std::chrono::steady_clock::time_point credentials_until{};
  std::optional<std::int64_t> started_at, finished_at, completed_at;  // unix seconds
  std::string last_error;
  std::uint32_t attempts = 0;        // retried failures in a row
  std::optional<std::int64_t> retry_at;
  std::uint64_t retry_generation = 0;  // a retry counts only if it is the latest
  std::uint32_t extra_connections = 0;  // granted beyond the first pair, while running
};

// A job the table started: what the runner needs to run it.
struct job_start {
  std::string key;
  sync_identity who;
  std::string legacy_server;
  bool bulk = false;           // master credentials
  std::string client;          // the login's address ("" for a user who never logged in)
};

// What the end of a run decided.
struct job_end {
  user_state state = user_state::done;
  std::optional<std::chrono::milliseconds> retry_in;  // set: call retry_due(key, generation) then
  std::uint64_t generation = 0;
  bool drop_credentials = false;     // the runner wipes the password
  std::string note;                  // " retry_in=5.0s", " retry=no (...)" for the log line
};

class job_table {
 public:
  explicit job_table(job_rules rules) : rules_(std::move(rules)) {}

  // The users' last runs from the store, at start.
  void restore(const run_record& last);

  // A successful login. True when a job was queued for it (or a queued bulk
  // job moved ahead of the bulk queue). The runner holds the password.
  bool on_login(const sync_identity& who, std::string legacy_server, std::string client,
                job_time now);
  // A user who may never log in: "" when queued, else why not. `client`:
  // the login's address when it is another node's login run here.
  std::string enqueue_bulk(const sync_identity& who, std::string legacy_server,
                           std::string client = {});

  // Logins' jobs and the cluster's queue (a shared store). waiting_logins:
  // the logins' jobs queued here, not started (call after take_next). offer:
  // one of them goes to the cluster's queue (the runner put it there): out of
  // this node's queue, `offered` until settled. taken_back: this node took
  // its own offered row from the cluster's queue; queued as a login's job
  // again when it still holds the password (true), else false (the caller
  // runs it as a bulk job). settle_offered: the row is gone (another node ran
  // it): the user's state is that of its last run (`last`, if any); true
  // when the runner wipes the password (credential_ttl 0).
  std::vector<std::string> waiting_logins() const;
  bool offer(std::string_view key);
  bool taken_back(std::string_view key);
  std::vector<std::string> offered() const;
  bool settle_offered(std::string_view key, const std::optional<run_record>& last);
  // An operator's resync: "" when queued, else why not.
  std::string resync(std::string_view key);

  // The next job that may start now (caps, logins before bulk, each legacy
  // server's cap), marked running with its first pair of connections; nullopt
  // when none may. A queued login job whose credentials are gone fails here
  // (added to `failed_without_credentials`, for the log; the caller clears it).
  std::optional<job_start> take_next(job_time now);
  std::vector<std::string> failed_without_credentials;

  // More legacy connections for a running job: how many of `wanted` fit under
  // its server's cap, leaving one for each queued job of that server that
  // could start now.
  std::uint32_t grant(std::string_view key, std::uint32_t wanted);
  void release(std::string_view key, std::uint32_t n);

  // A run ended. `error`: the report's first error ("" if none).
  job_end finished(std::string_view key, bool ok, failure_kind failure, std::string error,
                   job_time now);
  // A retry's time came: queues the job unless something else ran meanwhile.
  bool retry_due(std::string_view key, std::uint64_t generation);

  // Users whose credentials expired (credential_ttl) and are not about to be
  // used: the runner wipes them.
  std::vector<std::string> expired_credentials(job_time now);
  // When the next held password reaches its credential_ttl (none: nothing
  // will expire), so the runner need not look every second.
  std::optional<std::chrono::steady_clock::time_point> next_credential_expiry() const;

  // Everything stops: running jobs become interrupted, queues emptied, every
  // credential dropped (the runner wipes them all).
  void stop();
  bool stopped() const { return stopped_; }

  void pause() { paused_ = true; }
  void resume() { paused_ = draining_ = false; }
  void drain() { draining_ = true; }
  bool paused() const { return paused_; }
  bool draining() const { return draining_; }

  const job* find(std::string_view key) const;
  const std::map<std::string, job, std::less<>>& jobs() const { return jobs_; }
  bool known_server(std::string_view server) const;
  std::uint32_t cap_of(std::string_view server) const;  // the server's max_connections
  std::uint32_t running() const { return running_; }
  std::uint32_t legacy_in_use() const;  // every server's

  // Several nodes sharing one state store: the legacy connections the other
  // nodes hold now, by server, read by the runner (in the same transaction
  // as it publishes legacy_held) before take_next and grant. Each server's
  // cap is then the cluster's.
  void set_held_elsewhere(std::map<std::string, std::uint32_t, std::less<>> held) {
    held_elsewhere_ = std::move(held);
  }
  // How many bulk jobs this node could start now from the cluster's queue
  // (a shared store): none while paused, draining or a login's job waits;
  // else the free job slots not already promised to queued jobs.
  std::uint32_t room_for_bulk() const;
  // This node's legacy connections, by server ("" = the default).
  const std::map<std::string, std::uint32_t, std::less<>>& legacy_held() const { return legacy_in_use_; }
  std::size_t queued() const { return queue_.size() + bulk_queue_.size(); }

 private:
  std::uint32_t room_on(const std::string& server) const;
  std::size_t waiting_on(const std::string& server) const;
  void queue(const std::string& key, job& j);
  bool login_queues(const sync_identity& who, std::string legacy_server, std::string client,
                    job_time now, job& j);

  job_rules rules_;
  std::map<std::string, job, std::less<>> jobs_;
  std::deque<std::string> queue_;       // logins' jobs, first
  std::deque<std::string> bulk_queue_;  // enqueue's, when no login waits
  std::map<std::string, std::uint32_t, std::less<>> legacy_in_use_;  // by server name
  std::map<std::string, std::uint32_t, std::less<>> held_elsewhere_;  // other nodes', by server name
  std::uint32_t running_ = 0;
  bool paused_ = false, draining_ = false, stopped_ = false;
};

}  // namespace suction::sync
