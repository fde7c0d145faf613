// sync::copy_folder against the real Dovecot servers of the test bed: alice's
// legacy folders are copied into bob's new mailbox under a prefix unique to the
// run (deleted at the end), so other tests never see them. Refusals by the new
// server, which Dovecot cannot be made to produce for what its legacy twin
// stored, come from a scripted fake new server.
#include <doctest/doctest.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "../support/run_coro.hpp"
#include "../support/digest.hpp"
#include "../support/testbed.hpp"
#include "imap/client/client.hpp"
#include "imap/date.hpp"
#include "imap/response.hpp"
#include "imap/serialize.hpp"
#include "sync/folder_copy.hpp"
#include "sync/state_store.hpp"

using namespace suction;
using namespace suction::imap;
using suction::test::run_coro;
using suction::test::sha256_hex;
using suction::test::testbed;
namespace asio = boost::asio;

namespace {

// Unique per run: no '.' or '/' (the legacy and new separators).
std::string unique_prefix() {
  auto now = std::chrono::duration_cast<std::chrono::microseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  return "fc" + std::to_string(::getpid()) + "x" + std::to_string(now);
}

std::vector<std::string> without_recent(std::vector<std::string> flags) {
  std::erase_if(flags, [](const std::string& f) { return f == "\\Recent"; });
  std::sort(flags.begin(), flags.end());
  return flags;
}

std::int64_t instant(const std::string& d) {
  auto t = parse_date_time(d);
  REQUIRE_MESSAGE(t, d);
  return t->epoch_seconds;
}

awaitable<std::error_code> open_session(client& c, const test::server_info& s, std::string user) {
  endpoint ep{s.host, s.imap_port, tls_mode::none};
  if (auto e = co_await c.connect(ep, nullptr)) co_return e;
  co_return co_await c.login(user, testbed().users.at(user));
}

// What must not change on legacy: UIDVALIDITY, count, UIDs and flags.
struct snapshot {
  std::uint32_t uidvalidity = 0, exists = 0;
  std::vector<std::pair<std::uint32_t, std::vector<std::string>>> messages;
  bool operator==(const snapshot&) const = default;
};

awaitable<snapshot> take_snapshot(client& c, std::string folder) {
  snapshot s;
  command_result r;
  if (co_await c.mailbox_command("EXAMINE", folder, r) || r.status != status::ok) co_return s;
  for (auto& u : r.untagged) {
    if (auto v = decode_uidvalidity(u)) s.uidvalidity = *v;
    if (u.keyword == "EXISTS" && u.number) s.exists = *u.number;
  }
  if (s.exists == 0) co_return s;
  if (co_await c.simple("UID FETCH 1:* (UID FLAGS)", r)) co_return s;
  for (auto& u : r.untagged)
    if (auto f = decode_fetch(u); f && f->uid)
      s.messages.emplace_back(*f->uid, without_recent(f->flags.value_or(std::vector<std::string>{})));
  std::sort(s.messages.begin(), s.messages.end());
  co_return s;
}

struct new_message {
  std::uint32_t uid = 0;
  std::string sha256, internaldate;
  std::vector<std::string> flags;
  std::size_t size = 0;
};

class body_collector : public response_handler {
 public:
  std::map<std::uint32_t, std::string> bodies;  // seq -> bytes
  std::map<std::uint32_t, new_message> msgs;    // seq -> the rest
  std::uint32_t current = 0;
  awaitable<void> on_literal_begin(const literal_info& info) override {
    current = info.message_number.value_or(0);
    bodies[current].clear();
    co_return;
  }
  awaitable<void> on_literal_data(std::string_view chunk) override {
    bodies[current].append(chunk);
    co_return;
  }
  awaitable<void> on_response(response& r) override {
    auto f = decode_fetch(r);
    if (!f) co_return;
    auto& m = msgs[f->seq];
    if (f->uid) m.uid = *f->uid;
    if (f->flags) m.flags = without_recent(*f->flags);
    if (f->internaldate) m.internaldate = *f->internaldate;
    if (auto* s = f->section("BODY[]"); s && !s->content->streamed) bodies[f->seq] = s->content->text;
    co_return;
  }
};

// Everything in a folder of the new server, in UID order.
awaitable<std::vector<new_message>> fetch_new(client& c, std::string folder) {
  std::vector<new_message> out;
  command_result r;
  if (co_await c.mailbox_command("EXAMINE", folder, r) || r.status != status::ok) co_return out;
  std::uint32_t exists = 0;
  for (auto& u : r.untagged)
    if (u.keyword == "EXISTS" && u.number) exists = *u.number;
  if (exists == 0) co_return out;
  body_collector got;
  if (co_await c.simple("UID FETCH 1:* (UID FLAGS INTERNALDATE BODY.PEEK[])", r, &got)) co_return out;
  for (auto& [seq, m] : got.msgs) {
    m.sha256 = sha256_hex(got.bodies[seq]);
    m.size = got.bodies[seq].size();
    out.push_back(m);
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.uid < b.uid; });
  co_return out;
}

awaitable<std::vector<std::string>> list_tree(client& c, std::string prefix) {
  command_result r;
  std::string list = "LIST \"\" \"" + prefix + "*\"";
  std::vector<std::string> names;
  if (co_await c.simple(list, r)) co_return names;
  for (auto& u : r.untagged)
    if (auto l = decode_list(u)) names.push_back(l->name);
  co_return names;
}

// Deletes every folder of the new server under prefix (children first).
awaitable<void> delete_tree(client& c, std::string prefix) {
  command_result r;
  co_await c.simple("SELECT INBOX", r);  // nothing of ours stays selected
  std::vector<std::string> names = co_await list_tree(c, prefix);
  CHECK(!names.empty());
  std::sort(names.begin(), names.end(),
            [](auto& a, auto& b) { return a.size() > b.size(); });
  for (auto& n : names) {
    std::string tag = c.next_tag();
    command_builder b(tag, "DELETE", true);
    b.astring(n);  // as listed (modified UTF-7)
    std::vector<std::string> parts = std::move(b).finish();
    co_await c.execute(tag, std::move(parts), r);
  }
  std::vector<std::string> left = co_await list_tree(c, prefix);
  CHECK(left.empty());
}

struct temp_db {
  std::filesystem::path path;
  explicit temp_db(const std::string& name)
      : path(std::filesystem::temp_directory_path() / ("suction-" + name + ".db")) {}
  ~temp_db() {
    std::error_code ec;
    for (const char* suffix : {"", "-wal", "-shm"})
      std::filesystem::remove(path.string() + suffix, ec);
  }
};

}  // namespace

