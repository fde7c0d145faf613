#include <doctest/doctest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "sync/sql.hpp"
#include "sync/state_store.hpp"

using namespace suction::sync;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    char tmpl[] = "/tmp/suction-state-XXXXXX";
    REQUIRE(mkdtemp(tmpl));
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// The back end under test. By default SQLite, a file in a temp dir; with
// SUCTION_TEST_PG set (tests/testbed/pgbed.py run, ctest
// sync.state_store.postgresql) the PostgreSQL it names, emptied for each case.
struct backend {
  temp_dir dir;
  std::string location;
  bool pg = false;
  backend() {
    if (const char* conninfo = std::getenv("SUCTION_TEST_PG"); conninfo && *conninfo) {
      pg = true;
      location = conninfo;
      raw("DROP SCHEMA public CASCADE; CREATE SCHEMA public");
    } else {
      location = (dir.path / "state.db").string();
    }
  }
  // Statements run beside the store, as another client of the database would.
  void raw(const std::string& sql) const { suction::sync::sql::open(location)->exec(sql); }
};

// Cases about several nodes sharing one database: PostgreSQL only.
bool skipped_without_postgresql(const backend& b) {
  if (b.pg) return false;
  MESSAGE("skipped: SQLite is one machine's file, its runs are told apart by process "
          "(ctest sync.state_store.postgresql runs this case)");
  return true;
}

folder_state sent_items() {
  folder_state f;
  f.legacy_name = "INBOX.Sent Items";
  f.legacy_uidvalidity = 1700000000;
  f.last_legacy_uid = 0;
  f.highest_modseq = 12;
  f.new_name = "Sent";
  f.new_uidvalidity = 1800000000;
  return f;
}

std::string journal_mode(const fs::path& db) {
  sqlite3* h = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &h) == SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &st, nullptr);
  std::string mode;
  if (sqlite3_step(st) == SQLITE_ROW) mode = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  sqlite3_close(h);
  return mode;
}

}  // namespace

// First in this file: the cases after it load libpq (a PostgreSQL location).
TEST_CASE("state store: a SQLite store never loads libpq") {
  backend b;
  if (b.pg) {
    MESSAGE("not with SUCTION_TEST_PG: this process connects to PostgreSQL");
    return;
  }
  state_store s(b.location);
  CHECK_FALSE(s.shared());
  std::ifstream maps("/proc/self/maps");
  std::string line;
  bool mapped = false;
  while (std::getline(maps, line)) mapped = mapped || line.find("libpq.so") != std::string::npos;
  CHECK_FALSE(mapped);
}

TEST_CASE("state store: created (a file with its folder, in WAL mode) at the current schema version") {
  backend b;
  std::string where = b.location;
  if (!b.pg) where = (b.dir.path / "sub" / "state.db").string();
  {
    state_store s(where);
    CHECK(s.schema_version() == state_store::kSchemaVersion);
    CHECK(s.shared() == b.pg);
  }
  if (!b.pg) {
    CHECK(fs::exists(where));
    CHECK(journal_mode(where) == "wal");
  }
  state_store again(where);  // reopening migrates nothing and keeps the version
  CHECK(again.schema_version() == state_store::kSchemaVersion);
}

TEST_CASE("state store: two opening a new database at once migrate it once") {
  backend b;
  std::vector<std::thread> openers;
  std::atomic<int> failed{0};
  for (int i = 0; i < 4; ++i)
    openers.emplace_back([&] {
      try {
        state_store s(b.location);
        if (s.schema_version() != state_store::kSchemaVersion) ++failed;
      } catch (const std::exception& e) {
        MESSAGE(std::string(e.what()));
        ++failed;
      }
    });
  for (auto& t : openers) t.join();
  CHECK(failed == 0);
}

TEST_CASE("state store: a database from a newer suction is refused, naming it") {
  backend b;
  { state_store s(b.location); }
  b.raw(b.pg ? "UPDATE suction_schema SET version = 99" : "PRAGMA user_version = 99");
  try {
    state_store s(b.location);
    FAIL("opened a newer schema");
  } catch (const state_error& e) {
    const std::string what = e.what();
    CHECK(what.find(b.pg ? std::string("postgresql host=") : b.location) != std::string::npos);
    CHECK(what.find("newer") != std::string::npos);
  }
}

