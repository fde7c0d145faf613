// One user's whole run (issue 4; DESIGN.md "The sync engine, per user"): connect
// and log in to both servers, plan the folders, create them (\Noselect parents and
// empty folders too), subscribe as planned, then copy every selectable folder with
// copy_folder, recording the run in the state store. Folders are copied
// several at once (issue 4 item 9), each worker over its own pair of
// connections ([sync] connections_per_user), INBOX first and then the largest
// first; INBOX's recent mail goes first within it (recent_first_days). A
// worker whose connection breaks stops; the others go on.
//
// No-change runs (issue 4 item 4): each selectable folder's legacy STATUS (with
// HIGHESTMODSEQ when legacy offers CONDSTORE) comes with the LIST when legacy
// offers LIST-STATUS (RFC 5819), else from one STATUS command each. A folder whose
// UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ show nothing new since the last complete
// run (the modseq is stored in its checkpoint after copy_folder succeeded without
// errors) is skipped without EXAMINE/SELECT/FETCH. Without CONDSTORE flag changes
// are invisible to STATUS, so copy_folder still runs (its flag step), copying
// nothing.
//
// Plain option structs: sync/ never sees config/. The password is used for LOGIN
// only; it is never logged nor put into the report.
#pragma once

#include "imap/log_value.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "imap/client/client.hpp"
#include "sync/failure.hpp"
#include "sync/folder_copy.hpp"
#include "sync/folder_plan.hpp"
#include "sync/state_store.hpp"

namespace suction::sync {

struct server_options {
  imap::endpoint endpoint;
  imap::tls_settings tls;
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  std::chrono::milliseconds command_timeout{std::chrono::seconds(120)};
  // Configured: the user is logged in with these master credentials instead
  // of the user's password (a new server that does not know it yet).
  imap::master_credentials master;
};

// Ends runs at once from outside (the scheduler stopping): closes every
// connection the runs given it have open, and any they open afterwards, so
// their coroutines unwind (none is destroyed suspended with its connections
// gone) and each run is recorded interrupted. On the runs' io_context thread
// only.
class run_stopper {
 public:
  void stop();
  bool stopped() const { return stopped_; }
  // A run's connection, from its creation to its destruction.
  void add(imap::client* c) { open_.push_back(c); }
  void remove(imap::client* c) { std::erase(open_, c); }