TEST_CASE("copy_folder: INBOX, a nested and a non-ASCII folder byte for byte, legacy untouched, a rerun copies nothing") {
  const auto& bed = testbed();
  std::ifstream in(bed.dir + "/corpus.json");
  REQUIRE(in);
  auto corpus = nlohmann::json::parse(in);
  const std::string prefix = unique_prefix();
  temp_db db(prefix);
  sync::state_store state(db.path);

  const std::vector<std::pair<std::string, std::string>> folders = {
      {"INBOX", prefix + "/INBOX"},
      {"INBOX.Projects.2024.Q1", prefix + "/Projects/2024/Q1"},
      {"INBOX.Entw\xc3\xbcrfe", prefix + "/Entw\xc3\xbcrfe"},
  };
  sync::copy_options opts;
  opts.batch_messages = 5;        // several batches
  opts.batch_bytes = 64 * 1024;   // the 2 MB message goes alone

  auto done = run_coro<bool>([&](asio::any_io_executor ex) -> awaitable<bool> {
    client_options copts;
    copts.limits.inline_literal_max = 4096;  // most bodies stream
    client legacy(ex, copts), fresh(ex, copts), probe(ex);
    auto e1 = co_await open_session(legacy, bed.legacy, "alice");
    auto e2 = co_await open_session(fresh, bed.fresh, "bob");
    auto e3 = co_await open_session(probe, bed.legacy, "alice");
    REQUIRE_MESSAGE(!e1, e1.message());
    REQUIRE_MESSAGE(!e2, e2.message());
    REQUIRE_MESSAGE(!e3, e3.message());
    REQUIRE(fresh.capabilities().has("MULTIAPPEND"));

    for (auto& [legacy_name, new_name] : folders) {
      CAPTURE(legacy_name);
      const auto& expected = corpus.at("folders").at(legacy_name).at("messages");
      REQUIRE(!expected.empty());
      snapshot before = co_await take_snapshot(probe, legacy_name);
      REQUIRE(before.exists == expected.size());

      sync::folder_mapping m;
      m.legacy_name = legacy_name;
      m.new_name = new_name;
      sync::folder_copy_report rep;
      auto ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep);
      CHECK_MESSAGE(!ec, ec.message());
      CHECK(rep.copied == expected.size());
      CHECK(rep.failed == 0);
      CHECK(rep.skipped == 0);
      CHECK(rep.errors.empty());
      std::uint64_t bytes = 0;
      for (auto& x : expected) bytes += x.at("size").get<std::uint64_t>();
      CHECK(rep.bytes == bytes);

      // The new server has exactly the corpus, in order.
      auto got = co_await fetch_new(fresh, new_name);
      REQUIRE(got.size() == expected.size());
      for (std::size_t i = 0; i < got.size(); ++i) {
        CAPTURE(i);
        CHECK(got[i].sha256 == expected[i].at("sha256").get<std::string>());
        CHECK(got[i].flags == without_recent(expected[i].at("flags").get<std::vector<std::string>>()));
        CHECK(instant(got[i].internaldate) ==
              instant(expected[i].at("internaldate").get<std::string>()));
      }

      // The state store maps legacy UIDs to the new UIDs, in order; the checkpoint is at the end.
      auto recs = state.messages("alice", legacy_name);
      REQUIRE(recs.size() == got.size());
      std::sort(recs.begin(), recs.end(), [](auto& a, auto& b) { return a.legacy_uid < b.legacy_uid; });
      for (std::size_t i = 0; i < recs.size(); ++i) {
        CHECK(recs[i].legacy_uid == before.messages[i].first);
        CHECK(recs[i].new_uid == got[i].uid);
      }
      auto cp = state.folder("alice", legacy_name);
      REQUIRE(cp);
      CHECK(cp->legacy_uidvalidity == before.uidvalidity);
      CHECK(cp->last_legacy_uid == before.messages.back().first);
      CHECK(cp->last_new_uid == got.back().uid);
      CHECK(cp->new_name == new_name);
      CHECK(cp->new_uidvalidity != 0);

      // Legacy: nothing moved, not even \Seen.
      snapshot after = co_await take_snapshot(probe, legacy_name);
      CHECK(after == before);

      // A second run copies nothing.
      sync::folder_copy_report rep2;
      ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep2);
      CHECK_MESSAGE(!ec, ec.message());
      CHECK(rep2.copied == 0);
      CHECK(rep2.errors.empty());
      auto again = co_await fetch_new(fresh, new_name);
      CHECK(again.size() == got.size());
      CHECK(state.folder("alice", legacy_name) == cp);
    }
    co_await delete_tree(fresh, prefix);
    co_await legacy.logout();
    co_await fresh.logout();
    co_await probe.logout();
    co_return true;
  }, std::chrono::seconds(180));
  CHECK(done);
}

TEST_CASE("copy_folder: a message added to legacy later is the only one the next run copies, a UIDVALIDITY change is re-matched and copies only what is new") {
  const auto& bed = testbed();
  const std::string prefix = unique_prefix();
  temp_db db(prefix);
  sync::state_store state(db.path);
  const std::string scratch = "INBOX." + prefix;  // a legacy folder of our own
  const std::string target = prefix + "/scratch";
  std::vector<std::string> bodies = {
      "From: a@example.org\r\nSubject: one\r\n\r\nfirst\r\n",
      "From: b@example.org\r\nSubject: two\r\n\r\nsecond\r\n",
      "From: c@example.org\r\nSubject: late\r\n\r\nadded after the first run\r\n",
      "From: d@example.org\r\nSubject: reborn\r\n\r\nafter the folder was recreated\r\n",
  };
  sync::folder_mapping m;
  m.legacy_name = scratch;
  m.new_name = target;
  sync::copy_options opts;

  auto done = run_coro<bool>([&](asio::any_io_executor ex) -> awaitable<bool> {
    client legacy(ex), fresh(ex), alice(ex);
    auto e1 = co_await open_session(legacy, bed.legacy, "alice");
    auto e2 = co_await open_session(fresh, bed.fresh, "bob");
    auto e3 = co_await open_session(alice, bed.legacy, "alice");
    REQUIRE_MESSAGE(!e1, e1.message());
    REQUIRE_MESSAGE(!e2, e2.message());
    REQUIRE_MESSAGE(!e3, e3.message());
    command_result r;
    co_await alice.mailbox_command("CREATE", scratch, r);
    REQUIRE(r.status == status::ok);

    auto append_legacy = [&](std::size_t i, std::vector<std::string> flags,
                             std::string date) -> awaitable<bool> {
      string_source src(bodies[i]);
      std::vector<append_item> items(1);
      items[0].flags = std::move(flags);
      items[0].internaldate = std::move(date);
      items[0].size = bodies[i].size();
      items[0].body = &src;
      command_result ar;
      auto ec = co_await alice.append(scratch, items, ar);
      co_return !ec && ar.status == status::ok;
    };
    std::vector<std::string> seen = {"\\Seen"}, none, flagged = {"\\Flagged", "$Label9"};
    bool ok = co_await append_legacy(0, seen, "01-Feb-2003 04:05:06 +0200");
    REQUIRE(ok);
    ok = co_await append_legacy(1, none, "02-Feb-2003 04:05:06 -0700");
    REQUIRE(ok);

    sync::folder_copy_report rep1;
    auto ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep1);
    CHECK_MESSAGE(!ec, ec.message());
    CHECK(rep1.copied == 2);

    ok = co_await append_legacy(2, flagged, "03-Mar-2004 05:06:07 +0000");
    REQUIRE(ok);
    sync::folder_copy_report rep2;
    ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep2);
    CHECK_MESSAGE(!ec, ec.message());
    CHECK(rep2.copied == 1);
    CHECK(rep2.bytes == bodies[2].size());
    CHECK(rep2.errors.empty());
    auto got = co_await fetch_new(fresh, target);
    REQUIRE(got.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) CHECK(got[i].sha256 == sha256_hex(bodies[i]));
    CHECK(got[2].flags == without_recent({"$Label9", "\\Flagged"}));
    CHECK(instant(got[2].internaldate) == instant("03-Mar-2004 05:06:07 +0000"));
    CHECK(state.messages("alice", scratch).size() == 3);

    sync::folder_copy_report rep3;
    ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep3);
    CHECK(!ec);
    CHECK(rep3.copied == 0);

    // Recreated on legacy with the same messages (a new UIDVALIDITY) plus one:
    // re-matched by signature, only the extra one is copied.
    co_await legacy.simple("EXAMINE INBOX", r);  // the engine's session lets go of it first
    co_await alice.mailbox_command("DELETE", scratch, r);
    REQUIRE(r.status == status::ok);
    co_await alice.mailbox_command("CREATE", scratch, r);
    REQUIRE(r.status == status::ok);
    ok = co_await append_legacy(0, seen, "01-Feb-2003 04:05:06 +0200");
    REQUIRE(ok);
    ok = co_await append_legacy(1, none, "02-Feb-2003 04:05:06 -0700");
    REQUIRE(ok);
    ok = co_await append_legacy(2, flagged, "03-Mar-2004 05:06:07 +0000");
    REQUIRE(ok);
    ok = co_await append_legacy(3, none, "");
    REQUIRE(ok);
    const auto old_cp = state.folder("alice", scratch);
    REQUIRE(old_cp);
    sync::folder_copy_report rep4;
    ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep4);
    CHECK_MESSAGE(!ec, ec.message());
    CHECK(rep4.copied == 1);
    CHECK(rep4.rematched == 3);
    CHECK(rep4.bytes == bodies[3].size());
    CHECK(rep4.errors.empty());
    auto still = co_await fetch_new(fresh, target);
    REQUIRE(still.size() == 4);
    for (std::size_t i = 0; i < 4; ++i) CHECK(still[i].sha256 == sha256_hex(bodies[i]));
    auto cp4 = state.folder("alice", scratch);
    REQUIRE(cp4);
    CHECK(cp4->legacy_uidvalidity != old_cp->legacy_uidvalidity);
    CHECK(cp4->last_new_uid == still[3].uid);
    auto recs4 = state.messages("alice", scratch);
    REQUIRE(recs4.size() == 4);
    for (std::size_t i = 0; i < 4; ++i) CHECK(recs4[i].new_uid == still[i].uid);
    CHECK(recs4[2].flags == "$Label9 \\Flagged");
    CHECK(cp4->last_legacy_uid == recs4[3].legacy_uid);
    sync::folder_copy_report rep5;
    ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep5);
    CHECK(!ec);
    CHECK(rep5.copied == 0);
    CHECK((co_await fetch_new(fresh, target)).size() == 4);

    co_await legacy.simple("EXAMINE INBOX", r);
    co_await alice.mailbox_command("DELETE", scratch, r);
    CHECK(r.status == status::ok);
    co_await delete_tree(fresh, prefix);
    co_await legacy.logout();
    co_await fresh.logout();
    co_await alice.logout();
    co_return true;
  }, std::chrono::seconds(120));
  CHECK(done);
}

