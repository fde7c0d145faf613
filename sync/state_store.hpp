// The engine's memory between runs: per user and folder a checkpoint, per
// copied message the legacy UID -> new UID map with the flags last agreed,
// the append journal (batches sent whose outcome is not known yet), and the
// history of runs. Two back ends behind the one interface (sync/sql.hpp):
// SQLite in WAL mode, one file, for one node; PostgreSQL for several nodes
// sharing one truth. The schema is versioned (SQLite: PRAGMA user_version;
// PostgreSQL: table suction_schema), the same versions and migrations on
// both, migrated forward on open.
//
// One run per user at a time, across processes and nodes: a run is held by
// its node and process. A run of this node is alive while its process is; a
// run of another node while its lease (renewed by every record and by
// renew_leases) has not expired by the database's clock. A run that lost
// its lease (another node took the user over) can no longer journal or
// record a batch: the fencing check is in the same transaction as the write.
//
// Failures of the store itself (disk full, a corrupt file) are not expected
// outcomes of a migration: they throw state_error.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace suction::sync {

namespace sql {
class database;
class statement;
}  // namespace sql

class state_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// begin_run: another live process (of this node or another) is migrating this user.
class run_busy : public state_error {
 public:
  run_busy(const std::string& what, std::int64_t pid, std::string node = {})
      : state_error(what), pid(pid), node(std::move(node)) {}
  std::int64_t pid;
  std::string node;
};

// A write of a run whose user is no longer its own (the lease expired and
// another node took the user over, or the run was marked interrupted): refused.
class lease_lost : public run_busy {
 public:
  using run_busy::run_busy;
};

// Who this store's runs belong to. node "": SQLite stays "" (one machine,
// runs told apart by process); PostgreSQL takes the host name.
struct store_identity {
  std::string node;
  std::int64_t lease_seconds = 60;  // another node's run is alive this long after its last renewal
  // Where this node's process ids mean something: the kernel's boot id and
  // this process's pid namespace ("": read them). Two machines (or
  // containers) under one node name would judge each other's runs by pids
  // that are not theirs: claim_node refuses that.
  std::string machine;
};

// Where one legacy folder stands (dsync's mailbox state, plus the new side).
struct folder_state {
  std::string legacy_name;                 // UTF-8, as on legacy
  std::uint32_t legacy_uidvalidity = 0;
  std::uint32_t last_legacy_uid = 0;       // every legacy UID <= this is copied or accounted for
  std::uint64_t highest_modseq = 0;        // legacy HIGHESTMODSEQ at the last run (0: no CONDSTORE)
  std::string new_name;                    // UTF-8, on the new server
  std::uint32_t new_uidvalidity = 0;
  std::uint32_t last_new_uid = 0;          // highest new UID recorded: above it, crash leftovers
  bool operator==(const folder_state&) const = default;
};

struct message_record {
  std::uint32_t legacy_uid = 0;
  std::uint32_t new_uid = 0;
  std::string flags;  // the flags last agreed by both sides, sorted, space-separated
  bool operator==(const message_record&) const = default;
};

// One APPEND sent to the new server whose answer was not recorded yet: written
// before the command goes out, deleted with the batch's record_batch (or when
// the server refused it). One left behind by a kill or a lost connection means
// the new server may still commit that batch, even after the next run began
// (it goes on reading the dead connection's bytes): see late_copies.hpp.
struct journal_entry {
  std::int64_t id = 0;
  std::vector<std::uint32_t> legacy_uids;  // the batch, in the order sent
  std::uint32_t uidnext_seen = 0;          // the new folder's next UID as the run knew it
  std::int64_t written_at = 0;             // unix seconds
  bool operator==(const journal_entry&) const = default;
};

enum class run_result : std::uint8_t { running, done, failed, interrupted };
std::string_view to_string(run_result r);

