// The folder copy's decisions (sync/folder_brain.hpp), without sockets: each
// rule of the engine from answers in to checkpoint writes out. The whole
// against real Dovecot: sync_integration_tests, sync.crash, sync.exactly_once.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "sync/folder_brain.hpp"

using namespace suction;
using namespace suction::sync;

namespace {

folder_mapping inbox() {
  folder_mapping m;
  m.legacy_name = "INBOX";
  m.new_name = "INBOX";
  return m;
}

mailbox_view view(std::uint32_t uidvalidity, std::uint32_t exists, std::uint32_t uidnext) {
  return mailbox_view{uidvalidity, exists, uidnext};
}

pending_message msg(std::uint32_t uid, std::uint64_t size = 100, std::int64_t when = 1000) {
  return pending_message{uid, size, {"\\Seen"}, "01-Jan-2020 00:00:00 +0000", when};
}

std::vector<sent_message> sent(std::vector<std::uint32_t> uids) {
  std::vector<sent_message> out;
  for (auto u : uids) out.push_back({u, "\\Seen", 100});
  return out;
}

imap::command_result no(const char* code) {
  imap::command_result r;
  r.status = imap::status::no;
  if (code) r.code = imap::response_code{code, {}, {}};
  r.text = "refused";
  return r;
}

// A brain for a first copy of INBOX with legacy UIDs 1..n above nothing.
folder_brain first_copy(std::vector<pending_message> todo, std::uint32_t fresh_uidnext = 1,
                        std::vector<journal_entry> journal = {}) {
  folder_brain b(inbox(), std::nullopt, std::move(journal));
  auto o = b.open(view(77, 0, fresh_uidnext), view(5, static_cast<std::uint32_t>(todo.size()), 100));
  REQUIRE_FALSE(o.error);
  REQUIRE(o.write);
  CHECK(o.write->checkpoint.legacy_uidvalidity == 5);
  CHECK(o.write->checkpoint.new_uidvalidity == 77);
  CHECK(b.wants_scan());
  b.scanned(std::move(todo), {});
  CHECK_FALSE(b.reconcile_set());
  CHECK_FALSE(b.skip_recorded());
  return b;
}

}  // namespace

TEST_CASE("folder brain: batches by count and bytes, a message above batch_bytes alone and streamed") {
  auto b = first_copy({msg(1), msg(2), msg(3, 5000), msg(4), msg(5)});
  auto units = b.plan_units(2, 1000, 0);
  REQUIRE(units.size() == 3);
  CHECK(units[0].uids == std::vector<std::uint32_t>{1, 2});
  CHECK_FALSE(units[0].streamed);
  CHECK(units[1].streamed);
  CHECK(units[1].uids == std::vector<std::uint32_t>{3});
  CHECK(units[2].uids == std::vector<std::uint32_t>{4, 5});
}

TEST_CASE("folder brain: recent first, and the checkpoint only moves over settled UIDs from the bottom") {
  // 4 and 5 are recent (5 newest): copied first; the checkpoint stays at 0
  // until 1..3 are in, while 4 and 5 are recorded above it.
  auto b = first_copy({msg(1, 100, 10), msg(2, 100, 20), msg(3, 100, 30), msg(4, 100, 5000),
                       msg(5, 100, 6000)});
  auto units = b.plan_units(2, 1 << 20, 4000);
  REQUIRE(units.size() == 3);
  CHECK(units[0].uids == std::vector<std::uint32_t>{5, 4});
  CHECK(units[1].uids == std::vector<std::uint32_t>{1, 2});
  CHECK(units[2].uids == std::vector<std::uint32_t>{3});
  auto r1 = b.appended(sent({5, 4}), units[0].uids, "1:2", 11);
  CHECK(r1.write.checkpoint.last_legacy_uid == 0);
  CHECK(r1.write.checkpoint.last_new_uid == 2);
  CHECK(r1.write.resolved == std::vector<std::int64_t>{11});  // the batch's own journal entry
  REQUIRE(r1.write.records.size() == 2);
  CHECK(r1.write.records[0] == message_record{5, 1, "\\Seen"});
  auto r2 = b.appended(sent({1, 2}), units[1].uids, "3:4", 12);
  CHECK(r2.write.checkpoint.last_legacy_uid == 2);
  auto r3 = b.appended(sent({3}), units[2].uids, "5", 13);
  CHECK(r3.write.checkpoint.last_legacy_uid == 5);
  CHECK(r3.write.checkpoint.last_new_uid == 5);
  CHECK_FALSE(r3.gap);
}

