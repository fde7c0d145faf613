// The decisions of one folder's copy, without I/O (dsync's mailbox importer;
// the way proxy/preauth works): server answers in, the work to do and the
// state store writes out. copy_folder (folder_copy.cpp) is the transport
// around it: it sends the commands, feeds the answers in and writes every
// checkpoint_write the brain hands out, in one place.
//
// The brain owns the folder's checkpoint (folder_state). Stages, in order:
//   open       both folders selected: UIDVALIDITY checks, the first checkpoint
//   rematch    legacy UIDVALIDITY changed: pairs by signature replace the state
//   flags      plan_flag_changes: the three-way merge grouped into STOREs
//   scan       legacy messages above the checkpoint; what is recorded already
//   reconcile  unknown new UIDs: crash leftovers, late batches (late_copies.hpp)
//   copy       units (batches, streamed messages); appended / refused / gone
//   finish     the legacy HIGHESTMODSEQ of a complete run
//
// The checkpoint (last_legacy_uid) moves over a legacy UID only when it and
// every pending UID below it are settled (copied, refused and reported, gone
// from legacy, found on the new server): with INBOX's recent mail first, later
// UIDs settle before earlier ones; those are in the message map meanwhile, and
// the next run skips them.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "imap/client/client.hpp"
#include "sync/folder_copy.hpp"
#include "sync/folder_plan.hpp"
#include "sync/late_copies.hpp"
#include "sync/state_store.hpp"

namespace suction::sync {

// What SELECT or EXAMINE said.
struct mailbox_view {
  std::uint32_t uidvalidity = 0;
  std::uint32_t exists = 0;
  std::optional<std::uint32_t> uidnext;
};
mailbox_view view_of(const imap::command_result& select_answer);

// A legacy message above the checkpoint, from the scan (no body).
struct pending_message {
  std::uint32_t uid = 0;
  std::uint64_t size = 0;
  std::vector<std::string> flags;  // without \Recent
  std::string internaldate;
  std::int64_t when = 0;           // INTERNALDATE as an instant
};

// One transaction of the state store: records and the checkpoint after them.
struct checkpoint_write {
  bool forget_first = false;  // the folder's old state and map go first (re-match)
  std::vector<message_record> records;
  std::vector<std::int64_t> resolved;  // journal entries settled by it
  folder_state checkpoint;
};

// The copy work in order: a batch (buffered, MULTIAPPEND) or one message
// larger than batch_bytes (streamed FETCH literal -> APPEND literal).
struct copy_unit {
  std::vector<std::uint32_t> uids;
  bool streamed = false;
};

// A message the new server accepted, as the copy stage knows it.
struct sent_message {
  std::uint32_t uid = 0;
  std::string flags;  // flags_text
  std::uint64_t bytes = 0;
};

// A refused APPEND: about the message (report it, account for it, go on) or
// about the account or the server ([OVERQUOTA], [UNAVAILABLE], [INUSE],
// [SERVERBUG]: stop the folder without advancing, a later run tries again).
enum class refusal : std::uint8_t { message, account };
refusal classify_refusal(const imap::command_result& r);

// The flag step's plan (the three-way merge per message, flags_merge.hpp):
// STOREs grouped by identical change, and the new "last agreed" flags.
struct flag_store {
  std::string add, remove;            // joined flags; either may be empty
  std::vector<std::uint32_t> new_uids;
  std::vector<std::pair<std::uint32_t, std::string>> agreed;  // legacy UID -> flags, once stored
};
struct flag_plan {
  std::vector<flag_store> stores;
  std::vector<std::pair<std::uint32_t, std::string>> agreed_only;  // no STORE needed
};
flag_plan plan_flag_changes(std::span<const message_record> records,
                            const std::map<std::uint32_t, std::vector<std::string>>& legacy_flags,
                            const std::map<std::uint32_t, std::vector<std::string>>& fresh_flags);

// Whether a run must look at a folder (issue 4 item 4), and why: with
// CONDSTORE, a folder whose STATUS shows the checkpoint's UIDVALIDITY, nothing
// above last_legacy_uid and the HIGHESTMODSEQ stored by the last complete run
// (no flag changed either) is skipped whole: no SELECT, EXAMINE or FETCH.
// Without CONDSTORE STATUS cannot show flag changes, so the folder is looked
// at (its flag step), copying nothing when UIDNEXT says so.
enum class folder_check : std::uint8_t {
  unchanged,            // skipped
  no_status,            // STATUS not answered
  no_checkpoint,        // never copied
  no_condstore,         // flag changes are invisible to STATUS
  uidvalidity_changed,  // legacy renumbered: a re-match
  new_mail,             // UIDNEXT above the checkpoint
  flags_changed,        // HIGHESTMODSEQ moved
  renamed,              // the plan maps it elsewhere now, or the new folder is unknown
  journal_open,         // an earlier run's batch may still land
};
std::string_view to_string(folder_check c);
folder_check check_folder(const std::optional<imap::status_data>& legacy_status,
                          const std::optional<folder_state>& checkpoint, bool condstore,
                          const folder_mapping& mapping, bool journaled);

// "a b c" from flags, sorted (the message map's form).
std::string flags_text(const std::vector<std::string>& flags);

class folder_brain {
 public:
  folder_brain(folder_mapping mapping, std::optional<folder_state> saved,
               std::vector<journal_entry> journal);