TEST_CASE("state store: locations: a path is SQLite, a URI or a libpq keyword string PostgreSQL") {
  using suction::sync::sql::is_postgresql;
  CHECK(is_postgresql("postgresql://suction@db.example/suction"));
  CHECK(is_postgresql("postgres://db.example/suction"));
  CHECK(is_postgresql("host=/run/postgresql dbname=suction"));
  CHECK(is_postgresql("dbname = suction"));
  CHECK_FALSE(is_postgresql("/var/lib/suction/state.db"));
  CHECK_FALSE(is_postgresql("state.db"));
  CHECK_FALSE(is_postgresql("weird=name.db"));  // not a libpq keyword: a file
  CHECK_FALSE(is_postgresql(""));
}

TEST_CASE("state store: a PostgreSQL that cannot be reached is a state_error naming it, never its password") {
  // Port 1 on loopback: refused at once (connect_timeout bounds it anyway).
  try {
    state_store s("host=127.0.0.1 port=1 dbname=suction user=suction password=hunter2 connect_timeout=3");
    FAIL("connected to nothing");
  } catch (const state_error& e) {
    const std::string what = e.what();
    CHECK(what.find("cannot connect to postgresql host=127.0.0.1 port=1 dbname=suction user=suction") !=
          std::string::npos);
    CHECK(what.find("hunter2") == std::string::npos);
  }
  try {
    state_store s("postgresql://suction:hunter2@127.0.0.1:1/suction?connect_timeout=3");
    FAIL("connected to nothing");
  } catch (const state_error& e) {
    CHECK(std::string(e.what()).find("hunter2") == std::string::npos);
  }
  CHECK_THROWS_WITH_AS(state_store("host=127.0.0.1 nonsense=1"),
                       doctest::Contains("not a PostgreSQL connection string"), state_error);
  // libpq's parse errors quote the string: a password must not come back.
  try {
    state_store s("postgresql://suction:50%zzsecret@127.0.0.1:1/suction");
    FAIL("parsed a bad %-escape");
  } catch (const state_error& e) {
    CHECK(std::string(e.what()).find("secret") == std::string::npos);
  }
}

TEST_CASE("state store: a path that cannot be opened is a state_error naming it") {
  temp_dir t;
  fs::path blocker = t.path / "file";
  { std::ofstream(blocker) << "x"; }
  CHECK_THROWS_AS(state_store(blocker / "state.db"), state_error);
}

TEST_CASE("state store: folder checkpoints per user") {
  backend b;
  state_store s(b.location);
  CHECK_FALSE(s.folder("alice", "INBOX.Sent Items"));
  folder_state f = sent_items();
  s.save_folder("alice", f);
  CHECK(s.folder("alice", "INBOX.Sent Items") == f);
  CHECK_FALSE(s.folder("bob", "INBOX.Sent Items"));
  f.last_legacy_uid = 40;
  f.highest_modseq = 99;
  s.save_folder("alice", f);  // update, not a second row
  CHECK(s.folder("alice", "INBOX.Sent Items") == f);
  folder_state inbox;
  inbox.legacy_name = "INBOX";
  inbox.new_name = "INBOX";
  s.save_folder("alice", inbox);
  auto all = s.folders("alice");
  REQUIRE(all.size() == 2);
  CHECK(all[0].legacy_name == "INBOX");
  CHECK(s.folders("bob").empty());
}

TEST_CASE("state store: a batch's UID map and its checkpoint are recorded together") {
  backend b;
  state_store s(b.location);
  folder_state f = sent_items();
  std::vector<message_record> batch = {{1, 101, "\\Seen"}, {2, 102, ""}, {5, 103, "$Forwarded \\Seen"}};
  f.last_legacy_uid = 5;
  f.last_new_uid = 103;
  s.record_batch("alice", f, batch);
  CHECK(s.folder("alice", f.legacy_name) == f);
  CHECK(s.messages("alice", f.legacy_name) == batch);
  CHECK(s.message("alice", f.legacy_name, 5) == batch[2]);
  CHECK_FALSE(s.message("alice", f.legacy_name, 3));
  const std::pair<std::uint32_t, std::string> flagged[] = {{2, "\\Flagged"}};
  s.update_flags("alice", f.legacy_name, flagged);
  CHECK(s.message("alice", f.legacy_name, 2)->flags == "\\Flagged");
  s.forget_folder("alice", f.legacy_name);
  CHECK_FALSE(s.folder("alice", f.legacy_name));
  CHECK(s.messages("alice", f.legacy_name).empty());
}