namespace {

// APPENDs bodies[i] (with its date) to `folder` on c.
awaitable<bool> append_to(client& c, std::string folder, std::string body, std::string date) {
  string_source src(body);
  std::vector<append_item> items(1);
  items[0].internaldate = std::move(date);
  items[0].size = body.size();
  items[0].body = &src;
  command_result ar;
  auto ec = co_await c.append(folder, items, ar);
  co_return !ec && ar.status == status::ok;
}

std::multiset<std::string> hashes(const std::vector<new_message>& v) {
  std::multiset<std::string> out;
  for (auto& m : v) out.insert(m.sha256);
  return out;
}

void copy_db(const std::filesystem::path& from, const std::filesystem::path& to) {
  for (const char* suffix : {"", "-wal"}) {
    std::filesystem::path f = from.string() + suffix;
    if (std::filesystem::exists(f))
      std::filesystem::copy_file(f, to.string() + suffix,
                                 std::filesystem::copy_options::overwrite_existing);
  }
}

}  // namespace

TEST_CASE("copy_folder: after a crash between APPEND and record, the unrecorded copies are reconciled, nothing doubled") {
  const auto& bed = testbed();
  const std::string prefix = unique_prefix();
  temp_db db(prefix), older(prefix + "-older");
  const std::string scratch = "INBOX." + prefix;
  const std::string target = prefix + "/scratch";
  const std::string dup = "From: d@example.org\r\nSubject: twice\r\n\r\nthe same bytes twice\r\n";
  // (body, date): an exact duplicate pair among what the crash leaves unrecorded.
  std::vector<std::pair<std::string, std::string>> msgs = {
      {"From: a@example.org\r\nSubject: one\r\n\r\nfirst\r\n", "01-Feb-2003 04:05:06 +0200"},
      {"From: b@example.org\r\nSubject: two\r\n\r\nsecond\r\n", "02-Feb-2003 04:05:06 +0200"},
      {dup, "03-Feb-2003 04:05:06 +0200"},
      {"From: c@example.org\r\nSubject: three\r\n\r\nthird\r\n", "04-Feb-2003 04:05:06 +0200"},
      {dup, "03-Feb-2003 04:05:06 +0200"},
      {"From: e@example.org\r\n\r\nno message-id, no subject\r\n", "05-Feb-2003 04:05:06 +0200"},
      {"From: f@example.org\r\nSubject: after\r\n\r\nadded after the crash\r\n", "06-Feb-2003 04:05:06 +0200"},
  };
  sync::folder_mapping m;
  m.legacy_name = scratch;
  m.new_name = target;
  sync::copy_options opts;
  opts.batch_messages = 2;

  auto done = run_coro<bool>([&](asio::any_io_executor ex) -> awaitable<bool> {
    client legacy(ex), fresh(ex), alice(ex);
    auto e1 = co_await open_session(legacy, bed.legacy, "alice");
    auto e2 = co_await open_session(fresh, bed.fresh, "bob");
    auto e3 = co_await open_session(alice, bed.legacy, "alice");
    REQUIRE_MESSAGE(!e1, e1.message());
    REQUIRE_MESSAGE(!e2, e2.message());
    REQUIRE_MESSAGE(!e3, e3.message());
    command_result r;
    co_await alice.mailbox_command("CREATE", scratch, r);
    REQUIRE(r.status == status::ok);
    for (std::size_t i = 0; i < 2; ++i) {
      bool ok = co_await append_to(alice, scratch, msgs[i].first, msgs[i].second);
      REQUIRE(ok);
    }
    {
      // The first batch, recorded; this store is what a crash right after it leaves.
      sync::state_store state(db.path);
      sync::folder_copy_report rep;
      auto ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep);
      CHECK_MESSAGE(!ec, ec.message());
      CHECK(rep.copied == 2);
    }
    copy_db(db.path, older.path);
    for (std::size_t i = 2; i < 6; ++i) {
      bool ok = co_await append_to(alice, scratch, msgs[i].first, msgs[i].second);
      REQUIRE(ok);
    }
    {
      // The rest is appended (and recorded in a store the crash will lose).
      sync::state_store state(db.path);
      sync::folder_copy_report rep;
      auto ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep);
      CHECK_MESSAGE(!ec, ec.message());
      CHECK(rep.copied == 4);
    }
    bool ok = co_await append_to(alice, scratch, msgs[6].first, msgs[6].second);
    REQUIRE(ok);

    // The run after the crash, with the store as it was after the first batch.
    sync::state_store state(older.path);
    REQUIRE(state.messages("alice", scratch).size() == 2);
    sync::folder_copy_report rep;
    auto ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep);
    CHECK_MESSAGE(!ec, ec.message());
    CHECK(rep.reconciled == 4);
    CHECK(rep.copied == 1);
    CHECK(rep.errors.empty());

    auto got = co_await fetch_new(fresh, target);
    std::multiset<std::string> expected;
    for (auto& [body, date] : msgs) expected.insert(sha256_hex(body));
    CHECK(got.size() == msgs.size());
    CHECK(hashes(got) == expected);
    // Every legacy message is mapped, to distinct new UIDs holding its bytes.
    snapshot legacy_now = co_await take_snapshot(alice, scratch);
    co_await alice.simple("EXAMINE INBOX", r);
    REQUIRE(legacy_now.messages.size() == msgs.size());
    auto recs = state.messages("alice", scratch);
    REQUIRE(recs.size() == msgs.size());
    std::map<std::uint32_t, std::string> new_hash;
    for (auto& g : got) new_hash[g.uid] = g.sha256;
    std::set<std::uint32_t> new_uids;
    for (std::size_t i = 0; i < recs.size(); ++i) {
      CAPTURE(i);
      CHECK(recs[i].legacy_uid == legacy_now.messages[i].first);
      CHECK(new_hash[recs[i].new_uid] == sha256_hex(msgs[i].first));
      new_uids.insert(recs[i].new_uid);
    }
    CHECK(new_uids.size() == msgs.size());
    auto cp = state.folder("alice", scratch);
    REQUIRE(cp);
    CHECK(cp->last_legacy_uid == legacy_now.messages.back().first);
    CHECK(cp->last_new_uid == got.back().uid);

    // And again: nothing.
    sync::folder_copy_report rep2;
    ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep2);
    CHECK(!ec);
    CHECK(rep2.copied == 0);
    CHECK(rep2.reconciled == 0);
    CHECK((co_await fetch_new(fresh, target)).size() == msgs.size());

    co_await legacy.simple("EXAMINE INBOX", r);
    co_await alice.mailbox_command("DELETE", scratch, r);
    CHECK(r.status == status::ok);
    co_await delete_tree(fresh, prefix);
    co_await legacy.logout();
    co_await fresh.logout();
    co_await alice.logout();
    co_return true;
  }, std::chrono::seconds(120));
  CHECK(done);
}