TEST_CASE("folder brain: a refused message is accounted for, a refusal about the account stops the folder") {
  CHECK(classify_refusal(no(nullptr)) == refusal::message);
  CHECK(classify_refusal(no("TOOBIG")) == refusal::message);
  for (const char* code : {"OVERQUOTA", "UNAVAILABLE", "INUSE", "SERVERBUG"}) {
    CAPTURE(code);
    CHECK(classify_refusal(no(code)) == refusal::account);
  }
  // A batch refused as a whole is redone one by one: 1 goes in, 2 is refused
  // alone (accounted for: the checkpoint moves past it), 3 goes in.
  auto b = first_copy({msg(1), msg(2), msg(3)});
  auto units = b.plan_units(10, 1 << 20, 0);
  REQUIRE(units.size() == 1);
  CHECK(b.appended(sent({1}), std::vector<std::uint32_t>{1}, "1", 1).write.checkpoint.last_legacy_uid == 1);
  const std::uint32_t two[] = {2};
  CHECK(b.accounted(two).checkpoint.last_legacy_uid == 2);
  CHECK(b.appended(sent({3}), std::vector<std::uint32_t>{3}, "2", 2).write.checkpoint.last_legacy_uid == 3);
}

TEST_CASE("folder brain: an APPENDUID that does not fit the batch is recorded without new UIDs") {
  auto b = first_copy({msg(1), msg(2)});
  b.plan_units(10, 1 << 20, 0);
  auto r = b.appended(sent({1, 2}), std::vector<std::uint32_t>{1, 2}, "7", 1);
  CHECK_FALSE(r.warning.empty());
  REQUIRE(r.write.records.size() == 2);
  CHECK(r.write.records[0].new_uid == 0);
  CHECK(r.write.checkpoint.last_legacy_uid == 2);
}

TEST_CASE("folder brain: crash reconciliation pairs unrecorded copies and moves the checkpoint over them") {
  folder_state saved;
  saved.legacy_name = "INBOX";
  saved.legacy_uidvalidity = 5;
  saved.new_name = "INBOX";
  saved.new_uidvalidity = 77;
  saved.last_legacy_uid = 2;
  saved.last_new_uid = 10;
  folder_brain b(inbox(), saved, {});
  auto o = b.open(view(77, 12, 13), view(5, 6, 7));
  CHECK_FALSE(o.error);
  CHECK_FALSE(o.rematch);
  CHECK(b.wants_flag_step());
  b.scanned({msg(3), msg(4), msg(5), msg(6)}, {});
  REQUIRE(b.reconcile_set());
  CHECK(*b.reconcile_set() == "11:*");
  late_outcome lo;
  lo.records = {{3, 11, "\\Seen"}, {4, 12, "\\Seen"}};
  lo.highest_unknown = 12;
  auto w = b.reconciled(lo);
  CHECK(w.checkpoint.last_legacy_uid == 4);
  CHECK(w.checkpoint.last_new_uid == 12);
  CHECK(w.records.size() == 2);
  CHECK_FALSE(b.skip_recorded());
  auto units = b.plan_units(10, 1 << 20, 0);
  REQUIRE(units.size() == 1);
  CHECK(units[0].uids == std::vector<std::uint32_t>{5, 6});  // 3 and 4 are not sent again
}