TEST_CASE("state store: runs, newest first, and a crash's 'running' becomes 'interrupted'") {
  backend b;
  const std::string db = b.location;
  {
    state_store s(db);
    auto first = s.begin_run("alice", 1000, 0, "bulk");
    run_record done;
    done.id = first;
    done.finished_at = 1010;
    done.result = run_result::done;
    done.messages_copied = 49;
    done.bytes_copied = 2'100'000;
    done.bytes_left = 0;
    s.finish_run(done);
    s.begin_run("alice", 2000);  // never finished: the process "dies"
    s.begin_run("bob", 2001);
  }
  state_store s(db);
  CHECK(s.mark_interrupted(3000) == 2);
  auto runs = s.runs("alice", 10);
  REQUIRE(runs.size() == 2);
  CHECK(runs[0].result == run_result::interrupted);
  CHECK(runs[0].finished_at == 3000);
  CHECK(runs[1].result == run_result::done);
  CHECK(runs[1].messages_copied == 49u);
  CHECK(runs[1].bytes_copied == 2'100'000u);
  CHECK(runs[1].started_by == "bulk");  // schema 4: what started the run
  CHECK(runs[1].bytes_left == 0);
  CHECK(runs[0].started_by == "");
  CHECK(runs[0].bytes_left == -1);      // cut off: not known
  CHECK(s.runs("alice", 1).size() == 1);
  CHECK(s.mark_interrupted(4000) == 0);
}

TEST_CASE("state store: one running run per user across processes") {
  backend b;
  const std::string db = b.location;
  state_store s(db);
  // Another live process (a child that waits) has a run of alice going.
  pid_t other = fork();
  REQUIRE(other >= 0);
  if (other == 0) {
    ::sleep(30);  // bounded; killed below
    ::_exit(0);
  }
  const auto theirs = s.begin_run("alice", 100, other);
  try {
    s.begin_run("alice", 101);
    FAIL("a second run of alice began while process " << other << " runs one");
  } catch (const run_busy& e) {
    CHECK(e.pid == other);
    CHECK(std::string(e.what()) == "a migration of alice is running in process " + std::to_string(other));
  }
  s.finish_run(run_record{.id = s.begin_run("bob", 102), .finished_at = 103, .result = run_result::done});
  CHECK(s.mark_interrupted(104) == 0);  // the other process lives: its run stays "running"
  CHECK(s.runs("alice", 1).at(0).result == run_result::running);

  ::kill(other, SIGKILL);
  int status = 0;
  REQUIRE(::waitpid(other, &status, 0) == other);
  // Its process gone, the run was cut off: the next begin marks it and goes on.
  const auto mine = s.begin_run("alice", 105);
  auto runs = s.runs("alice", 10);
  REQUIRE(runs.size() == 2);
  CHECK(runs[0].id == mine);
  CHECK(runs[0].result == run_result::running);
  CHECK(runs[1].id == theirs);
  CHECK(runs[1].result == run_result::interrupted);
  CHECK(runs[1].finished_at == 105);
  // This process stopping: its own run is interrupted too.
  CHECK(s.mark_interrupted(106) == 1);
}