TEST_CASE("copy_folder: recent first, newest first, and after an interrupted recent-first run the checkpoint reaches the top") {
  const auto& bed = testbed();
  const std::string prefix = unique_prefix();
  temp_db db(prefix);
  const std::string scratch = "INBOX." + prefix;
  const std::string target = prefix + "/recent";
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  auto days_ago = [&](int d) {
    return suction::imap::format_date_time({static_cast<std::int64_t>(now) - d * 86400, 0});
  };
  // UIDs 1..6: old, recent (2 days), old, recent (1 day), old, recent (3 days).
  std::vector<std::pair<std::string, std::string>> msgs;
  for (int i = 0; i < 6; ++i)
    msgs.emplace_back("From: r@example.org\r\nSubject: m" + std::to_string(i + 1) + "\r\n\r\nbody " +
                          std::to_string(i + 1) + "\r\n",
                      i % 2 == 0 ? "0" + std::to_string(i + 1) + "-Jan-2003 10:00:00 +0000"
                                 : days_ago(i == 1 ? 2 : i == 3 ? 1 : 3));
  sync::folder_mapping m;
  m.legacy_name = scratch;
  m.new_name = target;
  sync::copy_options opts;
  opts.batch_messages = 1;
  opts.recent_since = static_cast<std::int64_t>(now) - 14 * 86400;

  auto done = run_coro<bool>([&](asio::any_io_executor ex) -> awaitable<bool> {
    client legacy(ex), legacy2(ex), fresh(ex), alice(ex);
    auto e1 = co_await open_session(legacy, bed.legacy, "alice");
    auto e2 = co_await open_session(fresh, bed.fresh, "bob");
    auto e3 = co_await open_session(alice, bed.legacy, "alice");
    auto e4 = co_await open_session(legacy2, bed.legacy, "alice");
    REQUIRE_MESSAGE(!e1, e1.message());
    REQUIRE_MESSAGE(!e2, e2.message());
    REQUIRE_MESSAGE(!e3, e3.message());
    REQUIRE_MESSAGE(!e4, e4.message());
    command_result r;
    co_await alice.mailbox_command("CREATE", scratch, r);
    REQUIRE(r.status == status::ok);
    for (auto& [body, date] : msgs) {
      bool ok = co_await append_to(alice, scratch, body, date);
      REQUIRE(ok);
    }
    sync::state_store state(db.path);
    {
      // A run cut off once the three recent messages are copied and recorded.
      sync::copy_options cut = opts;
      std::uint64_t copied = 0;
      cut.on_copied = [&copied](std::uint64_t n, std::uint64_t) {
        if ((copied += n) == 3) throw std::runtime_error("cut off");
      };
      sync::folder_copy_report rep;
      bool thrown = false;
      try {
        co_await sync::copy_folder(legacy, fresh, state, "alice", m, cut, rep);
      } catch (const std::runtime_error&) {
        thrown = true;
      }
      REQUIRE(thrown);
    }
    // Newest first: new UIDs in order hold legacy 4 (1 day), 2 (2 days), 6 (3 days).
    auto got = co_await fetch_new(fresh, target);
    REQUIRE(got.size() == 3);
    CHECK(got[0].sha256 == sha256_hex(msgs[3].first));
    CHECK(got[1].sha256 == sha256_hex(msgs[1].first));
    CHECK(got[2].sha256 == sha256_hex(msgs[5].first));
    CHECK(state.messages("alice", scratch).size() == 3);
    CHECK(state.folder("alice", scratch)->last_legacy_uid == 0);  // UID 1 is not copied yet

    // The next run copies the old ones; the checkpoint then covers the top UID
    // (6, copied by the cut-off run), not only the highest it copied itself (5).
    sync::folder_copy_report rep;
    auto ec = co_await sync::copy_folder(legacy2, fresh, state, "alice", m, opts, rep);
    CHECK_MESSAGE(!ec, ec.message());
    CHECK(rep.copied == 3);
    CHECK(rep.reconciled == 0);
    snapshot legacy_now = co_await take_snapshot(alice, scratch);
    REQUIRE(legacy_now.messages.size() == 6);
    CHECK(state.folder("alice", scratch)->last_legacy_uid == legacy_now.messages.back().first);
    got = co_await fetch_new(fresh, target);
    std::multiset<std::string> expected;
    for (auto& [body, date] : msgs) expected.insert(sha256_hex(body));
    CHECK(hashes(got) == expected);
    sync::folder_copy_report again;
    ec = co_await sync::copy_folder(legacy2, fresh, state, "alice", m, opts, again);
    CHECK(!ec);
    CHECK(again.copied == 0);

    co_await legacy2.simple("EXAMINE INBOX", r);
    co_await alice.mailbox_command("DELETE", scratch, r);
    CHECK(r.status == status::ok);
    co_await delete_tree(fresh, prefix);
    co_await legacy2.logout();
    co_await fresh.logout();
    co_await alice.logout();
    legacy.close();  // its prefetch may have been cut off with the run
    co_return true;
  }, std::chrono::seconds(120));
  CHECK(done);
}

TEST_CASE("copy_folder: the user's own message on the new server above the checkpoint is left alone, not matched") {
  const auto& bed = testbed();
  const std::string prefix = unique_prefix();
  temp_db db(prefix);
  sync::state_store state(db.path);
  const std::string scratch = "INBOX." + prefix;
  const std::string target = prefix + "/scratch";
  const std::string date = "07-Jul-2007 07:07:07 +0000";
  // Same size and date: only the header fields tell them apart.
  const std::string first = "From: a@example.org\r\nSubject: first\r\n\r\nbody\r\n";
  const std::string late = "From: a@example.org\r\nSubject: late1\r\n\r\nbody\r\n";
  const std::string mine = "From: a@example.org\r\nSubject: mine1\r\n\r\nbody\r\n";
  sync::folder_mapping m;
  m.legacy_name = scratch;
  m.new_name = target;
  sync::copy_options opts;

  auto done = run_coro<bool>([&](asio::any_io_executor ex) -> awaitable<bool> {
    client legacy(ex), fresh(ex), alice(ex), bob(ex);
    auto e1 = co_await open_session(legacy, bed.legacy, "alice");
    auto e2 = co_await open_session(fresh, bed.fresh, "bob");
    auto e3 = co_await open_session(alice, bed.legacy, "alice");
    auto e4 = co_await open_session(bob, bed.fresh, "bob");
    REQUIRE_MESSAGE(!e1, e1.message());
    REQUIRE_MESSAGE(!e2, e2.message());
    REQUIRE_MESSAGE(!e3, e3.message());
    REQUIRE_MESSAGE(!e4, e4.message());
    command_result r;
    co_await alice.mailbox_command("CREATE", scratch, r);
    REQUIRE(r.status == status::ok);
    bool ok = co_await append_to(alice, scratch, first, date);
    REQUIRE(ok);
    sync::folder_copy_report rep1;
    auto ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep1);
    CHECK_MESSAGE(!ec, ec.message());
    CHECK(rep1.copied == 1);

    // The user's own mail lands on the new server; legacy gets one more.
    ok = co_await append_to(bob, target, mine, date);
    REQUIRE(ok);
    ok = co_await append_to(alice, scratch, late, date);
    REQUIRE(ok);
    sync::folder_copy_report rep2;
    ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep2);
    CHECK_MESSAGE(!ec, ec.message());
    CHECK(rep2.reconciled == 0);
    CHECK(rep2.copied == 1);
    CHECK(rep2.errors.empty());
    auto got = co_await fetch_new(fresh, target);
    REQUIRE(got.size() == 3);
    CHECK(got[0].sha256 == sha256_hex(first));
    CHECK(got[1].sha256 == sha256_hex(mine));
    CHECK(got[2].sha256 == sha256_hex(late));
    auto recs = state.messages("alice", scratch);
    REQUIRE(recs.size() == 2);
    CHECK(recs[0].new_uid == got[0].uid);
    CHECK(recs[1].new_uid == got[2].uid);
    auto cp = state.folder("alice", scratch);
    REQUIRE(cp);
    CHECK(cp->last_new_uid == got[2].uid);

    // Still there, still unmatched, on the next run too.
    sync::folder_copy_report rep3;
    ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep3);
    CHECK(!ec);
    CHECK(rep3.copied == 0);
    CHECK((co_await fetch_new(fresh, target)).size() == 3);

    co_await legacy.simple("EXAMINE INBOX", r);
    co_await alice.mailbox_command("DELETE", scratch, r);
    CHECK(r.status == status::ok);
    co_await delete_tree(fresh, prefix);
    co_await legacy.logout();
    co_await fresh.logout();
    co_await alice.logout();
    co_await bob.logout();
    co_return true;
  }, std::chrono::seconds(120));
  CHECK(done);
}