struct run_record {
  std::int64_t id = 0;
  std::string user;
  std::int64_t started_at = 0;   // unix seconds
  std::int64_t finished_at = 0;  // 0 while running
  run_result result = run_result::running;
  std::uint64_t messages_copied = 0, bytes_copied = 0, messages_failed = 0;
  std::string error;
  std::string started_by;        // "login", "bulk", "cli" ("" before schema 4)
  std::int64_t bytes_left = -1;  // known still to copy when it ended; -1: not known
  std::string node;              // the node that ran it ("": this machine's SQLite, before schema 5)
};

// What every node of a shared store is doing (suction status).
struct cluster_view {
  struct running_run {
    std::string user, node;
    std::int64_t pid = 0, started_at = 0;
  };
  std::vector<running_run> running;            // runs recorded as running, by node then user
  std::size_t queued = 0;                      // users in the cluster's queue
  std::map<std::string, std::uint32_t> legacy_by_node;  // legacy connections held, live processes
};

// Legacy connections by server name ("" = the default legacy server).
using legacy_counts = std::map<std::string, std::uint32_t, std::less<>>;

// A user in a shared store's queue: handed over for bulk migration
// (suction migrate on any node), or a login's job a node could not start
// (login_node: that node, the only one holding the password; client: the
// login's address). The names each server knows, and the legacy server.
struct queued_user {
  std::string key, legacy_login, legacy_user, new_login, new_user, legacy_server;
  std::string login_node, client;
  bool operator==(const queued_user&) const = default;
};

struct run_totals {
  std::uint64_t runs = 0, messages_copied = 0, bytes_copied = 0;
};

// Whether `location` names a PostgreSQL database (else a SQLite file).
bool sql_location_is_shared(std::string_view location);

class state_store {
 public:
  static constexpr int kSchemaVersion = 6;

  // Opens `location` (a path: created with its folder if needed, WAL; or a
  // PostgreSQL connection string, sql::is_postgresql) and migrates.
  explicit state_store(const std::string& location, store_identity id = {});
  ~state_store();
  state_store(const state_store&) = delete;
  state_store& operator=(const state_store&) = delete;

  int schema_version() const;
  // A shared store: registers this node's name for this machine (renewed
  // with the leases); throws state_error when another machine holds it.
  // For the processes that migrate (the daemon, suction sync), not readers.
  void claim_node();
  bool shared() const;               // PostgreSQL: several nodes may use it
  const std::string& node() const { return id_.node; }

  std::optional<folder_state> folder(std::string_view user, std::string_view legacy_name) const;
  std::vector<folder_state> folders(std::string_view user) const;
  void save_folder(std::string_view user, const folder_state& f);
  // A UIDVALIDITY change or a folder gone: its checkpoint and message map go.
  void forget_folder(std::string_view user, std::string_view legacy_name);

  // Records one APPEND batch (its APPENDUID answer) and the folder's new
  // checkpoint in one transaction: after a crash either both are there or
  // neither is. `resolved`: journal entries settled by it, deleted in the
  // same transaction.
  void record_batch(std::string_view user, const folder_state& updated,
                    std::span<const message_record> copied,
                    std::span<const std::int64_t> resolved = {});

  // The append journal (journal_entry). journal_batch writes an entry and
  // returns its id; drop_journal deletes entries (a refused batch, one
  // resolved without a record, one expired).
  std::int64_t journal_batch(std::string_view user, std::string_view legacy_name,
                             std::span<const std::uint32_t> legacy_uids,
                             std::uint32_t uidnext_seen, std::int64_t now);
  void drop_journal(std::span<const std::int64_t> ids);
  std::vector<journal_entry> journal(std::string_view user, std::string_view legacy_name) const;
  // The legacy folders of `user` with an entry: never skipped as unchanged.
  std::set<std::string> journaled_folders(std::string_view user) const;
  std::optional<message_record> message(std::string_view user, std::string_view legacy_name,
                                        std::uint32_t legacy_uid) const;
  std::vector<message_record> messages(std::string_view user, std::string_view legacy_name) const;
  // The legacy UIDs above `above` in the message map, in one query.
  std::set<std::uint32_t> recorded_above(std::string_view user, std::string_view legacy_name,
                                         std::uint32_t above) const;
  // The new UIDs above `above` in the message map (copies this engine made).
  std::set<std::uint32_t> recorded_new_above(std::string_view user, std::string_view legacy_name,
                                             std::uint32_t above) const;
  // New "last agreed" flags for (legacy UID, flags) pairs, in one transaction.
  void update_flags(std::string_view user, std::string_view legacy_name,
                    std::span<const std::pair<std::uint32_t, std::string>> flags);