TEST_CASE("state store: SIGKILL at any instant leaves map and checkpoint in agreement") {
  backend b;
  const std::string db = b.location;
  { state_store s(db); }
  std::mt19937 rng(7);
  for (int round = 0; round < 6; ++round) {
    CAPTURE(round);
    pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // Writes batches of 50 forever (bounded: 2,000 batches), checkpoint = last UID.
      try {
        state_store s(db);
        folder_state f = sent_items();
        if (auto have = s.folder("alice", f.legacy_name)) f = *have;
        for (int b = 0; b < 2000; ++b) {
          std::vector<message_record> batch;
          for (int i = 0; i < 50; ++i) {
            std::uint32_t uid = f.last_legacy_uid + 1 + static_cast<std::uint32_t>(i);
            batch.push_back({uid, uid + 1000, "\\Seen"});
          }
          f.last_legacy_uid += 50;
          f.last_new_uid = f.last_legacy_uid + 1000;
          s.record_batch("alice", f, batch);
        }
      } catch (...) {
        _exit(3);
      }
      _exit(0);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 80));
    kill(child, SIGKILL);
    int status = 0;
    waitpid(child, &status, 0);
    state_store s(db);
    auto f = s.folder("alice", "INBOX.Sent Items");
    auto msgs = s.messages("alice", "INBOX.Sent Items");
    if (!f) {
      CHECK(msgs.empty());
      continue;
    }
    // Every UID up to the checkpoint is mapped, none beyond it: nothing lost, nothing doubled.
    CHECK(msgs.size() == f->last_legacy_uid);
    if (!msgs.empty()) CHECK(msgs.back().legacy_uid == f->last_legacy_uid);
    CHECK(f->last_new_uid == f->last_legacy_uid + 1000);
  }
}

TEST_CASE("state store: the append journal is written before a batch and goes with its record") {
  backend b;
  state_store s(b.location);
  folder_state f = sent_items();
  s.save_folder("alice", f);
  const std::uint32_t batch[] = {3, 4, 9};
  const std::int64_t id = s.journal_batch("alice", f.legacy_name, batch, 17, 5000);
  const std::uint32_t other[] = {1};
  const std::int64_t id2 = s.journal_batch("alice", "INBOX", other, 2, 5001);
  CHECK(s.journaled_folders("alice") == std::set<std::string>{"INBOX", f.legacy_name});
  CHECK(s.journaled_folders("bob").empty());
  auto j = s.journal("alice", f.legacy_name);
  REQUIRE(j.size() == 1);
  CHECK(j[0] == journal_entry{id, {3, 4, 9}, 17, 5000});

  SUBCASE("recorded: the entry goes in the same transaction") {
    f.last_legacy_uid = 9;
    f.last_new_uid = 19;
    std::vector<message_record> recs{{3, 17, ""}, {4, 18, "\\Seen"}, {9, 19, ""}};
    const std::int64_t resolved[] = {id};
    s.record_batch("alice", f, recs, resolved);
    CHECK(s.journal("alice", f.legacy_name).empty());
    CHECK(s.journal("alice", "INBOX").size() == 1);
  }
  SUBCASE("dropped (a refused batch), kept across a reopen until then") {
    state_store again(b.location);
    CHECK(again.journal("alice", f.legacy_name).size() == 1);
    const std::int64_t ids[] = {id, id2};
    again.drop_journal(ids);
    CHECK(again.journaled_folders("alice").empty());
  }
  SUBCASE("forgotten with its folder") {
    s.forget_folder("alice", f.legacy_name);
    CHECK(s.journal("alice", f.legacy_name).empty());
  }
}

TEST_CASE("state store: a run that lost its user can neither journal, record nor forget (fencing)") {
  backend b;
  state_store s(b.location);
  folder_state f = sent_items();
  const std::uint32_t uids[] = {1};
  s.begin_run("alice", 100);
  CHECK(s.journal_batch("alice", f.legacy_name, uids, 1, 100) > 0);
  f.last_legacy_uid = 1;
  const message_record one[] = {{1, 1, ""}};
  s.record_batch("alice", f, one);
  // The process is stopping (or another took the user over): its run is cut.
  CHECK(s.mark_interrupted(101) == 1);
  CHECK_THROWS_AS(s.journal_batch("alice", f.legacy_name, uids, 2, 102), lease_lost);
  f.last_legacy_uid = 2;
  const message_record two[] = {{2, 2, ""}};
  CHECK_THROWS_AS(s.record_batch("alice", f, two), lease_lost);
  const std::pair<std::uint32_t, std::string> seen[] = {{1, "\\Seen"}};
  CHECK_THROWS_AS(s.update_flags("alice", f.legacy_name, seen), lease_lost);
  CHECK_THROWS_AS(s.forget_folder("alice", f.legacy_name), lease_lost);
  // Nothing of the refused writes is there.
  CHECK(s.folder("alice", f.legacy_name)->last_legacy_uid == 1);
  CHECK(s.messages("alice", f.legacy_name) == std::vector<message_record>{{1, 1, ""}});
  CHECK(s.journal("alice", f.legacy_name).size() == 1);
  // A new run of this process owns the user again.
  s.begin_run("alice", 103);
  s.record_batch("alice", f, two);
  CHECK(s.messages("alice", f.legacy_name).size() == 2);
}