TEST_CASE("copy_folder: flags three-way: legacy changes carried over, the user's changes and deletions on the new server win") {
  const auto& bed = testbed();
  const std::string prefix = unique_prefix();
  temp_db db(prefix);
  sync::state_store state(db.path);
  const std::string scratch = "INBOX." + prefix;
  const std::string target = prefix + "/flags";
  const std::string date = "08-Aug-2008 08:08:08 +0000";
  std::vector<std::string> bodies;
  for (int i = 1; i <= 4; ++i)
    bodies.push_back("From: f@example.org\r\nSubject: flags " + std::to_string(i) +
                     "\r\n\r\nbody " + std::to_string(i) + "\r\n");
  sync::folder_mapping m;
  m.legacy_name = scratch;
  m.new_name = target;
  sync::copy_options opts;

  auto done = run_coro<bool>([&](asio::any_io_executor ex) -> awaitable<bool> {
    client legacy(ex), fresh(ex), alice(ex), bob(ex);
    auto e1 = co_await open_session(legacy, bed.legacy, "alice");
    auto e2 = co_await open_session(fresh, bed.fresh, "bob");
    auto e3 = co_await open_session(alice, bed.legacy, "alice");
    auto e4 = co_await open_session(bob, bed.fresh, "bob");
    REQUIRE_MESSAGE(!e1, e1.message());
    REQUIRE_MESSAGE(!e2, e2.message());
    REQUIRE_MESSAGE(!e3, e3.message());
    REQUIRE_MESSAGE(!e4, e4.message());
    command_result r;
    co_await alice.mailbox_command("CREATE", scratch, r);
    REQUIRE(r.status == status::ok);
    for (auto& b : bodies) {
      bool ok = co_await append_to(alice, scratch, b, date);
      REQUIRE(ok);
    }
    co_await alice.mailbox_command("SELECT", scratch, r);
    REQUIRE(r.status == status::ok);
    auto before = co_await take_snapshot(legacy, scratch);
    REQUIRE(before.messages.size() == 4);
    const std::uint32_t l1 = before.messages[0].first, l2 = before.messages[1].first,
                        l3 = before.messages[2].first, l4 = before.messages[3].first;
    co_await alice.simple("UID STORE " + std::to_string(l2) + " +FLAGS.SILENT (\\Flagged)", r);
    REQUIRE(r.status == status::ok);

    sync::folder_copy_report rep1;
    auto ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep1);
    REQUIRE_MESSAGE(!ec, ec.message());
    REQUIRE(rep1.copied == 4);
    CHECK(rep1.flags_updated == 0);
    auto first = co_await fetch_new(fresh, target);
    REQUIRE(first.size() == 4);
    const std::uint32_t n2 = first[1].uid, n3 = first[2].uid, n4 = first[3].uid;
    CHECK(first[1].flags == std::vector<std::string>{"\\Flagged"});

    // Legacy: (a) \Seen and $Label1 on message 1, (c) \Seen on message 4.
    co_await alice.simple("UID STORE " + std::to_string(l1) + " +FLAGS.SILENT (\\Seen $Label1)", r);
    REQUIRE(r.status == status::ok);
    co_await alice.simple("UID STORE " + std::to_string(l4) + " +FLAGS.SILENT (\\Seen)", r);
    REQUIRE(r.status == status::ok);
    // The user on the new server: (b) removes \Flagged from message 2, (c) adds
    // \Answered to message 4, (d) deletes message 3.
    co_await bob.mailbox_command("SELECT", target, r);
    REQUIRE(r.status == status::ok);
    co_await bob.simple("UID STORE " + std::to_string(n2) + " -FLAGS.SILENT (\\Flagged)", r);
    REQUIRE(r.status == status::ok);
    co_await bob.simple("UID STORE " + std::to_string(n4) + " +FLAGS.SILENT (\\Answered)", r);
    REQUIRE(r.status == status::ok);
    co_await bob.simple("UID STORE " + std::to_string(n3) + " +FLAGS.SILENT (\\Deleted)", r);
    REQUIRE(r.status == status::ok);
    co_await bob.simple("EXPUNGE", r);
    REQUIRE(r.status == status::ok);
    co_await bob.simple("SELECT INBOX", r);
    auto legacy_now = co_await take_snapshot(alice, scratch);

    sync::folder_copy_report rep2;
    ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep2);
    CHECK_MESSAGE(!ec, ec.message());
    CHECK(rep2.errors.empty());
    CHECK(rep2.copied == 0);          // (d) the deleted copy is not copied again
    CHECK(rep2.flags_updated == 2);   // messages 1 and 4
    auto got = co_await fetch_new(fresh, target);
    REQUIRE(got.size() == 3);
    CHECK(got[0].sha256 == sha256_hex(bodies[0]));
    CHECK(got[1].sha256 == sha256_hex(bodies[1]));
    CHECK(got[2].sha256 == sha256_hex(bodies[3]));
    CHECK(got[0].flags == std::vector<std::string>{"$Label1", "\\Seen"});   // (a)
    CHECK(got[1].flags.empty());                                              // (b)
    CHECK(got[2].flags == std::vector<std::string>{"\\Answered", "\\Seen"}); // (c)

    // (e) The store agrees with legacy now; message 3's record is left alone.
    auto recs = state.messages("alice", scratch);
    REQUIRE(recs.size() == 4);
    std::map<std::uint32_t, std::string> stored;
    for (auto& rec : recs) stored[rec.legacy_uid] = rec.flags;
    CHECK(stored[l1] == "$Label1 \\Seen");
    CHECK(stored[l2] == "\\Flagged");
    CHECK(stored[l3] == "");
    CHECK(stored[l4] == "\\Seen");

    // Legacy was only read by the run.
    CHECK(co_await take_snapshot(legacy, scratch) == legacy_now);

    // A third run changes nothing.
    sync::folder_copy_report rep3;
    ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, rep3);
    CHECK(!ec);
    CHECK(rep3.copied == 0);
    CHECK(rep3.flags_updated == 0);
    CHECK((co_await fetch_new(fresh, target)).size() == 3);

    co_await legacy.simple("EXAMINE INBOX", r);
    co_await alice.simple("SELECT INBOX", r);
    co_await alice.mailbox_command("DELETE", scratch, r);
    CHECK(r.status == status::ok);
    co_await delete_tree(fresh, prefix);
    co_await legacy.logout();
    co_await fresh.logout();
    co_await alice.logout();
    co_await bob.logout();
    co_return true;
  }, std::chrono::seconds(120));
  CHECK(done);
}

namespace {

using tcp = asio::ip::tcp;

// A scripted stand-in for the new server (Dovecot will not refuse what its legacy
// twin stored): CREATE says it exists, SELECT gives UIDVALIDITY 77, and each APPEND
// (its literals read and counted) is answered by `answer(literal count, index of the
// single APPEND among the single ones so far)`: "OK" gets an APPENDUID added.
struct fake_new_server {
  std::function<std::string(std::size_t, std::size_t)> answer;
  bool multiappend = true;
  std::size_t singles = 0, multis = 0;
  std::uint32_t next_uid = 1;

