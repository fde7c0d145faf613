// Copies one folder from a logged-in legacy client to a logged-in new client
// (issue 4, items 1, 2, 4, 6, 9; DESIGN.md "The sync engine, per user",
// "Batch the appends").
//
// - Legacy is read-only: EXAMINE and BODY.PEEK only, so not even \Seen moves.
// - The new folder is CREATEd when missing and SELECTed for its UIDVALIDITY.
// - Only legacy UIDs above the checkpoint's last_legacy_uid are copied.
// - A legacy UIDVALIDITY different from the stored one: the folder is re-matched
//   by content signature (flags_merge.hpp) against the new copies recorded for
//   it, its state replaced by the pairs under the new UIDVALIDITY, and only the
//   unmatched legacy messages are copied (report.rematched). A new folder whose
//   UIDVALIDITY changed is reported as an error and nothing is copied.
// - The decisions are folder_brain's (folder_brain.hpp: stages, checkpoint);
//   this is the transport that talks and writes what the brain decides.
// - Exactly once (late_copies.hpp): each batch is journaled before it is sent.
//   New-server UIDs the store does not know (above last_new_uid: appended, not
//   recorded before a kill; or a killed run's batch committed late, found in a
//   gap of an APPENDUID range) are paired by signature with pending legacy
//   messages and recorded instead of appended again (report.reconciled), or
//   removed when provably our second copy (report.removed); the rest is the
//   user's own and left alone.
// - Messages go in MULTIAPPEND batches (single APPENDs without MULTIAPPEND) of at
//   most batch_messages / batch_bytes, each with its exact bytes, INTERNALDATE and
//   flags (minus \Recent). Each accepted batch is recorded with its APPENDUID in
//   one state_store::record_batch call, advancing last_legacy_uid/last_new_uid.
// - A batch the new server refuses (NO or BAD) is redone one message at a time.
//   A message refused on its own is counted in report.failed, described in
//   report.errors ("legacy UID n: server text") and ACCOUNTED FOR: the checkpoint
//   moves past it, so it is not retried forever (a later re-match can find it by
//   its absence from the message map). Exception: a refusal that is about the
//   account, not the message ([OVERQUOTA], [UNAVAILABLE], [INUSE], [SERVERBUG])
//   stops the folder without advancing, so the next run tries again.
// - A message that vanished from legacy between the size scan and the fetch is
//   counted in report.skipped and accounted for as well.
//
// Memory: UIDs, RFC822.SIZE, flags and dates are fetched first. A batch's bodies
// are then fetched into memory (at most batch_bytes a batch, two batches at a
// time: see Pipelining). A message larger than
// batch_bytes is streamed instead (issue 4 item 8): its FETCH literal feeds its
// APPEND literal through a channel, so only a read buffer or two is held (a
// 50 MB message copies under 25 MiB RSS, see sync_integration_tests). If the
// legacy connection fails mid-stream, the APPEND cannot be completed: the new
// client's connection is failed (closed) too and the error returned.
//
// Pipelining: the next batch is fetched from legacy while the current one is
// appended to the new server (up to two batches in memory). Within a batch,
// MULTIAPPEND sends every body in one command (LITERAL+ where offered).
//
// Flags (issue 4 item 5): before new mail, a run carries over to each copied
// message the flag changes made on legacy since the last run, per flag, where
// the new copy still has the flags last agreed (merge_flags); the user's own
// changes on the new server stay. UID STORE +/-FLAGS.SILENT batched by
// identical change; report.flags_updated counts the messages changed. A copy
// the user deleted on the new server is neither touched nor copied again.
//
// Order: UID order, except with recent_since (INBOX): the messages of the last
// days first, newest INTERNALDATE first. The checkpoint (last_legacy_uid) only
// moves over UIDs that are settled together with every pending UID below
// them; copies above it are in the message map and skipped by the next run.
// Crash reconciliation therefore pairs the unrecorded new copies with any
// pending legacy messages of the same size and INTERNALDATE, not only the
// lowest ones. A message refused out of order is retried by a run that stops
// before the checkpoint reaches it.
//
// CONDSTORE: with a HIGHESTMODSEQ stored by the last complete run, the flag
// step asks legacy only for the flags changed since (CHANGEDSINCE).
//
// Without UIDPLUS (no APPENDUID) a batch is recorded with new_uid 0.
//
// Both clients must be driven by nothing else while this runs. If the state
// store throws (state_error), a prefetch may still be running on `legacy`:
// close that connection rather than reuse it.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "imap/client/client.hpp"
#include "sync/folder_plan.hpp"
#include "sync/state_store.hpp"

namespace suction::sync {

struct copy_options {
  std::size_t batch_messages = 100;
  std::uint64_t batch_bytes = 16u << 20;
  // Recent first (INBOX): messages with an INTERNALDATE at or after this
  // instant (unix seconds) are copied first, newest first; 0: UID order.
  std::int64_t recent_since = 0;
  // Progress for the status socket: once the folder is scanned, what it will
  // copy; after each recorded APPEND, what was copied; what will not be
  // copied after all (refused, gone from legacy). Any may be empty.
  std::function<void(std::uint64_t messages, std::uint64_t bytes)> on_scanned, on_copied,
      on_dropped;
  // Legacy's HIGHESTMODSEQ from its STATUS before this run (CONDSTORE): kept
  // in the checkpoint when the folder completes without errors, for the
  // no-change skip and CHANGEDSINCE of the next run.
  std::optional<std::uint64_t> legacy_modseq;
};

struct folder_copy_report {
  std::uint64_t copied = 0, bytes = 0, skipped = 0, failed = 0;
  std::uint64_t reconciled = 0;  // copies left unrecorded by a crash, found and recorded
  std::uint64_t removed = 0;     // our second copies (a dead run's batch landed late) removed
  std::uint64_t rematched = 0;   // pairs found by signature after a legacy UIDVALIDITY change
  std::uint64_t flags_updated = 0;  // copies whose flags got a legacy change (UID STORE)
  std::vector<std::string> errors;
};

// Why copy_folder gave up on a folder (besides the clients' own error codes).
enum class copy_errc {
  ok = 0,
  legacy_uidvalidity_changed = 1,  // legacy UIDVALIDITY differs from the checkpoint's
  new_uidvalidity_changed,         // the new folder was recreated since the checkpoint
  legacy_examine_failed,           // EXAMINE refused
  new_select_failed,               // CREATE/SELECT of the new folder refused
  fetch_failed,                    // UID FETCH refused
  append_refused_transient,        // [OVERQUOTA] and the like: retry on a later run
};
const std::error_category& copy_category() noexcept;
inline std::error_code make_error_code(copy_errc e) noexcept {
  return {static_cast<int>(e), copy_category()};
}

// Returns {} when the folder was processed (individual refused messages are in
// the report); otherwise the reason the folder stopped, also in report.errors.
boost::asio::awaitable<std::error_code> copy_folder(imap::client& legacy, imap::client& fresh,
                                                    state_store& state, std::string_view user,
                                                    const folder_mapping& mapping,
                                                    const copy_options& opts,
                                                    folder_copy_report& report);

}  // namespace suction::sync

template <>
struct std::is_error_code_enum<suction::sync::copy_errc> : std::true_type {};