TEST_CASE("folder brain: an APPENDUID gap while a dead run's entry is open asks for the gap step") {
  std::vector<journal_entry> j{{9, {1, 2}, 1, 1000}};
  auto b = first_copy({msg(1), msg(2), msg(3)}, 1, j);
  b.plan_units(2, 1 << 20, 0);
  CHECK(b.uidnext_seen() == 1);
  // The dead run's batch (1, 2) landed at 1-2 after this run's SELECT: this
  // run's copy of 1, 2 gets 3-4.
  auto r = b.appended(sent({1, 2}), std::vector<std::uint32_t>{1, 2}, "3:4", 20);
  REQUIRE(r.gap);
  CHECK(*r.gap == std::pair<std::uint32_t, std::uint32_t>{1, 2});
  // Held below the gap until the gap step is done: a kill now looks again.
  CHECK(r.write.checkpoint.last_new_uid == 0);
  late_outcome lo;  // the gap step removed the two second copies
  lo.resolved = {9};
  lo.highest_unknown = 2;
  auto w = b.found_late(lo);
  CHECK(w.checkpoint.last_new_uid == 4);
  CHECK(w.resolved == std::vector<std::int64_t>{9});
  CHECK(b.journal().empty());
  CHECK(b.uidnext_seen() == 5);
  // Without an open entry a gap is the user's new mail: no step.
  auto r2 = b.appended(sent({3}), std::vector<std::uint32_t>{3}, "9", 21);
  CHECK_FALSE(r2.gap);
  CHECK(r2.write.checkpoint.last_new_uid == 9);
}

TEST_CASE("folder brain: a pending message found by the gap step is not sent again") {
  std::vector<journal_entry> j{{9, {3}, 1, 1000}};
  auto b = first_copy({msg(1), msg(2), msg(3)}, 1, j);
  b.plan_units(1, 1 << 20, 0);
  auto r = b.appended(sent({1}), std::vector<std::uint32_t>{1}, "2", 20);
  REQUIRE(r.gap);  // UID 1 appeared: the dead run's copy of legacy 3
  late_outcome lo;
  lo.records = {{3, 1, "\\Seen"}};
  lo.resolved = {9};
  lo.highest_unknown = 1;
  auto w = b.found_late(lo);
  CHECK(b.found(3));
  CHECK(w.checkpoint.last_legacy_uid == 1);  // 2 is still pending
  CHECK(b.appended(sent({2}), std::vector<std::uint32_t>{2}, "3", 21).write.checkpoint.last_legacy_uid == 3);
}

TEST_CASE("folder brain: a legacy UIDVALIDITY change re-matches by signature, a recreated new folder stops") {
  folder_state saved;
  saved.legacy_name = "INBOX";
  saved.legacy_uidvalidity = 5;
  saved.new_name = "INBOX";
  saved.new_uidvalidity = 77;
  saved.last_legacy_uid = 3;
  saved.last_new_uid = 3;
  {
    folder_brain b(inbox(), saved, {});
    auto o = b.open(view(78, 3, 4), view(5, 3, 4));
    REQUIRE(o.error);
    CHECK(*o.error == copy_errc::new_uidvalidity_changed);
  }
  folder_brain b(inbox(), saved, {});
  auto o = b.open(view(77, 3, 4), view(6, 4, 5));
  CHECK(o.rematch);
  std::vector<message_record> old{{1, 1, "\\Seen"}, {2, 2, ""}, {3, 3, "\\Flagged"}};
  // Legacy renumbered: new UIDs 10, 11, 12, 13; 13 is new mail, 11 matches nothing.
  std::vector<std::pair<std::uint32_t, std::string>> legacy_sigs{
      {10, "A"}, {11, "Z"}, {12, "C"}, {13, "D"}};
  std::vector<std::pair<std::uint32_t, std::string>> fresh_sigs{{1, "A"}, {2, "B"}, {3, "C"}};
  auto w = b.rematch(old, legacy_sigs, fresh_sigs);
  CHECK(w.forget_first);
  CHECK(w.checkpoint.legacy_uidvalidity == 6);
  CHECK(w.checkpoint.last_legacy_uid == 10);  // matched from the bottom up only
  REQUIRE(w.records.size() == 2);
  CHECK(w.records[0] == message_record{10, 1, "\\Seen"});   // flags last agreed kept
  CHECK(w.records[1] == message_record{12, 3, "\\Flagged"});
}