  // One run per user at a time, across processes and nodes: throws run_busy
  // while another live process has a run of this user "running" (one of a
  // process gone, or of a node whose lease expired, is marked interrupted
  // first). pid 0: this process.
  std::int64_t begin_run(std::string_view user, std::int64_t now, std::int64_t pid = 0,
                         std::string_view started_by = {});
  void finish_run(const run_record& r);
  std::vector<run_record> runs(std::string_view user, std::size_t limit) const;  // newest first
  std::vector<run_record> latest_runs() const;  // every user's newest run, by user
  run_totals totals() const;                    // over every run recorded
  // Runs left "running" by this process (it is stopping), by a process of
  // this node that is gone (a crash, a kill) or by a node whose lease expired
  // become "interrupted"; those of another live process stay. At start-up
  // and at stop.
  std::size_t mark_interrupted(std::int64_t now);
  // Extends the lease of every run this process has running (the scheduler,
  // every lease/3: a long FETCH records nothing for a while).
  void renew_leases();

  // The cluster's legacy connections. claim_legacy: `decide` is given what
  // the other live processes (of any node) hold, by server, and returns what
  // this process holds now; read and write in one transaction under one
  // lock, so two nodes never both take the last connection of a server.
  // Returns what `decide` was given. publish_legacy: this process holds
  // fewer now (no check needed to let go).
  legacy_counts claim_legacy(const std::function<legacy_counts(const legacy_counts&)>& decide);
  void publish_legacy(const legacy_counts& held);

  // The cluster's queue: users handed over for bulk migration, and logins'
  // jobs (login_node set) ahead of them. queue_user: false when the user is
  // queued already (a login raises a waiting bulk row to a login's: true),
  // or, for a login, held by a node. take_queued: up to n users no live node
  // holds, logins first, now held by this process (under its lease; back in
  // the queue when it dies or stops, mark_interrupted). unqueue: its job is
  // over. queue_holder: the node holding the user's row ("" while it
  // waits), nullopt when it is not queued (any more).
  bool queue_user(const queued_user& u, std::int64_t now);
  std::vector<queued_user> take_queued(std::size_t n);
  std::optional<std::string> queue_holder(std::string_view user) const;
  void unqueue(std::string_view user);
  // Back to the queue for any node (this one could not run it now).
  void give_back(std::string_view user);
  std::size_t queue_length() const;
  cluster_view cluster() const;

 private:
  class transaction;
  static std::vector<run_record> read_runs(sql::statement& st);
  std::unique_ptr<sql::statement> prepare(std::string_view sql) const;
  void migrate();
  void delete_journal(std::span<const std::int64_t> ids);  // inside a transaction
  void write_legacy(const legacy_counts& held);              // inside a transaction
  // Inside a write transaction: throws lease_lost unless this user's newest
  // run is this process's and running (or there is none: a bare store), and
  // renews its lease.
  void fence(std::string_view user);
  bool alive(std::string_view node, std::int64_t pid, std::int64_t lease_until_ms, std::int64_t now_ms) const;
  std::int64_t db_now_ms() const;
  std::unique_ptr<sql::database> db_;
  store_identity id_;
};

}  // namespace suction::sync