  awaitable<void> serve(tcp::socket& s) {
    asio::streambuf buf;
    boost::system::error_code ec;
    auto say = [&](std::string text) -> awaitable<void> {
      co_await asio::async_write(s, asio::buffer(text), asio::redirect_error(asio::use_awaitable, ec));
    };
    auto line = [&]() -> awaitable<std::string> {
      std::size_t n = co_await asio::async_read_until(s, buf, "\r\n",
                                                      asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return std::string();
      std::string l(asio::buffers_begin(buf.data()), asio::buffers_begin(buf.data()) + n);
      buf.consume(n);
      co_return l;
    };
    co_await say(std::string("* OK [CAPABILITY IMAP4rev1 LITERAL+ ") +
                 (multiappend ? "MULTIAPPEND " : "") + "UIDPLUS] fake new server\r\n");
    for (;;) {
      std::string l = co_await line();
      if (ec || l.empty()) co_return;
      std::string tag = l.substr(0, l.find(' '));
      std::string rest = l.substr(tag.size() + 1);
      if (rest.starts_with("CREATE")) {
        co_await say(tag + " NO [ALREADYEXISTS] Mailbox already exists\r\n");
      } else if (rest.starts_with("SELECT")) {
        co_await say("* 0 EXISTS\r\n* OK [UIDVALIDITY 77] Ok\r\n* OK [UIDNEXT " +
                     std::to_string(next_uid) + "] Ok\r\n" + tag + " OK [READ-WRITE] Selected\r\n");
      } else if (rest.starts_with("APPEND")) {
        std::size_t literals = 0;
        // Each line that ends in {n+} is followed by n bytes, then the command goes on.
        while (l.size() > 4 && l.ends_with("+}\r\n")) {
          std::size_t open = l.rfind('{');
          std::size_t n = std::stoull(l.substr(open + 1));
          if (buf.size() < n)
            co_await asio::async_read(s, buf, asio::transfer_exactly(n - buf.size()),
                                      asio::redirect_error(asio::use_awaitable, ec));
          if (ec) co_return;
          buf.consume(n);
          ++literals;
          l = co_await line();
          if (ec) co_return;
        }
        std::string a = answer(literals, literals == 1 ? singles : 0);
        if (literals == 1) ++singles;
        else ++multis;
        if (a == "OK") {
          std::string uids = std::to_string(next_uid);
          if (literals > 1) uids += ":" + std::to_string(next_uid + literals - 1);
          next_uid += static_cast<std::uint32_t>(literals);
          co_await say(tag + " OK [APPENDUID 77 " + uids + "] Append completed.\r\n");
        } else {
          co_await say(tag + " " + a + "\r\n");
        }
      } else if (rest.starts_with("LOGOUT")) {
        co_await say("* BYE bye\r\n" + tag + " OK Logout completed.\r\n");
        co_return;
      } else {
        co_await say(tag + " BAD unexpected\r\n");
      }
    }
  }
};

struct refusal_outcome {
  std::error_code ec;
  sync::folder_copy_report report;
  std::vector<std::uint32_t> legacy_uids;
  // The progress callbacks' sums: scanned - dropped == copied once it is done.
  std::uint64_t scanned = 0, copied = 0, dropped = 0;
};

refusal_outcome copy_against_fake(fake_new_server& server, sync::state_store& state,
                                  const std::string& legacy_name,
                                  std::uint64_t batch_bytes = 16u << 20) {
  const auto& bed = testbed();
  return run_coro<refusal_outcome>([&](asio::any_io_executor ex) -> awaitable<refusal_outcome> {
    refusal_outcome o;
    tcp::acceptor acceptor(ex, {asio::ip::make_address("127.0.0.1"), 0});
    auto port = acceptor.local_endpoint().port();
    asio::co_spawn(
        ex,
        [&acceptor, &server]() -> awaitable<void> {
          tcp::socket s = co_await acceptor.async_accept(asio::use_awaitable);
          co_await server.serve(s);
        },
        asio::detached);
    client legacy(ex), fresh(ex), probe(ex);
    if ((o.ec = co_await open_session(legacy, bed.legacy, "alice"))) co_return o;
    if ((o.ec = co_await open_session(probe, bed.legacy, "alice"))) co_return o;
    endpoint ep{"127.0.0.1", port, tls_mode::none};
    if ((o.ec = co_await fresh.connect(ep, nullptr))) co_return o;
    snapshot snap = co_await take_snapshot(probe, legacy_name);
    for (auto& [uid, flags] : snap.messages) o.legacy_uids.push_back(uid);
    sync::folder_mapping m;
    m.legacy_name = legacy_name;
    m.new_name = "Q1";
    sync::copy_options opts;
    opts.batch_bytes = batch_bytes;
    opts.on_scanned = [&o](std::uint64_t n, std::uint64_t) { o.scanned += n; };
    opts.on_copied = [&o](std::uint64_t n, std::uint64_t) { o.copied += n; };
    opts.on_dropped = [&o](std::uint64_t n, std::uint64_t) { o.dropped += n; };
    o.ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, o.report);
    co_await fresh.logout();
    co_await legacy.logout();
    co_await probe.logout();
    co_return o;
  });
}

}  // namespace

TEST_CASE("copy_folder: a refused batch is redone one by one, only the bad message fails and is accounted for, also when streamed") {
  const std::string folder = "INBOX.Projects.2024.Q1";  // three messages, read only
  for (int streamed = 0; streamed < 2; ++streamed)  // small batch_bytes: each message streamed
  for (std::size_t bad : {std::size_t{1}, std::size_t{2}}) {  // in the middle, and last
    CAPTURE(streamed);
    CAPTURE(bad);
    const std::string prefix = unique_prefix();
    temp_db db(prefix);
    sync::state_store state(db.path);
    fake_new_server server;
    server.answer = [bad](std::size_t literals, std::size_t single) -> std::string {
      if (literals > 1) return "NO [LIMIT] one of these is refused";
      return single == bad ? "NO [LIMIT] Mail too large" : "OK";
    };
    auto o = copy_against_fake(server, state, folder, streamed ? 100 : 16u << 20);
    CHECK_MESSAGE(!o.ec, o.ec.message());
    REQUIRE(o.legacy_uids.size() == 3);
    CHECK(server.multis == (streamed ? 0 : 1));
    CHECK(server.singles == 3);
    CHECK(o.report.copied == 2);
    CHECK(o.report.failed == 1);
    // Progress: 3 to copy, 2 copied, the refused one out of the total (100 % at the end).
    CHECK(o.scanned == 3);
    CHECK(o.copied == 2);
    CHECK(o.dropped == 1);
    REQUIRE(o.report.errors.size() == 1);
    CHECK(o.report.errors[0].find("legacy UID " + std::to_string(o.legacy_uids[bad])) !=
          std::string::npos);
    CHECK(o.report.errors[0].find("Mail too large") != std::string::npos);
    auto recs = state.messages("alice", folder);
    REQUIRE(recs.size() == 2);
    std::sort(recs.begin(), recs.end(), [](auto& a, auto& b) { return a.legacy_uid < b.legacy_uid; });
    std::vector<std::uint32_t> good;
    for (std::size_t i = 0; i < 3; ++i)
      if (i != bad) good.push_back(o.legacy_uids[i]);
    CHECK(recs[0].legacy_uid == good[0]);
    CHECK(recs[0].new_uid == 1);
    CHECK(recs[1].legacy_uid == good[1]);
    CHECK(recs[1].new_uid == 2);
    auto cp = state.folder("alice", folder);
    REQUIRE(cp);
    CHECK(cp->last_legacy_uid == o.legacy_uids[2]);  // the refused one is accounted for
    CHECK(cp->last_new_uid == 2);
    CHECK(cp->new_uidvalidity == 77);
  }
}