TEST_CASE("folder brain: three-way flags, the user's change wins, identical changes grouped") {
  std::vector<message_record> recs{{1, 101, "\\Seen"}, {2, 102, "\\Seen"}, {3, 103, ""},
                                   {4, 104, "\\Seen"}};
  std::map<std::uint32_t, std::vector<std::string>> legacy{
      {1, {"\\Flagged", "\\Seen"}}, {2, {"\\Flagged", "\\Seen"}}, {3, {}}, {4, {}}};
  std::map<std::uint32_t, std::vector<std::string>> fresh{
      {101, {"\\Seen"}}, {102, {}}, {103, {"\\Answered"}}};  // 104 deleted by the user
  auto plan = plan_flag_changes(recs, legacy, fresh);
  // 1 and 2: legacy added \Flagged, one STORE; on 2 the user's removal of \Seen stays.
  REQUIRE(plan.stores.size() == 1);
  CHECK(plan.stores[0].add == "\\Flagged");
  CHECK(plan.stores[0].remove.empty());
  CHECK(plan.stores[0].new_uids == std::vector<std::uint32_t>{101, 102});
  CHECK(plan.stores[0].agreed.size() == 2);
  // 3: only the user changed it: nothing to store, nothing newly agreed; 4 is gone.
  CHECK(plan.agreed_only.empty());
}

TEST_CASE("folder brain: a complete run keeps legacy's HIGHESTMODSEQ once") {
  auto b = first_copy({msg(1)});
  auto w = b.finish(42);
  REQUIRE(w);
  CHECK(w->checkpoint.highest_modseq == 42);
  CHECK_FALSE(b.finish(42));
  CHECK_FALSE(b.finish(std::nullopt));
}

TEST_CASE("folder brain: the no-change check says why a folder is looked at") {
  folder_mapping m = inbox();
  folder_state cp;
  cp.legacy_name = "INBOX";
  cp.legacy_uidvalidity = 5;
  cp.last_legacy_uid = 10;
  cp.highest_modseq = 40;
  cp.new_name = "INBOX";
  cp.new_uidvalidity = 77;
  imap::status_data st;
  st.uidvalidity = 5;
  st.uidnext = 11;
  st.highestmodseq = 40;
  CHECK(check_folder(st, cp, true, m, false) == folder_check::unchanged);
  CHECK(check_folder(std::nullopt, cp, true, m, false) == folder_check::no_status);
  CHECK(check_folder(st, std::nullopt, true, m, false) == folder_check::no_checkpoint);
  CHECK(check_folder(st, cp, true, m, true) == folder_check::journal_open);
  CHECK(check_folder(st, cp, false, m, false) == folder_check::no_condstore);
  auto s2 = st;
  s2.uidnext = 12;
  CHECK(check_folder(s2, cp, true, m, false) == folder_check::new_mail);
  s2 = st;
  s2.highestmodseq = 41;
  CHECK(check_folder(s2, cp, true, m, false) == folder_check::flags_changed);
  s2 = st;
  s2.uidvalidity = 6;
  CHECK(check_folder(s2, cp, true, m, false) == folder_check::uidvalidity_changed);
  auto m2 = m;
  m2.new_name = "Inbox2";
  CHECK(check_folder(st, cp, true, m2, false) == folder_check::renamed);
  CHECK(to_string(folder_check::journal_open) == "journal_open");
}