TEST_CASE("state store: another node's run holds the user while its lease lasts, then is taken over") {
  backend b;
  if (skipped_without_postgresql(b)) return;
  state_store a(b.location, {.node = "node-a", .lease_seconds = 2});
  state_store other(b.location, {.node = "node-b", .lease_seconds = 2});
  CHECK(a.node() == "node-a");
  const auto theirs = a.begin_run("alice", 100);
  try {
    other.begin_run("alice", 101);
    FAIL("node-b began a run of alice while node-a holds it");
  } catch (const run_busy& e) {
    CHECK(e.node == "node-a");
    CHECK(std::string(e.what()).find("on node node-a") != std::string::npos);
  }
  // node-b starting up leaves node-a's live run alone.
  CHECK(other.mark_interrupted(101) == 0);
  // Renewed, the lease outlives its first term.
  a.begin_run("bob", 100);
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  a.renew_leases();
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  CHECK_THROWS_AS(other.begin_run("bob", 102), run_busy);
  // alice's lease was renewed too (renew_leases covers every run of the
  // process): let both expire, node-a silent as a dead node is.
  std::this_thread::sleep_for(std::chrono::milliseconds(3100));
  const auto mine = other.begin_run("alice", 105);
  auto runs = other.runs("alice", 10);
  REQUIRE(runs.size() == 2);
  CHECK(runs[0].id == mine);
  CHECK(runs[0].node == "node-b");
  CHECK(runs[1].id == theirs);
  CHECK(runs[1].result == run_result::interrupted);
  // node-a comes back to life: it may not record what it was doing.
  folder_state f = sent_items();
  f.last_legacy_uid = 1;
  const message_record one[] = {{1, 1, ""}};
  try {
    a.record_batch("alice", f, one);
    FAIL("a run whose lease expired recorded a batch");
  } catch (const lease_lost& e) {
    CHECK(e.node == "node-b");
  }
  CHECK_FALSE(other.folder("alice", f.legacy_name));
  other.record_batch("alice", f, one);
  CHECK(other.messages("alice", f.legacy_name).size() == 1);
  other.finish_run(run_record{.id = mine, .finished_at = 106, .result = run_result::done});
  // Expired leases are cut at a node's start-up too (bob's, node-a silent).
  CHECK(other.mark_interrupted(107) == 1);
  CHECK(other.runs("bob", 1).at(0).result == run_result::interrupted);
}

TEST_CASE("state store: the cluster's queue and legacy connections, shared by two nodes") {
  backend b;
  if (skipped_without_postgresql(b)) return;
  state_store a(b.location, {.node = "node-a", .lease_seconds = 2});
  state_store other(b.location, {.node = "node-b", .lease_seconds = 2});
  // Queued once, whoever queues it; each taken by one node.
  for (int i = 0; i < 5; ++i) {
    const std::string u = "user" + std::to_string(i);
    CHECK(a.queue_user({u, u, u, u + "@new", u + "@new", ""}, 100 + i));
  }
  CHECK_FALSE(other.queue_user({"user0", "user0", "user0", "x", "x", ""}, 200));
  CHECK(a.queue_length() == 5);
  const auto mine = a.take_queued(2);
  REQUIRE(mine.size() == 2);
  CHECK(mine[0] == queued_user{"user0", "user0", "user0", "user0@new", "user0@new", ""});
  const auto theirs = other.take_queued(10);
  CHECK(theirs.size() == 3);
  CHECK(a.take_queued(10).empty());
  a.unqueue("user0");
  other.unqueue("user1");  // not node-b's: stays
  CHECK(a.queue_length() == 4);
  // The cluster's legacy connections: node-b sees node-a's.
  a.claim_legacy([](const legacy_counts& elsewhere) {
    CHECK(elsewhere.empty());
    return legacy_counts{{"", 2}, {"old2", 1}};
  });
  other.claim_legacy([](const legacy_counts& elsewhere) {
    CHECK(elsewhere == legacy_counts{{"", 2}, {"old2", 1}});
    return legacy_counts{{"", 1}};
  });
  a.publish_legacy({{"", 1}});
  CHECK(other.claim_legacy([](const legacy_counts&) { return legacy_counts{{"", 1}}; }) ==
        legacy_counts{{"", 1}});
  // node-a falls silent: after its lease its connections count no more and
  // the users it had taken go back to the queue for node-b.
  std::this_thread::sleep_for(std::chrono::milliseconds(2600));
  other.renew_leases();
  CHECK(other.claim_legacy([](const legacy_counts&) { return legacy_counts{}; }).empty());
  // (node-b stopping too: mark_interrupted puts back its own as well.)
  CHECK(other.mark_interrupted(300) == 0);
  const auto back = other.take_queued(10);
  std::set<std::string> keys;
  for (const auto& u : back) keys.insert(u.key);
  CHECK(keys == std::set<std::string>{"user1", "user2", "user3", "user4"});
}