TEST_CASE("copy_folder: a refusal about the account ([OVERQUOTA]) stops the folder without advancing") {
  const std::string prefix = unique_prefix();
  temp_db db(prefix);
  sync::state_store state(db.path);
  const std::string folder = "INBOX.Projects.2024.Q1";
  fake_new_server server;
  server.answer = [](std::size_t, std::size_t) -> std::string {
    return "NO [OVERQUOTA] Quota exceeded";
  };
  auto o = copy_against_fake(server, state, folder);
  CHECK(o.ec == sync::copy_errc::append_refused_transient);
  CHECK(server.multis == 1);
  CHECK(server.singles == 0);
  CHECK(o.report.copied == 0);
  CHECK(o.report.failed == 0);
  CHECK(o.report.errors.size() == 1);
  CHECK(state.messages("alice", folder).empty());
  auto cp = state.folder("alice", folder);
  REQUIRE(cp);
  CHECK(cp->last_legacy_uid == 0);
}

namespace {

// The peak resident set since the last reset_peak_rss(), in KiB (Linux).
std::size_t peak_rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with("VmHWM:")) return std::stoul(line.substr(6));
  return 0;
}
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  return static_cast<bool>(out);
}

// sha256 of the streamed BODY[] of one FETCH, without holding it.
class sha_collector : public response_handler {
 public:
  sha_collector() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~sha_collector() override { EVP_MD_CTX_free(ctx_); }
  std::uint64_t size = 0;
  awaitable<void> on_literal_data(std::string_view chunk) override {
    EVP_DigestUpdate(ctx_, chunk.data(), chunk.size());
    size += chunk.size();
    co_return;
  }
  std::string hex() {
    unsigned char md[32];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, md, &len);
    return suction::test::to_hex(md, len);
  }

 private:
  EVP_MD_CTX* ctx_;
};

}  // namespace

TEST_CASE("copy_folder: a 50 MB message is streamed from FETCH into APPEND under 64 MiB RSS") {
  const auto& bed = testbed();
  const std::string prefix = unique_prefix();
  temp_db db(prefix);
  sync::state_store state(db.path);
  const std::string scratch = "INBOX." + prefix;
  const std::string target = prefix + "/big";
  std::string sha;
  std::uint64_t size = 0;

  struct outcome {
    std::error_code ec;
    sync::folder_copy_report report;
    std::size_t peak_kib = 0;
    bool reset = false;
    std::string new_sha;
    std::uint64_t new_size = 0;
  };
  auto o = run_coro<outcome>([&](asio::any_io_executor ex) -> awaitable<outcome> {
    outcome out;
    client legacy(ex), fresh(ex), alice(ex);
    auto e1 = co_await open_session(legacy, bed.legacy, "alice");
    auto e2 = co_await open_session(fresh, bed.fresh, "bob");
    auto e3 = co_await open_session(alice, bed.legacy, "alice");
    REQUIRE_MESSAGE(!e1, e1.message());
    REQUIRE_MESSAGE(!e2, e2.message());
    REQUIRE_MESSAGE(!e3, e3.message());
    command_result r;
    co_await alice.mailbox_command("CREATE", scratch, r);
    REQUIRE(r.status == status::ok);
    {
      std::string body = "From: big@example.org\r\nSubject: fifty megabytes\r\n\r\n";
      std::string line(74, 'x');
      line += "\r\n";
      for (std::size_t i = 0; body.size() < 50u * 1000 * 1000; ++i) {
        line[i % 74] = static_cast<char>('a' + i % 26);
        body += line;
      }
      sha = sha256_hex(body);
      size = body.size();
      string_source src(body);
      std::vector<append_item> items(1);
      items[0].flags = {"\\Seen"};
      items[0].internaldate = "05-May-2015 10:11:12 +0000";
      items[0].size = body.size();
      items[0].body = &src;
      command_result ar;
      auto ec = co_await alice.append(scratch, items, ar);
      REQUIRE_MESSAGE(!ec, ec.message());
      REQUIRE(ar.status == status::ok);
    }  // the body is freed here

    out.reset = reset_peak_rss();
    sync::folder_mapping m;
    m.legacy_name = scratch;
    m.new_name = target;
    sync::copy_options opts;  // defaults: 16 MiB batches
    out.ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, out.report);
    out.peak_kib = peak_rss_kib();

    sha_collector got;
    co_await fresh.mailbox_command("EXAMINE", target, r);
    co_await fresh.simple("UID FETCH 1:* (UID BODY.PEEK[])", r, &got);
    out.new_sha = got.hex();
    out.new_size = got.size;

    co_await legacy.simple("EXAMINE INBOX", r);
    co_await alice.mailbox_command("DELETE", scratch, r);
    CHECK(r.status == status::ok);
    co_await delete_tree(fresh, prefix);
    co_await legacy.logout();
    co_await fresh.logout();
    co_await alice.logout();
    co_return out;
  }, std::chrono::seconds(180));
  CHECK_MESSAGE(!o.ec, o.ec.message());
  CHECK(o.report.copied == 1);
  CHECK(o.report.bytes == size);
  CHECK(o.report.errors.empty());
  CHECK(o.new_size == size);
  CHECK(o.new_sha == sha);
  REQUIRE_MESSAGE(o.reset, "cannot reset the peak RSS (/proc/self/clear_refs)");
  MESSAGE("peak RSS during the copy: " << o.peak_kib << " KiB");
  CHECK(o.peak_kib > 0);
  CHECK(o.peak_kib < 64 * 1024);  // issue 4's bound
  // Buffering the 50 MB whole still peaks at about 62 MiB in this small process,
  // under the bound: streaming must hold far less than the message to pass this.
  CHECK(o.peak_kib < 25 * 1024);
}

TEST_CASE("copy_folder: without MULTIAPPEND every message is its own APPEND and batch") {
  const std::string prefix = unique_prefix();
  temp_db db(prefix);
  sync::state_store state(db.path);
  const std::string folder = "INBOX.Projects.2024.Q1";
  fake_new_server server;
  server.multiappend = false;
  server.answer = [](std::size_t literals, std::size_t) -> std::string {
    return literals == 1 ? "OK" : "BAD MULTIAPPEND was not offered";
  };
  auto o = copy_against_fake(server, state, folder);
  CHECK_MESSAGE(!o.ec, o.ec.message());
  CHECK(server.multis == 0);
  CHECK(server.singles == 3);
  CHECK(o.report.copied == 3);
  CHECK(o.report.errors.empty());
  auto recs = state.messages("alice", folder);
  REQUIRE(recs.size() == 3);
  std::sort(recs.begin(), recs.end(), [](auto& a, auto& b) { return a.legacy_uid < b.legacy_uid; });
  for (std::size_t i = 0; i < 3; ++i) CHECK(recs[i].new_uid == i + 1);
}

