// The late-copies rules (sync/late_copies.hpp), without sockets: a dead run's
// batch landing late is paired or removed, the user's own mail never is.
#include <doctest/doctest.h>

#include <vector>

#include "sync/late_copies.hpp"

using namespace suction::sync;

namespace {

journal_entry entry(std::int64_t id, std::vector<std::uint32_t> uids, std::uint32_t uidnext,
                    std::int64_t at = 1000) {
  return journal_entry{id, std::move(uids), uidnext, at};
}

}  // namespace

TEST_CASE("late copies: an unrecorded copy pairs with its pending legacy message, resolving the entry") {
  // A dead run sent legacy 5 and 6 at new UIDNEXT 10; the batch landed at 10-11
  // before this run looked: recorded as the copies, nothing appended again.
  std::vector<unknown_copy> unknown{{10, "A"}, {11, "B"}};
  std::vector<legacy_candidate> cand{{5, "A", false}, {6, "B", false}};
  std::vector<journal_entry> j{entry(1, {5, 6}, 10)};
  auto plan = resolve_late_copies(unknown, cand, j);
  CHECK(plan.record == std::vector<std::pair<std::uint32_t, std::uint32_t>>{{5, 10}, {6, 11}});
  CHECK(plan.remove.empty());
  CHECK(plan.users_own.empty());
  CHECK(plan.resolved == std::vector<std::int64_t>{1});
}

TEST_CASE("late copies: a batch landing after its messages were copied again is removed, exactly") {
  // The next run copied legacy 5 and 6 again (recorded); the dead run's batch
  // then landed at 12-13, above the UIDNEXT 10 it was journaled with.
  std::vector<unknown_copy> unknown{{12, "A"}, {13, "B"}};
  std::vector<legacy_candidate> cand{{5, "A", true}, {6, "B", true}};
  std::vector<journal_entry> j{entry(7, {5, 6}, 10)};
  auto plan = resolve_late_copies(unknown, cand, j);
  CHECK(plan.record.empty());
  CHECK(plan.remove == std::vector<std::uint32_t>{12, 13});
  CHECK(plan.resolved == std::vector<std::int64_t>{7});
}

TEST_CASE("late copies: the user's own mail is never touched") {
  SUBCASE("a different message, journal or not") {
    std::vector<unknown_copy> unknown{{20, "USER"}};
    std::vector<legacy_candidate> cand{{5, "A", true}};
    std::vector<journal_entry> j{entry(1, {5}, 10)};
    auto plan = resolve_late_copies(unknown, cand, j);
    CHECK(plan.users_own == std::vector<std::uint32_t>{20});
    CHECK(plan.remove.empty());
    CHECK(plan.resolved.empty());  // still unaccounted for
  }
  SUBCASE("a copy of a migrated message, when no journal entry holds it") {
    std::vector<unknown_copy> unknown{{20, "A"}};
    std::vector<legacy_candidate> cand{{5, "A", true}};
    auto plan = resolve_late_copies(unknown, cand, {});
    CHECK(plan.users_own == std::vector<std::uint32_t>{20});
    CHECK(plan.remove.empty());
  }
  SUBCASE("below the UIDNEXT the entry was written with: it was there before the batch was sent") {
    std::vector<unknown_copy> unknown{{9, "A"}};
    std::vector<legacy_candidate> cand{{5, "A", true}};
    std::vector<journal_entry> j{entry(1, {5}, 10)};
    auto plan = resolve_late_copies(unknown, cand, j);
    CHECK(plan.users_own == std::vector<std::uint32_t>{9});
    CHECK(plan.remove.empty());
  }
  SUBCASE("more copies than the journal can account for: the extra ones are the user's") {
    // One journaled message can land once; a third copy of it is the user's.
    std::vector<unknown_copy> unknown{{12, "A"}, {15, "A"}};
    std::vector<legacy_candidate> cand{{5, "A", true}};
    std::vector<journal_entry> j{entry(1, {5}, 10)};
    auto plan = resolve_late_copies(unknown, cand, j);
    CHECK(plan.remove == std::vector<std::uint32_t>{12});
    CHECK(plan.users_own == std::vector<std::uint32_t>{15});
  }
}