 private:
  std::vector<imap::client*> open_;
  bool stopped_ = false;
};

struct user_sync_options {
  server_options legacy;
  server_options fresh;  // the new server
  folder_rules rules;
  copy_options copy;
  // Folders copied at once, each over its own pair of connections (one to
  // each server): [sync] connections_per_user. The run never opens more.
  std::uint32_t connections = 2;
  // ... but only when the folders to copy hold at least this many messages
  // (STATUS estimate); below, one pair does it all.
  std::uint64_t parallel_min_messages = 200;
  // "Alice" and "alice" are one user for the state store and the scheduler
  // (ASCII case folded), as on most mail servers; the servers still get the
  // name as typed. False: names are keys as typed.
  bool fold_user_case = true;
  // Where more pairs need the scheduler's leave (its cap on connections to
  // legacy): asked for n more, returns how many it grants (0..n); each granted
  // one is handed back with release_connections when the run's copying ends.
  // Empty: every wanted pair is opened.
  std::function<std::uint32_t(std::uint32_t n)> acquire_connections;
  std::function<void(std::uint32_t n)> release_connections;
  // INBOX's mail of the last N days goes first, newest first; 0: UID order.
  std::uint32_t recent_first_days = 14;
  // What started the run, for the run history: "login", "bulk", "cli".
  std::string started_by = "cli";
  // Set: the run's connections are registered there, and it ends at once,
  // interrupted, when stopped.
  std::shared_ptr<run_stopper> stopper;
};

// A run's progress, written by the run, read from any thread (the status
// socket). Totals grow as folders are scanned: before its scan a folder
// counts with its STATUS estimate.
struct sync_progress {
  std::atomic<std::uint32_t> folders_total{0}, folders_done{0};
  std::atomic<std::uint64_t> messages_total{0}, messages_copied{0};
  std::atomic<std::uint64_t> bytes_total{0}, bytes_copied{0};
};

enum class sync_outcome : std::uint8_t {
  ok,                    // every planned folder copied, nothing refused
  login_failed,          // the legacy or the new server refused the credentials
  finished_with_errors,  // the run went through; some folders or messages failed
  failed,                // could not run (a server unreachable, the plan impossible, ...)
  interrupted,           // cut off by run_stopper (the daemon stopping); resumes next time
};
const char* to_string(sync_outcome o);  // "ok", "login_failed", ...

struct folder_report {
  std::string legacy_name, new_name;  // UTF-8
  std::string use;                    // special-use ("sent", ...) or "none"
  bool selectable = true;
  bool subscribe = false;
  std::string note;                   // why the name is not simply translated
  // STATUS on legacy (MESSAGES). For --dry-run, `to_copy` is an approximation of
  // what a run would copy: all MESSAGES without a checkpoint; with one,
  // min(MESSAGES, UIDNEXT - 1 - last_legacy_uid). UIDs are not dense (expunges,
  // gaps), so it can overcount; it is exact for a folder copied up to date (0).
  std::uint32_t legacy_messages = 0;
  std::uint32_t to_copy = 0;
  std::uint64_t copied = 0, bytes = 0, skipped = 0, failed = 0;
  std::uint64_t reconciled = 0, rematched = 0, removed = 0;  // see folder_copy_report
  std::uint64_t flags_updated = 0;              // see folder_copy_report
  std::string check;     // why it was looked at, or "unchanged" (check_folder)
  bool done = false;     // copy_folder processed it (or it needs no copy)
  std::string error;     // why the folder stopped, if it did
  bool error_is_connection = false;  // the error broke a connection: the run stopped there
};

struct user_sync_report {
  std::string user;
  bool dry_run = false;
  sync_outcome outcome = sync_outcome::ok;
  std::size_t folders_planned = 0, folders_copied = 0;
  // Folders copy_folder was run on (EXAMINEd): with CONDSTORE on legacy, a
  // folder whose STATUS (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ) matches its
  // checkpoint is skipped whole, so a no-change run examines 0 folders.
  std::size_t folders_examined = 0;
  // STATUS commands sent to legacy one folder at a time: 0 when LIST-STATUS
  // (RFC 5819) answered them all with the LIST.
  std::size_t legacy_status_commands = 0;
  std::uint64_t messages_copied = 0, messages_skipped = 0, messages_failed = 0, bytes = 0;
  // Copies found on the new server instead of copied (crash leftovers, late
  // batches) and our second copies removed: see folder_copy_report.
  std::uint64_t messages_reconciled = 0, messages_removed = 0;
  std::chrono::milliseconds duration{0};
  std::vector<folder_report> folders;        // the plan, in its order
  std::vector<std::string> subscribe_only;   // subscribed on legacy, no such folder
  std::vector<std::string> excluded;
  std::vector<std::string> problems;         // the plan's notes (merges, renames)
  std::vector<std::string> errors;           // first one is the run's error
  // What decides what happens next (failure.hpp): retried or not, the
  // credentials kept or not, the exit code. note_failure keeps the worst.
  failure_kind failure = failure_kind::none;
};

inline void note_failure(user_sync_report& r, failure_kind k) { r.failure = worse(r.failure, k); }

// The user's key in the state store and the scheduler (fold_user_case).
std::string user_key(const user_sync_options& opts, std::string_view user);

// What one server is told: `login` with the user's password ("bob", or
// "bob*admin" as typed), `user` when the server's master credentials are used.
struct server_login {
  std::string login, user;
};

// Who a run migrates (issue 10 must 3): the canonical identity that keys the
// state store and the scheduler, and the names each server knows.
struct sync_identity {
  std::string key;
  server_login legacy, fresh;
};

// The same name on both servers, keyed by user_key: no [users] mapping.
sync_identity same_names(const user_sync_options& opts, std::string_view user);

// A value for a key=value log line (imap/log_value.hpp): a user name must not
// forge log lines.
using imap::log_value;

// The run as key=value pairs for a log line: "user=alice result=ok
// folders=12/12 copied=345 bytes=... failed=0 duration=1.234s" and the first
// error, if any (quoted, control bytes escaped).
std::string describe_run(const user_sync_report& r);

// Never throws for an expected failure (those are in the report); a state store
// failure (state_error) propagates.
boost::asio::awaitable<user_sync_report> sync_user(boost::asio::any_io_executor ex,
                                                   const user_sync_options& opts,
                                                   std::string_view user,
                                                   std::string_view password, state_store& state,
                                                   bool dry_run,
                                                   sync_progress* progress = nullptr);
// The same with the names mapped (who.key keys the state store).
boost::asio::awaitable<user_sync_report> sync_user(boost::asio::any_io_executor ex,
                                                   const user_sync_options& opts,
                                                   const sync_identity& who,
                                                   std::string_view password, state_store& state,
                                                   bool dry_run,
                                                   sync_progress* progress = nullptr);

}  // namespace suction::sync