  const folder_state& checkpoint() const { return st_; }
  const std::vector<journal_entry>& journal() const { return journal_; }
  bool had_state() const { return had_state_; }

  // --- open
  struct opened {
    std::optional<copy_errc> error;  // stop here (error_text says why)
    std::string error_text;
    bool rematch = false;             // legacy UIDVALIDITY changed: rematch() next
    std::optional<checkpoint_write> write;
  };
  opened open(const mailbox_view& fresh, const mailbox_view& legacy);

  // --- rematch: the new copies recorded for the folder (old), and the
  // signatures of legacy's messages (UID order) and of those copies.
  checkpoint_write rematch(std::span<const message_record> old,
                           std::span<const std::pair<std::uint32_t, std::string>> legacy_sigs,
                           std::span<const std::pair<std::uint32_t, std::string>> fresh_sigs);

  // --- flags: whether copied messages may have flag changes to carry over.
  bool wants_flag_step() const;

  // --- scan: whether legacy has anything above the checkpoint (its UIDNEXT
  // says so) or an earlier run's batch may still land.
  bool wants_scan() const;
  bool legacy_news() const;
  void scanned(std::vector<pending_message> todo, std::set<std::uint32_t> recorded_above);

  // --- reconcile: the unknown new UIDs to look at, if any.
  std::optional<std::string> reconcile_set() const;
  std::vector<shape> pending_shapes() const;  // what is still to settle
  const std::set<std::uint32_t>& recorded() const { return recorded_; }
  checkpoint_write reconciled(const late_outcome& lo);
  // Journal entries never found and older than the grace period: dropped.
  std::vector<std::int64_t> expire_journal(std::int64_t now);
  // After reconcile: drops what is recorded already; a write when that moved
  // the checkpoint (everything above it was recorded).
  std::optional<checkpoint_write> skip_recorded();

  // --- copy
  const std::vector<pending_message>& todo() const { return todo_; }
  const pending_message* pending(std::uint32_t uid) const;
  std::vector<copy_unit> plan_units(std::size_t batch_messages, std::uint64_t batch_bytes,
                                    std::int64_t recent_since);
  // The new folder's next UID as this run knows it (for the journal).
  std::uint32_t uidnext_seen() const { return expected_next_.value_or(0); }
  // The new server accepted `done` (APPENDUID `appenduid`, may be empty);
  // `settled` are the legacy UIDs that settle with it (the batch's, gone ones
  // included). `gap`: new UIDs that appeared between this run's appends while
  // a journal entry is open: the transport runs the late-copies step on them.
  struct appended_result {
    checkpoint_write write;
    std::optional<std::pair<std::uint32_t, std::uint32_t>> gap;
    std::string warning;  // an APPENDUID that does not fit the batch
  };
  appended_result appended(std::span<const sent_message> done,
                           std::span<const std::uint32_t> settled, std::string_view appenduid,
                           std::int64_t journal_id);
  // Refused on its own or gone from legacy: accounted for, not retried.
  checkpoint_write accounted(std::span<const std::uint32_t> settled);
  // The gap step's outcome: copies found are settled (and not sent again).
  checkpoint_write found_late(const late_outcome& lo);
  bool found(std::uint32_t legacy_uid) const { return found_late_.contains(legacy_uid); }

  // --- finish: a complete run without errors stores the legacy HIGHESTMODSEQ
  // its STATUS gave, so the next run can skip the folder or ask CHANGEDSINCE.
  std::optional<checkpoint_write> finish(std::optional<std::uint64_t> legacy_modseq);

 private:
  checkpoint_write write(std::vector<message_record> records = {},
                         std::vector<std::int64_t> resolved = {}) const;
  void settle(std::span<const std::uint32_t> uids);
  void drop_resolved(std::span<const std::int64_t> ids);

  folder_mapping mapping_;
  folder_state st_;
  bool had_state_ = false;
  std::vector<journal_entry> journal_;
  mailbox_view fresh_, legacy_;
  std::optional<std::uint32_t> expected_next_;
  std::vector<pending_message> todo_;
  std::set<std::uint32_t> recorded_;    // legacy UIDs in the message map above the checkpoint
  std::set<std::uint32_t> unsettled_;
  std::set<std::uint32_t> found_late_;  // settled by the gap step
  std::uint32_t scan_top_ = 0;          // the highest legacy UID the scan saw
  bool copying_ = false;
  std::uint32_t held_new_uid_ = 0;      // a batch's top new UID, held back until its gap step                // skip_recorded ran: unsettled_ is the work left
};

}  // namespace suction::sync
