#include <doctest/doctest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

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

TEST_CASE("state store: created with its folder, in WAL mode, at the current schema version") {
  temp_dir t;
  fs::path db = t.path / "sub" / "state.db";
  {
    state_store s(db);
    CHECK(s.schema_version() == state_store::kSchemaVersion);
  }
  CHECK(fs::exists(db));
  CHECK(journal_mode(db) == "wal");
  state_store again(db);  // reopening migrates nothing and keeps the version
  CHECK(again.schema_version() == state_store::kSchemaVersion);
}

TEST_CASE("state store: a file from a newer suction is refused, naming it") {
  temp_dir t;
  fs::path db = t.path / "state.db";
  { state_store s(db); }
  sqlite3* h = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &h) == SQLITE_OK);
  sqlite3_exec(h, "PRAGMA user_version = 99", nullptr, nullptr, nullptr);
  sqlite3_close(h);
  try {
    state_store s(db);
    FAIL("opened a newer schema");
  } catch (const state_error& e) {
    CHECK(std::string(e.what()).find(db.string()) != std::string::npos);
    CHECK(std::string(e.what()).find("newer") != std::string::npos);
  }
}

TEST_CASE("state store: a path that cannot be opened is a state_error naming it") {
  temp_dir t;
  fs::path blocker = t.path / "file";
  { std::ofstream(blocker) << "x"; }
  CHECK_THROWS_AS(state_store(blocker / "state.db"), state_error);
}

TEST_CASE("state store: folder checkpoints per user") {
  temp_dir t;
  state_store s(t.path / "state.db");
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
  temp_dir t;
  state_store s(t.path / "state.db");
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
  temp_dir t;
  fs::path db = t.path / "state.db";
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
  temp_dir t;
  fs::path db = t.path / "state.db";
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
  temp_dir t;
  fs::path db = t.path / "state.db";
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
  temp_dir t;
  state_store s(t.path / "state.db");
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
    state_store again(t.path / "state.db");
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