TEST_CASE("late copies: two dead runs' batches of the same message both land") {
  std::vector<unknown_copy> unknown{{30, "A"}, {31, "A"}};
  std::vector<legacy_candidate> cand{{5, "A", true}};
  std::vector<journal_entry> j{entry(1, {5}, 10), entry(2, {5}, 20)};
  auto plan = resolve_late_copies(unknown, cand, j);
  CHECK(plan.remove == std::vector<std::uint32_t>{30, 31});
  CHECK(plan.resolved == std::vector<std::int64_t>{1, 2});
}

TEST_CASE("late copies: exact duplicates on legacy pair by count, the rest removed") {
  // Legacy 5 and 6 are byte-identical (one signature); 5 was copied again,
  // 6 is still pending; the dead run's batch of both landed.
  std::vector<unknown_copy> unknown{{40, "D"}, {41, "D"}};
  std::vector<legacy_candidate> cand{{5, "D", true}, {6, "D", false}};
  std::vector<journal_entry> j{entry(3, {5, 6}, 40)};
  auto plan = resolve_late_copies(unknown, cand, j);
  CHECK(plan.record == std::vector<std::pair<std::uint32_t, std::uint32_t>>{{6, 40}});
  CHECK(plan.remove == std::vector<std::uint32_t>{41});
  CHECK(plan.resolved == std::vector<std::int64_t>{3});
}

TEST_CASE("late copies: crash reconciliation without a journal still pairs pending messages") {
  // A state store from before the journal: unrecorded copies pair by signature.
  std::vector<unknown_copy> unknown{{3, "A"}, {4, "X"}};
  std::vector<legacy_candidate> cand{{8, "A", false}};
  auto plan = resolve_late_copies(unknown, cand, {});
  CHECK(plan.record == std::vector<std::pair<std::uint32_t, std::uint32_t>>{{8, 3}});
  CHECK(plan.users_own == std::vector<std::uint32_t>{4});
}

TEST_CASE("late copies: an entry never found expires after the grace period, not before") {
  std::vector<journal_entry> j{entry(1, {5}, 10, 1000), entry(2, {6}, 10, 1000 + 600),
                               entry(3, {7}, 10, 1000)};
  const std::int64_t resolved[] = {3};
  CHECK(expired_entries(j, resolved, 1000 + kJournalGraceSeconds).empty());
  CHECK(expired_entries(j, resolved, 1001 + kJournalGraceSeconds) == std::vector<std::int64_t>{1});
  CHECK(expired_entries(j, {}, 1601 + kJournalGraceSeconds) == std::vector<std::int64_t>{1, 2, 3});
}

TEST_CASE("late copies: two dead runs with the same batch in flight: finding one leaves the other open") {
  // Runs 1 and 2 both died with legacy 5 in flight (entries 1 and 2, same
  // UIDNEXT). Run 2's batch landed: it is paired, and only one entry resolved:
  // run 1's may still land.
  std::vector<unknown_copy> unknown{{10, "A"}};
  std::vector<legacy_candidate> cand{{5, "A", false}};
  std::vector<journal_entry> j{entry(1, {5}, 10), entry(2, {5}, 10)};
  auto plan = resolve_late_copies(unknown, cand, j);
  CHECK(plan.record == std::vector<std::pair<std::uint32_t, std::uint32_t>>{{5, 10}});
  CHECK(plan.resolved == std::vector<std::int64_t>{1});
  // Later run 1's batch lands too: a second copy, removed, its entry resolved.
  std::vector<unknown_copy> later{{11, "A"}};
  std::vector<legacy_candidate> now{{5, "A", true}};
  std::vector<journal_entry> left{entry(2, {5}, 10)};
  auto plan2 = resolve_late_copies(later, now, left);
  CHECK(plan2.remove == std::vector<std::uint32_t>{11});
  CHECK(plan2.resolved == std::vector<std::int64_t>{2});
}

TEST_CASE("late copies: both batches of the same pending message landed before anyone looked") {
  std::vector<unknown_copy> unknown{{10, "A"}, {11, "A"}};
  std::vector<legacy_candidate> cand{{5, "A", false}};
  std::vector<journal_entry> j{entry(1, {5}, 10), entry(2, {5}, 10)};
  auto plan = resolve_late_copies(unknown, cand, j);
  CHECK(plan.record == std::vector<std::pair<std::uint32_t, std::uint32_t>>{{5, 10}});
  CHECK(plan.remove == std::vector<std::uint32_t>{11});
  CHECK(plan.resolved == std::vector<std::int64_t>{1, 2});
  CHECK(plan.users_own.empty());
}