TEST_CASE("state store: a login's job in the cluster's queue goes ahead of bulk users") {
  backend b;
  state_store a(b.location, {.node = "node-a", .lease_seconds = 30});
  CHECK(a.queue_user({"bulk1", "bulk1", "bulk1", "n1", "n1", ""}, 100));
  CHECK(a.queue_user({"bulk2", "bulk2", "bulk2", "n2", "n2", "old2"}, 101));
  // A login later than both, offered by node-b: first; its node and client kept.
  const queued_user login{"carol", "carol", "carol", "carol@new", "carol@new", "", "node-b", "192.0.2.7"};
  CHECK(a.queue_user(login, 200));
  // A login of a user waiting as bulk raises its row.
  CHECK(a.queue_user({"bulk2", "bulk2", "bulk2", "n2", "n2", "old2", "node-b", "192.0.2.8"}, 201));
  // A bulk hand-over of a queued user changes nothing.
  CHECK_FALSE(a.queue_user({"carol", "x", "x", "x", "x", ""}, 202));
  CHECK(a.queue_holder("carol") == std::string());
  CHECK_FALSE(a.queue_holder("nobody"));
  const auto taken = a.take_queued(2);
  REQUIRE(taken.size() == 2);
  CHECK(taken[0] == queued_user{"bulk2", "bulk2", "bulk2", "n2", "n2", "old2", "node-b", "192.0.2.8"});
  CHECK(taken[1] == login);
  // (SQLite: one machine, no node names, and the daemon keeps its queue in
  // memory; what follows is about rows a node holds.)
  if (!b.pg) return;
  CHECK(a.queue_holder("carol") == std::string("node-a"));
  // A row some node holds (it runs now) is not raised by a login.
  CHECK_FALSE(a.queue_user({"carol", "carol", "carol", "c", "c", "", "node-c", "192.0.2.9"}, 300));
  CHECK(a.take_queued(5) == std::vector<queued_user>{{"bulk1", "bulk1", "bulk1", "n1", "n1", ""}});
  a.unqueue("carol");
  CHECK_FALSE(a.queue_holder("carol"));
}

TEST_CASE("state store: a node name belongs to one machine at a time") {
  backend b;
  if (skipped_without_postgresql(b)) return;
  state_store here(b.location, {.node = "mx-1", .lease_seconds = 2, .machine = "boot-a pid:[1]"});
  state_store again(b.location, {.node = "mx-1", .lease_seconds = 2, .machine = "boot-a pid:[1]"});
  state_store elsewhere(b.location, {.node = "mx-1", .lease_seconds = 2, .machine = "boot-b pid:[1]"});
  state_store other_name(b.location, {.node = "mx-2", .lease_seconds = 2, .machine = "boot-b pid:[1]"});
  here.claim_node();
  again.claim_node();  // another process of the same machine: the same node
  other_name.claim_node();
  CHECK_THROWS_WITH_AS(elsewhere.claim_node(),
                       doctest::Contains("[sync] node_name \"mx-1\" is in use by another machine"),
                       state_error);
  // Renewed, it stays taken past its first term; silent, it is free again.
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  here.renew_leases();
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  CHECK_THROWS_AS(elsewhere.claim_node(), state_error);
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  elsewhere.claim_node();
  CHECK_THROWS_AS(here.claim_node(), state_error);
}

