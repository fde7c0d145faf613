// `suction report`'s states from run histories (sync/report.hpp), without a store.
#include <doctest/doctest.h>

#include "sync/report.hpp"

using namespace suction::sync;

namespace {

run_record run(run_result r, std::int64_t start, std::uint64_t messages = 0, std::string error = {}) {
  run_record x;
  x.result = r;
  x.started_at = start;
  x.finished_at = start + 10;
  x.messages_copied = messages;
  x.bytes_copied = messages * 1000;
  x.error = std::move(error);
  return x;
}

}  // namespace

TEST_CASE("report: each user's state is its newest run's, done_at the newest completed run") {
  std::vector<std::pair<std::string, std::vector<run_record>>> h{
      {"alice", {run(run_result::done, 300, 5), run(run_result::interrupted, 200, 40)}},
      {"bob", {run(run_result::failed, 400, 0, "refused"), run(run_result::done, 100, 7)}},
      {"carol", {run(run_result::interrupted, 500, 12)}},
      {"dave", {}},
      {"erin", {run(run_result::running, 600)}},
  };
  auto rep = build_report(h);
  REQUIRE(rep.rows.size() == 5);
  CHECK(rep.rows[0].state == user_progress::done);
  CHECK(rep.rows[0].done_at == 310);
  CHECK(rep.rows[0].messages_copied == 45);
  CHECK(rep.rows[1].state == user_progress::failed);
  CHECK(rep.rows[1].error == "refused");
  CHECK(rep.rows[1].done_at == 110);  // completed once, failed since (a resync)
  CHECK(rep.rows[2].state == user_progress::interrupted);
  CHECK(rep.rows[3].state == user_progress::never_seen);
  CHECK(rep.rows[3].runs == 0);
  CHECK(rep.rows[4].state == user_progress::running);
  CHECK(rep.counts[static_cast<std::size_t>(user_progress::done)] == 1);
  CHECK(rep.messages_copied == 64);
  CHECK_FALSE(rep.all_done);
  CHECK(to_string(user_progress::never_seen) == "never_seen");
}

TEST_CASE("report: all done only when every listed user's last run completed") {
  std::vector<std::pair<std::string, std::vector<run_record>>> h{
      {"alice", {run(run_result::done, 1)}}, {"bob", {run(run_result::done, 2)}}};
  CHECK(build_report(h).all_done);
  CHECK_FALSE(build_report({}).all_done);  // nobody listed: nothing to switch off for
}

TEST_CASE("report: the daemon's queue, what finished a user, and the bytes left") {
  run_record bulk = run(run_result::done, 700, 3);
  bulk.started_by = "bulk";
  run_record cut = run(run_result::interrupted, 300, 2);
  cut.bytes_left = 5000;
  run_record refused = run(run_result::failed, 400, 0, "refused");  // never scanned: unknown
  std::vector<std::pair<std::string, std::vector<run_record>>> h{
      {"alice", {bulk, cut}}, {"bob", {cut}}, {"carol", {refused}}, {"dave", {}}, {"erin", {cut}}};
  // The daemon has dave queued (a bulk job not started) and erin's retry waiting.
  const std::map<std::string, user_progress, std::less<>> live{
      {"dave", user_progress::queued}, {"erin", user_progress::queued}};
  auto rep = build_report(h, live);
  CHECK(rep.rows[0].state == user_progress::done);
  CHECK(rep.rows[0].done_by == "bulk");
  CHECK(rep.rows[0].bytes_left == 0);  // done: nothing left, whatever an older run said
  CHECK(rep.rows[1].state == user_progress::interrupted);
  CHECK(rep.rows[1].bytes_left == 5000);
  CHECK(rep.rows[2].bytes_left == -1);  // its only run never scanned
  CHECK(rep.rows[3].state == user_progress::queued);
  CHECK(rep.rows[4].state == user_progress::queued);
  CHECK(rep.counts[static_cast<std::size_t>(user_progress::queued)] == 2);
  CHECK(rep.bytes_left == 10000);
  CHECK(rep.bytes_left_unknown == 2);  // carol (failed before scanning) and dave (never seen)
  CHECK(to_string(user_progress::queued) == "queued");
}

TEST_CASE("report: bytes left from the newest run that scanned, and a done user stays done") {
  run_record scanned = run(run_result::interrupted, 100, 1);
  scanned.bytes_left = 700;
  run_record refused = run(run_result::failed, 200, 0, "refused");  // never scanned
  std::vector<std::pair<std::string, std::vector<run_record>>> h{
      {"alice", {refused, scanned}}, {"bob", {run(run_result::done, 300, 2)}}};
  const std::map<std::string, user_progress, std::less<>> live{{"bob", user_progress::queued}};
  auto rep = build_report(h, live);
  CHECK(rep.rows[0].bytes_left == 700);
  CHECK(rep.rows[1].state == user_progress::done);  // an incremental pass queued: still done
  CHECK(rep.all_done == false);
}
