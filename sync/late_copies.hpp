// Late copies: what a new folder holds that the state store does not know, and
// which of it is ours. Pure: signatures in, a decision out (the folder copy
// fetches and acts; DESIGN.md "Exactly once").
//
// How copies appear that nobody recorded:
// - a run killed (or its connection lost) between an APPEND and its
//   record_batch: the copy is above the folder's last_new_uid;
// - a run killed with a MULTIAPPEND in flight: the new server goes on reading
//   the dead connection's bytes and may commit the batch LATE, after the next
//   run has SELECTed the folder, even after that run appended the same
//   messages again. Such a batch lands in a gap of the next run's APPENDUID
//   ranges, or above everything that run recorded.
// Every batch is journaled (state_store::journal_batch) with the new folder's
// UIDNEXT as the run saw it before it is sent, so a run that finds an entry
// left by an earlier one knows which legacy messages may still arrive and
// from which UID on.
//
// The rules, per content signature (flags_merge.hpp):
// 1. An unknown copy pairs with a pending legacy message of the same signature
//    (not copied yet): it is the copy, recorded instead of appended again.
//    Lowest with lowest, as many as both sides have.
// 2. An unknown copy left over is ours twice only when a journal entry holds a
//    legacy message of that signature that is recorded already (copied again
//    after the entry was left) and the copy's UID is at or above the entry's
//    uidnext_seen: it is removed (UID STORE \Deleted + UID EXPUNGE of exactly
//    those UIDs). Each journaled message accounts for one copy at most.
// 3. Anything else is the user's own (mail delivered to the new server, a
//    message the user appended or copied) and is never touched.
// An entry whose batch was found (a copy paired under rule 1 at or above its
// uidnext_seen, or removed under rule 2) is resolved: MULTIAPPEND is atomic,
// so the batch is there whole. An entry never found is dropped once it is
// older than kJournalGrace and a run looked (the server would have had to sit
// on a dead connection's bytes that long).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "sync/state_store.hpp"

namespace suction::sync {

inline constexpr std::int64_t kJournalGraceSeconds = 15 * 60;

struct unknown_copy {
  std::uint32_t new_uid = 0;
  std::string signature;
};

struct legacy_candidate {
  std::uint32_t legacy_uid = 0;
  std::string signature;
  bool recorded = false;  // in the message map already (copied)
};

struct late_copies_plan {
  std::vector<std::pair<std::uint32_t, std::uint32_t>> record;  // (legacy, new), by legacy UID
  std::vector<std::uint32_t> remove;     // our second copies, ascending
  std::vector<std::uint32_t> users_own;  // left alone, ascending
  std::vector<std::int64_t> resolved;    // journal entries whose batch was found
  bool operator==(const late_copies_plan&) const = default;
};

// A pending legacy message's shape: picks reconciliation candidates among
// the pending messages without a fetch (size and INTERNALDATE).
struct shape {
  std::uint32_t uid = 0;
  std::uint64_t size = 0;
  std::int64_t when = 0;
};

// What the transport's late-copies step found, for the brain to record.
struct late_outcome {
  std::vector<message_record> records;  // copies found: legacy -> new
  std::vector<std::int64_t> resolved;   // journal entries whose batch was found
  std::uint32_t highest_unknown = 0;    // the highest unknown new UID looked at
};

late_copies_plan resolve_late_copies(std::span<const unknown_copy> unknown,
                                     std::span<const legacy_candidate> candidates,
                                     std::span<const journal_entry> journal);

// Entries of `journal` not in `resolved` and older than kJournalGraceSeconds.
std::vector<std::int64_t> expired_entries(std::span<const journal_entry> journal,
                                          std::span<const std::int64_t> resolved,
                                          std::int64_t now);

}  // namespace suction::sync
