// The migration scheduler (issue 5; DESIGN.md "Scheduler"): every successful
// login through the proxy hands (user, password) here and returns at once; the
// scheduler runs sync_user for that user in the background on its own thread.
//
// Rules:
// - One job per user at a time: a login while the user's job is queued or
//   running starts nothing new. After a complete run, a login starts another
//   incremental pass at most once per resync_interval (0: every login). After a
//   failed or interrupted run, the next login starts one at once.
// - Caps: at most max_concurrent_users jobs run at once, and the connections
//   they open to legacy never exceed legacy_max_connections: a job starts
//   with one (its first pair) and opens more pairs (connections_per_user, for
//   a mailbox above parallel_threshold) only as far as the cap has room,
//   leaving one connection for each queued job that could start, so a few
//   big mailboxes do not keep small ones waiting. Queued jobs start in login
//   order as room frees up; each legacy server has its own cap.
// - Logins before bulk: users handed over by enqueue (suction migrate) start
//   only when no login's job is waiting, and a login of a user whose bulk job
//   is still queued moves it to the logins' queue.
// - Several nodes (a shared store): users handed over on any node go to the
//   cluster's queue, which every node takes from while it has room. A login's
//   job this node cannot start now (no slot or legacy connection free,
//   paused, draining) goes there too, ahead of the bulk users, when master
//   credentials for its servers let another node run it; the password never
//   leaves this node, which runs it with the password if it takes it back
//   itself. Without master credentials it waits here.
// - A failure its policy retries (failure.hpp: a server unreachable, a
//   connection lost, a login refused for now with [UNAVAILABLE] and the like)
//   is tried again with the backoff policy, the credentials kept meanwhile; a
//   login refused for its credentials is not retried, its password wiped, and
//   reported ("failed" with the server's words).
// - Credentials live in memory only: kept for credential_ttl after the login
//   (for retries and operator resyncs), then wiped (OPENSSL_cleanse); a job's
//   own copy is wiped when it ends. With credential_ttl 0 they are wiped when
//   the job ends.
// - Every run is in the state store's history (sync_user records it). At
//   start, runs left "running" by a crash become "interrupted"; the users come
//   back with their last state and resume incrementally at their next login.
//
// Thread safety: every public member may be called from any thread (the proxy's
// io_context thread calls on_login and the status socket's queries).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sync/job_table.hpp"
#include "sync/state_store.hpp"
#include "sync/user_sync.hpp"

namespace suction::sync {

// A legacy server other than opts.sync.legacy (issue 10 must 4), with its own
// cap on connections. Its `server.master` is used only for bulk jobs.
struct legacy_target {
  std::string name;
  server_options server;
  std::uint32_t max_connections = 16;
};

struct scheduler_options {
  user_sync_options sync;                      // sync.connections: per user
  // More legacy servers, by name; a job's server is the name it came with
  // ("" = sync.legacy, capped by legacy_max_connections).
  std::vector<legacy_target> more_legacy;
  // Bulk jobs (enqueue: users who may never log in) log in to both servers
  // with master credentials: the new server's here, legacy's in its
  // server_options (sync.legacy.master, more_legacy[i].server.master).
  imap::master_credentials bulk_new_master;
  std::string state_db;      // a path or a PostgreSQL connection string (state_store)
  store_identity store;      // this node, and its runs' lease
  std::uint32_t max_concurrent_users = 4;
  std::uint32_t legacy_max_connections = 16;
  std::chrono::seconds resync_interval{600};
  std::chrono::seconds credential_ttl{3600};
  // Retried failures (failure.hpp): 5 s doubling to 10 min, 10 in a row at most.
  backoff_policy retry;
  // One line per run and per notable event (credentials expired, a retry
  // scheduled). Never given a credential. Called on the scheduler's thread.
  std::function<void(const std::string&)> log;
  // Every run's duration, when it ends (the metrics' histogram). Called on
  // the scheduler's thread, under its lock: must not block.
  std::function<void(std::chrono::milliseconds)> observe_run;
};


struct progress_view {
  std::uint32_t folders_done = 0, folders_total = 0;
  std::uint64_t messages_copied = 0, messages_total = 0, bytes_copied = 0, bytes_total = 0;
};

struct user_view {
  std::string user;
  user_state state = user_state::pending;
  progress_view progress;                 // of the running or the last run of this process
  std::optional<std::int64_t> started_at;   // unix seconds, of the current or last run
  std::optional<std::int64_t> finished_at;
  std::string last_error;
  bool credentials_held = false;
  std::uint32_t attempts = 0;             // transient failures in a row
  std::optional<std::int64_t> retry_at;   // unix seconds of the next retry, if one is set
  bool bulk = false;                      // queued or run by enqueue, not by a login
  bool offered = false;                   // its login's job waits in the cluster's queue
  std::string legacy_server;              // "" = the default legacy server
};

struct scheduler_totals {
  bool paused = false, draining = false;
  std::uint64_t queued = 0, running = 0, done = 0, failed = 0, interrupted = 0;
  std::uint64_t messages_copied = 0, bytes_copied = 0;  // every run recorded, running ones too
  std::uint32_t legacy_connections = 0;                 // open (or opening) by running jobs
};

class scheduler {
 public:
  // Opens the state store (marking crashed runs interrupted) and loads the
  // users it knows. Throws state_error when the store cannot be opened.
  explicit scheduler(scheduler_options opts);
  ~scheduler();  // stop()
  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;

  void start();  // the worker thread
  // Ends running jobs at once (their runs become "interrupted"), wipes every
  // credential, joins the thread. Idempotent.
  void stop();

  // A successful login: returns at once. Copies the password and wipes the
  // argument. client_address goes into the run's log line.
  void on_login(std::string user, std::string password, std::string client_address);
  // The same with the names mapped ([users]): keyed by who.key, copied from
  // the legacy server named legacy_server ("" = the default).
  void on_login(sync_identity who, std::string legacy_server, std::string password,
                std::string client_address);

  // A user who may never log in (suction migrate): queued behind every login,
  // run with master credentials at the same caps. "" when queued, else why
  // not (already queued or running, no master credentials for its servers,
  // an unknown legacy server).
  std::string enqueue(sync_identity who, std::string legacy_server);

  // Operator commands. resync: "" when queued, else why not (unknown user, no
  // credentials held, already queued or running).
  std::string resync(std::string_view user);
  void pause();   // start no job until resume()
  void resume();  // undo pause() and drain()
  void drain();   // let running jobs finish, start no other

  scheduler_totals totals() const;
  // A shared state store: every node's running runs, the cluster's queue and
  // legacy connections, and this node's name; nullopt with SQLite. Throws
  // state_error when the database cannot be read.
  std::optional<cluster_view> cluster() const;
  std::string node() const;
  std::vector<user_view> users() const;  // by user name
  std::optional<user_view> user(std::string_view name) const;
  std::vector<run_record> runs(std::string_view name, std::size_t limit) const;  // newest first

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace suction::sync
