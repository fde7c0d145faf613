// The scheduler's policy (sync/job_table.hpp) without threads, sockets or a
// clock: one job per user, caps per legacy server, logins before bulk,
// retries, credentials' lifetime, pause/drain, stop.
#include <doctest/doctest.h>

#include <vector>

#include "sync/job_table.hpp"

using namespace suction::sync;
using namespace std::chrono_literals;

namespace {

const job_time t0{std::chrono::steady_clock::time_point(std::chrono::hours(1)), 1'700'000'000};

sync_identity who(const std::string& key) { return {key, {key, key}, {key, key}}; }

job_rules rules(std::uint32_t users = 4, std::uint32_t legacy = 16) {
  job_rules r;
  r.max_concurrent_users = users;
  r.legacy_max_connections = legacy;
  r.resync_interval = 600s;
  r.credential_ttl = 3600s;
  r.retry = backoff_policy{5s, 600s, 3};
  return r;
}

std::vector<std::string> start_all(job_table& t, job_time now = t0) {
  std::vector<std::string> out;
  while (auto s = t.take_next(now)) out.push_back(s->key);
  return out;
}

}  // namespace

TEST_CASE("job table: a login queues one job per user, and a done user waits resync_interval") {
  job_table t(rules());
  CHECK(t.on_login(who("alice"), "", "192.0.2.1", t0));
  CHECK_FALSE(t.on_login(who("alice"), "", "192.0.2.1", t0));  // already queued
  CHECK(start_all(t) == std::vector<std::string>{"alice"});
  CHECK_FALSE(t.on_login(who("alice"), "", "192.0.2.1", t0 + 1s));  // running
  auto end = t.finished("alice", true, failure_kind::none, "", t0 + 10s);
  CHECK(end.state == user_state::done);
  CHECK_FALSE(end.drop_credentials);
  CHECK_FALSE(t.on_login(who("alice"), "", "192.0.2.1", t0 + 100s));  // within 600 s
  CHECK(t.on_login(who("alice"), "", "192.0.2.1", t0 + 611s));
  CHECK(t.find("alice")->state == user_state::pending);
}

TEST_CASE("job table: max_concurrent_users and each legacy server's own cap") {
  job_rules r = rules(3, 1);
  r.more_legacy.emplace("old2", 2);
  job_table t(r);
  for (auto u : {"a", "b", "c"}) t.on_login(who(u), "", "", t0);
  for (auto u : {"x", "y", "z"}) t.on_login(who(u), "old2", "", t0);
  // [legacy] holds one connection: a starts, b and c wait; old2 takes two.
  CHECK(start_all(t) == std::vector<std::string>{"a", "x", "y"});
  CHECK(t.running() == 3);
  CHECK(t.legacy_in_use() == 3);
  t.finished("x", true, failure_kind::none, "", t0 + 1s);
  CHECK(start_all(t) == std::vector<std::string>{"z"});  // b and c still wait for [legacy]
  t.finished("a", true, failure_kind::none, "", t0 + 2s);
  CHECK(start_all(t) == std::vector<std::string>{"b"});
}

TEST_CASE("job table: with other nodes, each legacy server's cap is the cluster's") {
  job_rules r = rules(8, 3);
  r.more_legacy.emplace("old2", 2);
  job_table t(r);
  for (auto u : {"a", "b", "c"}) t.on_login(who(u), "", "", t0);
  t.on_login(who("x"), "old2", "", t0);
  // Other nodes hold 2 of [legacy]'s 3 and both of old2's.
  t.set_held_elsewhere({{"", 2}, {"old2", 2}});
  CHECK(start_all(t) == std::vector<std::string>{"a"});
  CHECK(t.grant("a", 4) == 0);
  CHECK(t.legacy_held() == std::map<std::string, std::uint32_t, std::less<>>{{"", 1}});
  // They let go of theirs: the rest may start, within the cap.
  t.set_held_elsewhere({});
  CHECK(start_all(t) == std::vector<std::string>{"b", "c", "x"});
  CHECK(t.legacy_held().at("") == 3);
  CHECK(t.legacy_held().at("old2") == 1);
}

TEST_CASE("job table: room for the cluster's queued users: free slots, none while a login waits") {
  job_table t(rules(3, 16));
  CHECK(t.room_for_bulk() == 3);
  t.enqueue_bulk(who("b1"), "");
  CHECK(t.room_for_bulk() == 2);  // promised to the queued one
  CHECK(start_all(t).size() == 1);
  CHECK(t.room_for_bulk() == 2);
  t.on_login(who("alice"), "", "", t0);
  CHECK(t.room_for_bulk() == 0);  // a login waits: it goes first
  CHECK(start_all(t) == std::vector<std::string>{"alice"});
  CHECK(t.room_for_bulk() == 1);
  t.pause();
  CHECK(t.room_for_bulk() == 0);
}

TEST_CASE("job table: more pairs for a big mailbox leave one for each job that could start") {
  job_table t(rules(4, 6));
  t.on_login(who("big"), "", "", t0);
  CHECK(start_all(t).size() == 1);
  t.on_login(who("small1"), "", "", t0);
  t.on_login(who("small2"), "", "", t0);
  t.pause();  // queued but not started: the grant keeps none for them while paused
  CHECK(t.grant("big", 10) == 5);
  t.release("big", 5);
  t.resume();
  CHECK(t.grant("big", 10) == 3);  // 6 - 1 held - 2 kept for the queued
  t.release("big", 100);           // never more than granted
  CHECK(t.legacy_in_use() == 1);
}

TEST_CASE("job table: logins go before bulk jobs, and a login moves a queued bulk user ahead") {
  job_table t(rules(1));
  CHECK(t.enqueue_bulk(who("b1"), "") == "");
  CHECK(t.enqueue_bulk(who("b2"), "") == "");
  CHECK(t.enqueue_bulk(who("b1"), "") == "already queued or running");
  CHECK(t.enqueue_bulk(who("b3"), "nowhere") == "no legacy server \"nowhere\"");
  t.on_login(who("login1"), "", "", t0);
  CHECK(t.on_login(who("b2"), "", "", t0));  // moved to the logins' queue
  auto first = t.take_next(t0);
  REQUIRE(first);
  CHECK(first->key == "login1");
  CHECK_FALSE(first->bulk);
  t.finished("login1", true, failure_kind::none, "", t0);
  CHECK(t.take_next(t0)->key == "b2");
  CHECK_FALSE(t.find("b2")->bulk);
  t.finished("b2", true, failure_kind::none, "", t0);
  auto bulk = t.take_next(t0);
  REQUIRE(bulk);
  CHECK(bulk->key == "b1");
  CHECK(bulk->bulk);
}

TEST_CASE("job table: retried failures back off, then fail, and refused credentials are dropped") {
  job_table t(rules());
  t.on_login(who("alice"), "", "", t0);
  start_all(t);
  auto e1 = t.finished("alice", false, failure_kind::connect, "connect refused", t0);
  CHECK(e1.state == user_state::pending);
  REQUIRE(e1.retry_in);
  CHECK(*e1.retry_in == 5s);
  CHECK(e1.note == " retry_in=5.0s");
  CHECK_FALSE(e1.drop_credentials);
  CHECK(t.find("alice")->retry_at == 1'700'000'005);
  CHECK_FALSE(t.on_login(who("alice"), "", "", t0 + 1s));  // a retry is set: one job
  CHECK_FALSE(t.retry_due("alice", e1.generation + 1));    // not the latest
  CHECK(t.retry_due("alice", e1.generation));
  start_all(t);
  auto e2 = t.finished("alice", false, failure_kind::connect, "again", t0 + 10s);
  REQUIRE(e2.retry_in);
  CHECK(*e2.retry_in == 10s);
  t.retry_due("alice", e2.generation);
  start_all(t);
  auto e3 = t.finished("alice", false, failure_kind::connect, "again", t0 + 30s);
  CHECK(e3.state == user_state::failed);  // 3 attempts: no more
  CHECK(e3.note == " retry=no (3 attempts)");

  t.on_login(who("bob"), "", "", t0);
  start_all(t);
  auto refused = t.finished("bob", false, failure_kind::credentials, "refused", t0);
  CHECK(refused.state == user_state::failed);
  CHECK(refused.drop_credentials);
  CHECK_FALSE(t.find("bob")->has_credentials);
  CHECK(t.resync("bob").find("no credentials held for bob") == 0);
}

TEST_CASE("job table: credentials expire after credential_ttl, not while queued") {
  job_table t(rules(1));
  t.on_login(who("alice"), "", "", t0);
  t.on_login(who("bob"), "", "", t0);
  CHECK(start_all(t) == std::vector<std::string>{"alice"});
  CHECK(t.expired_credentials(t0 + 3601s).empty());  // alice running, bob queued
  t.finished("alice", true, failure_kind::none, "", t0 + 3602s);
  CHECK(t.expired_credentials(t0 + 3603s) == std::vector<std::string>{"alice"});
  // bob's job, queued past his credentials' life, still ran with them: taken now.
  CHECK(start_all(t, t0 + 3604s) == std::vector<std::string>{"bob"});
}

TEST_CASE("job table: the next credential expiry is the earliest held password's, none without any") {
  job_table t(rules(1));
  CHECK_FALSE(t.next_credential_expiry());
  t.on_login(who("alice"), "", "", t0);
  t.on_login(who("bob"), "", "", t0 + 5s);
  REQUIRE(t.next_credential_expiry());
  CHECK(*t.next_credential_expiry() == t0.mono + 3600s);
  start_all(t);
  t.finished("alice", true, failure_kind::none, "", t0 + 10s);
  CHECK(t.expired_credentials(t0 + 3601s) == std::vector<std::string>{"alice"});
  REQUIRE(t.next_credential_expiry());
  CHECK(*t.next_credential_expiry() == t0.mono + 3605s);  // bob's, queued or running: still held
  job_rules r = rules(1);
  r.credential_ttl = 0s;  // nothing is kept past its job: nothing to wake up for
  job_table none(r);
  none.on_login(who("carol"), "", "", t0);
  CHECK_FALSE(none.next_credential_expiry());
}

TEST_CASE("job table: a retry whose credentials expired meanwhile fails instead of starting") {
  job_rules r = rules(1);
  r.credential_ttl = 10s;
  job_table t(r);
  t.on_login(who("alice"), "", "", t0);
  start_all(t);
  auto end = t.finished("alice", false, failure_kind::connect, "x", t0 + 1s);
  REQUIRE(end.retry_in);
  CHECK(t.expired_credentials(t0 + 20s) == std::vector<std::string>{"alice"});
  CHECK(t.retry_due("alice", end.generation));
  CHECK_FALSE(t.take_next(t0 + 21s));
  CHECK(t.failed_without_credentials == std::vector<std::string>{"alice"});
  CHECK(t.find("alice")->state == user_state::failed);
  CHECK(t.find("alice")->last_error.find("no credentials held any more") == 0);
}

TEST_CASE("job table: stop interrupts running jobs, forgets queues and retries") {
  job_table t(rules(1));
  t.on_login(who("alice"), "", "", t0);
  t.on_login(who("bob"), "", "", t0);
  start_all(t);
  t.stop();
  CHECK(t.find("alice")->state == user_state::interrupted);
  CHECK_FALSE(t.find("alice")->has_credentials);
  CHECK_FALSE(t.find("bob")->queued);
  CHECK(t.queued() == 0);
  CHECK_FALSE(t.take_next(t0));
  CHECK_FALSE(t.on_login(who("carol"), "", "", t0));
  CHECK(t.enqueue_bulk(who("dave"), "") == "the daemon is stopping");
  // alice's run, cut off by the stop, ends: interrupted, not failed, no retry.
  auto end = t.finished("alice", false, failure_kind::stopped, "stopped", t0 + 1s);
  CHECK(end.state == user_state::interrupted);
  CHECK_FALSE(end.retry_in);
  CHECK(t.running() == 0);
}

TEST_CASE("job table: pause and drain start nothing, resume starts again") {
  job_table t(rules());
  t.pause();
  t.on_login(who("alice"), "", "", t0);
  CHECK(start_all(t).empty());
  t.resume();
  t.drain();
  CHECK(start_all(t).empty());
  t.resume();
  CHECK(start_all(t) == std::vector<std::string>{"alice"});
  CHECK(t.resync("alice") == "a migration of alice is already queued or running");
  CHECK(t.resync("nobody") == "unknown user nobody");
}

TEST_CASE("job table: restored runs give each user its last state") {
  job_table t(rules());
  run_record done;
  done.user = "alice";
  done.result = run_result::done;
  done.started_at = 100;
  done.finished_at = 110;
  t.restore(done);
  run_record cut;
  cut.user = "bob";
  cut.result = run_result::running;  // a crash
  t.restore(cut);
  CHECK(t.find("alice")->state == user_state::done);
  CHECK(t.find("alice")->completed_at == 110);
  CHECK(t.find("bob")->state == user_state::interrupted);
  CHECK(t.resync("alice").find("no credentials held") == 0);
}

TEST_CASE("job table: with credential_ttl 0 a login that starts no job keeps no password") {
  job_rules r = rules();
  r.credential_ttl = 0s;
  job_table t(r);
  t.on_login(who("alice"), "", "", t0);
  CHECK(t.find("alice")->has_credentials);  // queued: its job will use it
  start_all(t);
  auto end = t.finished("alice", true, failure_kind::none, "", t0 + 1s);
  CHECK(end.drop_credentials);
  CHECK_FALSE(t.on_login(who("alice"), "", "", t0 + 2s));  // within resync_interval: no job
  CHECK_FALSE(t.find("alice")->has_credentials);
}

TEST_CASE("job table: a login's job that cannot start here is offered to the cluster, and settled") {
  job_table t(rules(1));
  t.on_login(who("a"), "", "192.0.2.1", t0);
  t.on_login(who("b"), "", "192.0.2.2", t0);
  t.enqueue_bulk(who("c"), "");
  CHECK(start_all(t) == std::vector<std::string>{"a"});
  // b waits (one job slot); the bulk job is not a login's.
  CHECK(t.waiting_logins() == std::vector<std::string>{"b"});
  CHECK(t.offer("b"));
  CHECK_FALSE(t.offer("b"));
  CHECK_FALSE(t.offer("c"));  // bulk: already for any node
  CHECK(t.waiting_logins().empty());
  CHECK(t.offered() == std::vector<std::string>{"b"});
  CHECK(t.find("b")->state == user_state::pending);
  CHECK(t.find("b")->has_credentials);
  // One job per user: another login while it waits in the cluster queues nothing.
  CHECK_FALSE(t.on_login(who("b"), "", "192.0.2.2", t0 + 1s));
  // ... nor does an operator's resync (the cluster's row would run it again).
  CHECK(t.resync("b").find("cluster's queue") != std::string::npos);
  // Another node ran it: its last run decides.
  run_record last;
  last.user = "b";
  last.result = run_result::done;
  last.started_at = t0.unix + 5;
  last.finished_at = t0.unix + 9;
  t.settle_offered("b", last);
  CHECK(t.offered().empty());
  CHECK(t.find("b")->state == user_state::done);
  CHECK(t.find("b")->completed_at == t0.unix + 9);
  CHECK_FALSE(t.on_login(who("b"), "", "192.0.2.2", t0 + 20s));  // done, within resync_interval
}

TEST_CASE("job table: with credential_ttl 0 an offered login's password goes once another node ran it") {
  job_rules r = rules(0);
  r.credential_ttl = 0s;
  job_table t(r);
  t.on_login(who("b"), "", "192.0.2.2", t0);
  CHECK(t.offer("b"));
  CHECK(t.find("b")->has_credentials);  // this node may still take it back
  CHECK(t.settle_offered("b", std::nullopt));
  CHECK_FALSE(t.find("b")->has_credentials);
  CHECK_FALSE(t.settle_offered("b", std::nullopt));  // settled once
}

TEST_CASE("job table: an offered login taken back by its own node runs with the password, else as bulk") {
  job_table t(rules(1));
  t.on_login(who("a"), "", "192.0.2.1", t0);
  t.on_login(who("b"), "", "192.0.2.2", t0);
  t.on_login(who("c"), "", "192.0.2.3", t0);
  CHECK(start_all(t) == std::vector<std::string>{"a"});
  CHECK(t.offer("b"));
  CHECK(t.offer("c"));
  t.finished("a", true, failure_kind::none, "", t0 + 5s);
  // b comes back with its password: a login's job again, ahead of bulk.
  CHECK(t.taken_back("b"));
  t.enqueue_bulk(who("d"), "");
  auto s = t.take_next(t0 + 6s);
  REQUIRE(s);
  CHECK(s->key == "b");
  CHECK_FALSE(s->bulk);
  CHECK(s->client == "192.0.2.2");
  // c's password expired meanwhile: taken back, it is the caller's bulk job.
  t.finished("b", true, failure_kind::none, "", t0 + 7s);
  CHECK(t.expired_credentials(t0 + 4000s) == std::vector<std::string>{"a", "b", "c"});
  CHECK_FALSE(t.taken_back("c"));
  CHECK_FALSE(t.find("c")->offered);
  CHECK(t.enqueue_bulk(who("c"), "", "192.0.2.3").empty());
  CHECK_FALSE(t.taken_back("zed"));
}

TEST_CASE("job table: another node's login run here keeps its client address") {
  job_table t(rules());
  CHECK(t.enqueue_bulk(who("e"), "", "198.51.100.7").empty());
  auto s = t.take_next(t0);
  REQUIRE(s);
  CHECK(s->bulk);
  CHECK(s->client == "198.51.100.7");
}

TEST_CASE("job table: stop forgets the offered logins (their rows stay for other nodes)") {
  job_table u(rules(0));
  u.on_login(who("g"), "", "192.0.2.9", t0);
  CHECK(u.offer("g"));
  u.stop();
  CHECK(u.offered().empty());
}
