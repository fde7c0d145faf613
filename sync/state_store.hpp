// The engine's memory between runs: per user and folder a checkpoint, per
// copied message the legacy UID -> new UID map with the flags last agreed,
// the append journal (batches sent whose outcome is not known yet), and the
// history of runs. SQLite in WAL mode, one file; the schema is
// versioned (PRAGMA user_version) and migrated forward on open.
//
// Failures of the store itself (disk full, a corrupt file) are not expected
// outcomes of a migration: they throw state_error.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct sqlite3;

namespace suction::sync {

class state_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// begin_run: another live process is migrating this user.
class run_busy : public state_error {
 public:
  run_busy(const std::string& what, std::int64_t pid) : state_error(what), pid(pid) {}
  std::int64_t pid;
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
};

struct run_totals {
  std::uint64_t runs = 0, messages_copied = 0, bytes_copied = 0;
};

class state_store {
 public:
  static constexpr int kSchemaVersion = 4;

  // Opens (creating the file and its folder if needed), sets WAL, migrates.
  explicit state_store(const std::filesystem::path& path);
  ~state_store();
  state_store(const state_store&) = delete;
  state_store& operator=(const state_store&) = delete;

  int schema_version() const;

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

  // One run per user at a time, across processes sharing the file: throws
  // run_busy while another live process has a run of this user "running"
  // (one of a process gone is marked interrupted first). pid 0: this process.
  std::int64_t begin_run(std::string_view user, std::int64_t now, std::int64_t pid = 0,
                         std::string_view started_by = {});
  void finish_run(const run_record& r);
  std::vector<run_record> runs(std::string_view user, std::size_t limit) const;  // newest first
  std::vector<run_record> latest_runs() const;  // every user's newest run, by user
  run_totals totals() const;                    // over every run recorded
  // Runs left "running" by this process (it is stopping) or by a process that
  // is gone (a crash, a kill) become "interrupted"; those of another live
  // process stay. At start-up and at stop.
  std::size_t mark_interrupted(std::int64_t now);

 private:
  class statement;
  static std::vector<run_record> read_runs(statement& st);
  void exec(const char* sql);
  void migrate();
  void delete_journal(std::span<const std::int64_t> ids);  // inside a transaction
  sqlite3* db_ = nullptr;
  std::filesystem::path path_;
};

}  // namespace suction::sync