namespace {

// A scripted legacy server with one folder holding one 200,000-byte message,
// which hangs up halfway through that message's BODY[] literal.
awaitable<void> legacy_that_dies_mid_literal(tcp::socket& s) {
  asio::streambuf buf;
  boost::system::error_code ec;
  auto say = [&](std::string text) -> awaitable<void> {
    co_await asio::async_write(s, asio::buffer(text), asio::redirect_error(asio::use_awaitable, ec));
  };
  co_await say("* OK [CAPABILITY IMAP4rev1 LITERAL+] fake legacy\r\n");
  for (;;) {
    std::size_t n = co_await asio::async_read_until(s, buf, "\r\n",
                                                    asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    std::string l(asio::buffers_begin(buf.data()), asio::buffers_begin(buf.data()) + n);
    buf.consume(n);
    std::string tag = l.substr(0, l.find(' '));
    if (l.find(" EXAMINE ") != std::string::npos) {
      co_await say("* 1 EXISTS\r\n* OK [UIDVALIDITY 5] Ok\r\n* OK [UIDNEXT 2] Ok\r\n" + tag +
                   " OK [READ-ONLY] Examined\r\n");
    } else if (l.find("RFC822.SIZE") != std::string::npos) {
      co_await say("* 1 FETCH (UID 1 RFC822.SIZE 200000 FLAGS (\\Seen) INTERNALDATE \"01-Jan-2020 00:00:00 +0000\")\r\n" +
                   tag + " OK Fetch completed.\r\n");
    } else if (l.find("BODY.PEEK[]") != std::string::npos) {
      co_await say("* 1 FETCH (UID 1 BODY[] {200000}\r\nSubject: cut\r\n\r\n" + std::string(100000, 'x'));
      s.close();
      co_return;
    } else {
      co_await say(tag + " OK done\r\n");
    }
  }
}

}  // namespace

TEST_CASE("copy_folder: legacy dying in the middle of a streamed message leaves nothing half-copied") {
  const auto& bed = testbed();
  const std::string prefix = unique_prefix();
  temp_db db(prefix);
  sync::state_store state(db.path);
  const std::string target = prefix + "/cut";
  struct outcome {
    std::error_code ec, fresh_after;
    sync::folder_copy_report report;
    std::size_t new_count = 99;
  };
  auto o = run_coro<outcome>([&](asio::any_io_executor ex) -> awaitable<outcome> {
    outcome out;
    tcp::acceptor acceptor(ex, {asio::ip::make_address("127.0.0.1"), 0});
    auto port = acceptor.local_endpoint().port();
    asio::co_spawn(
        ex,
        [&acceptor]() -> awaitable<void> {
          tcp::socket s = co_await acceptor.async_accept(asio::use_awaitable);
          co_await legacy_that_dies_mid_literal(s);
        },
        asio::detached);
    client legacy(ex), fresh(ex), bob(ex);
    endpoint ep{"127.0.0.1", port, tls_mode::none};
    auto e1 = co_await legacy.connect(ep, nullptr);
    auto e2 = co_await open_session(fresh, bed.fresh, "bob");
    auto e3 = co_await open_session(bob, bed.fresh, "bob");
    REQUIRE_MESSAGE(!e1, e1.message());
    REQUIRE_MESSAGE(!e2, e2.message());
    REQUIRE_MESSAGE(!e3, e3.message());
    sync::folder_mapping m;
    m.legacy_name = "INBOX.Cut";
    m.new_name = target;
    sync::copy_options opts;
    opts.batch_bytes = 1000;  // the message is streamed
    out.ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, out.report);
    command_result r;
    out.fresh_after = co_await fresh.simple("NOOP", r);
    auto msgs = co_await fetch_new(bob, target);
    out.new_count = msgs.size();
    co_await delete_tree(bob, prefix);
    co_await bob.logout();
    co_return out;
  });
  CHECK_MESSAGE(o.ec, "legacy error: " << o.ec.message());  // the legacy connection's error
  MESSAGE("legacy: " << o.ec.message() << "; new afterwards: " << o.fresh_after.message());
  CHECK(o.fresh_after);  // the new connection was given up: its literal was cut short
  CHECK(o.report.copied == 0);
  CHECK(o.new_count == 0);
  auto cp = state.folder("alice", "INBOX.Cut");
  REQUIRE(cp);
  CHECK(cp->last_legacy_uid == 0);
  CHECK(state.messages("alice", "INBOX.Cut").empty());
}

namespace {

// A scripted legacy server with two small messages (UIDs 1 and 2) whose
// second body FETCH is refused.
awaitable<void> legacy_that_refuses_second_fetch(tcp::socket& s) {
  asio::streambuf buf;
  boost::system::error_code ec;
  auto say = [&](std::string text) -> awaitable<void> {
    co_await asio::async_write(s, asio::buffer(text), asio::redirect_error(asio::use_awaitable, ec));
  };
  const std::string body = "Subject: one\r\n\r\nfirst\r\n";
  co_await say("* OK [CAPABILITY IMAP4rev1 LITERAL+] fake legacy\r\n");
  for (;;) {
    std::size_t n = co_await asio::async_read_until(s, buf, "\r\n",
                                                    asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;
    std::string l(asio::buffers_begin(buf.data()), asio::buffers_begin(buf.data()) + n);
    buf.consume(n);
    std::string tag = l.substr(0, l.find(' '));
    if (l.find(" EXAMINE ") != std::string::npos) {
      co_await say("* 2 EXISTS\r\n* OK [UIDVALIDITY 5] Ok\r\n* OK [UIDNEXT 3] Ok\r\n" + tag +
                   " OK [READ-ONLY] Examined\r\n");
    } else if (l.find("RFC822.SIZE") != std::string::npos) {
      co_await say("* 1 FETCH (UID 1 RFC822.SIZE " + std::to_string(body.size()) +
                   " FLAGS (\\Seen) INTERNALDATE \"01-Jan-2020 00:00:00 +0000\")\r\n"
                   "* 2 FETCH (UID 2 RFC822.SIZE 30 FLAGS () INTERNALDATE \"02-Jan-2020 00:00:00 +0000\")\r\n" +
                   tag + " OK Fetch completed.\r\n");
    } else if (l.find("UID FETCH 1 ") != std::string::npos) {
      co_await say("* 1 FETCH (UID 1 FLAGS (\\Seen) INTERNALDATE \"01-Jan-2020 00:00:00 +0000\" BODY[] {" +
                   std::to_string(body.size()) + "}\r\n" + body + ")\r\n" + tag + " OK Fetch completed.\r\n");
    } else if (l.find("UID FETCH 2 ") != std::string::npos) {
      co_await say(tag + " NO [SERVERBUG] Internal error occurred.\r\n");
    } else {
      co_await say(tag + " OK done\r\n");
    }
  }
}

}  // namespace

TEST_CASE("copy_folder: a batch FETCH refused while the batch before is appended stops after that batch") {
  const auto& bed = testbed();
  const std::string prefix = unique_prefix();
  temp_db db(prefix);
  sync::state_store state(db.path);
  const std::string target = prefix + "/pipe";
  struct outcome {
    std::error_code ec;
    sync::folder_copy_report report;
    std::size_t new_count = 99;
  };
  auto o = run_coro<outcome>([&](asio::any_io_executor ex) -> awaitable<outcome> {
    outcome out;
    tcp::acceptor acceptor(ex, {asio::ip::make_address("127.0.0.1"), 0});
    auto port = acceptor.local_endpoint().port();
    asio::co_spawn(
        ex,
        [&acceptor]() -> awaitable<void> {
          tcp::socket s = co_await acceptor.async_accept(asio::use_awaitable);
          co_await legacy_that_refuses_second_fetch(s);
        },
        asio::detached);
    client legacy(ex), fresh(ex);
    endpoint ep{"127.0.0.1", port, tls_mode::none};
    auto e1 = co_await legacy.connect(ep, nullptr);
    auto e2 = co_await open_session(fresh, bed.fresh, "bob");
    REQUIRE_MESSAGE(!e1, e1.message());
    REQUIRE_MESSAGE(!e2, e2.message());
    sync::folder_mapping m;
    m.legacy_name = "INBOX.Pipe";
    m.new_name = target;
    sync::copy_options opts;
    opts.batch_messages = 1;  // two batches: the second is fetched during the first's APPEND
    out.ec = co_await sync::copy_folder(legacy, fresh, state, "alice", m, opts, out.report);
    auto msgs = co_await fetch_new(fresh, target);
    out.new_count = msgs.size();
    command_result r;
    auto noop = co_await legacy.simple("NOOP", r);  // legacy is idle and usable again
    CHECK_MESSAGE(!noop, noop.message());
    co_await delete_tree(fresh, prefix);
    co_await fresh.logout();
    co_return out;
  });
  CHECK(o.ec == sync::copy_errc::fetch_failed);
  CHECK(o.report.copied == 1);
  REQUIRE(o.report.errors.size() == 1);
  CHECK(o.report.errors[0].find("Internal error") != std::string::npos);
  CHECK(o.new_count == 1);
  auto cp = state.folder("alice", "INBOX.Pipe");
  REQUIRE(cp);
  CHECK(cp->last_legacy_uid == 1);
  CHECK(state.messages("alice", "INBOX.Pipe").size() == 1);
}
