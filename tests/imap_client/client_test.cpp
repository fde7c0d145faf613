// imap/client against the real Dovecot servers of the test bed.
#include <doctest/doctest.h>
#include <openssl/evp.h>

#include <boost/asio/ssl/context.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <algorithm>
#include <map>
#include <set>

#include "../support/run_coro.hpp"
#include "../support/digest.hpp"
#include "../support/testbed.hpp"
#include "imap/client/client.hpp"
#include "imap/date.hpp"
#include "imap/response.hpp"
#include "imap/serialize.hpp"

using namespace suction;
using namespace suction::imap;
using suction::test::run_coro;
using suction::test::sha256_hex;
using suction::test::testbed;
namespace asio = boost::asio;

namespace {

std::shared_ptr<asio::ssl::context> bed_tls() {
  std::error_code ec;
  auto ctx = make_client_tls_context({testbed().ca_file, true}, ec);
  REQUIRE_MESSAGE(!ec, ec.message());
  return ctx;
}

endpoint at(const test::server_info& s, tls_mode mode) {
  return {s.host, mode == tls_mode::implicit ? s.imaps_port : s.imap_port, mode};
}

// What a connect + login attempt reports.
struct login_outcome {
  std::error_code connect, login;
  bool tls = false;
  capability_set before, after;
};

login_outcome try_login(const test::server_info& server, tls_mode mode, std::string user,
                        std::string password, bool plain_mech = false) {
  return run_coro<login_outcome>([&](asio::any_io_executor ex) -> awaitable<login_outcome> {
    login_outcome o;
    client c(ex);
    o.connect = co_await c.connect(at(server, mode), bed_tls());
    if (o.connect) co_return o;
    o.tls = c.tls_active();
    o.before = c.capabilities();
    // Not "?:" with co_await in both arms: GCC 12 evaluates both.
    if (plain_mech) o.login = co_await c.authenticate_plain(user, password);
    else o.login = co_await c.login(user, password);
    o.after = c.capabilities();
    co_await c.logout();
    co_return o;
  });
}

}  // namespace

TEST_CASE("connect and log in: plain, STARTTLS and implicit TLS, both servers") {
  const auto& bed = testbed();
  for (const auto* server : {&bed.legacy, &bed.fresh}) {
    for (tls_mode mode : {tls_mode::none, tls_mode::starttls, tls_mode::implicit}) {
      CAPTURE(server->imap_port);
      CAPTURE(static_cast<int>(mode));
      auto o = try_login(*server, mode, "alice", bed.users.at("alice"));
      REQUIRE_MESSAGE(!o.connect, o.connect.message());
      CHECK_MESSAGE(!o.login, o.login.message());
      CHECK(o.tls == (mode != tls_mode::none));
      CHECK(o.before.has("IMAP4rev1"));
      CHECK(o.before.has_auth("PLAIN"));
      if (mode == tls_mode::none) CHECK(o.before.has("STARTTLS"));
      // post-login capabilities come from the OK (or a CAPABILITY command)
      CHECK(o.after.has("IMAP4rev1"));
      CHECK_FALSE(o.after.has_auth("PLAIN"));
    }
  }
}

TEST_CASE("a wrong password is auth_failed and the connection stays usable") {
  const auto& bed = testbed();
  auto r = run_coro<std::pair<std::error_code, std::error_code>>(
      [&](asio::any_io_executor ex) -> awaitable<std::pair<std::error_code, std::error_code>> {
        client c(ex);
        auto ec = co_await c.connect(at(bed.fresh, tls_mode::none), nullptr);
        if (ec) co_return std::pair{ec, ec};
        auto wrong = co_await c.login("alice", "not-the-password");
        auto right = co_await c.login("alice", bed.users.at("alice"));
        co_await c.logout();
        co_return std::pair{wrong, right};
      });
  CHECK(r.first == errc::auth_failed);
  CHECK_MESSAGE(!r.second, r.second.message());
}

TEST_CASE("passwords with quotes, braces, backslashes and 8-bit characters") {
  const auto& bed = testbed();
  for (const char* user : {"bob", "carol"}) {
    CAPTURE(user);
    for (bool plain_mech : {false, true}) {
      auto o = try_login(bed.legacy, tls_mode::starttls, user, bed.users.at(user), plain_mech);
      REQUIRE(!o.connect);
      CHECK_MESSAGE(!o.login, o.login.message());
    }
  }
  // The synchronizing-literal path, too: carol's 8-bit password must be a literal.
  auto ec = run_coro<std::error_code>([&](asio::any_io_executor ex) -> awaitable<std::error_code> {
    client_options opts;
    opts.use_literal_plus = false;
    client c(ex, opts);
    if (auto e = co_await c.connect(at(bed.legacy, tls_mode::none), nullptr)) co_return e;
    auto e = co_await c.login("carol", bed.users.at("carol"));
    co_await c.logout();
    co_return e;
  });
  CHECK_MESSAGE(!ec, ec.message());
}

TEST_CASE("certificates are verified by default") {
  const auto& bed = testbed();
  auto ec = run_coro<std::error_code>([&](asio::any_io_executor ex) -> awaitable<std::error_code> {
    std::error_code e;
    auto system_store = make_client_tls_context({"", true}, e);  // does not know the bed's CA
    if (e) co_return e;
    client c(ex);
    co_return co_await c.connect(at(bed.fresh, tls_mode::implicit), system_store);
  });
  CHECK(ec);  // self-signed certificate rejected
  std::error_code ctx_error;
  auto missing = make_client_tls_context({"/nonexistent/ca.pem", true}, ctx_error);
  CHECK(ctx_error);
  CHECK(missing == nullptr);
}

TEST_CASE("namespaces: legacy is Courier-shaped, new is Dovecot's default") {
  const auto& bed = testbed();
  auto ns = run_coro<std::vector<namespace_data>>(
      [&](asio::any_io_executor ex) -> awaitable<std::vector<namespace_data>> {
        std::vector<namespace_data> out;
        for (const auto* server : {&bed.legacy, &bed.fresh}) {
          client c(ex);
          if (co_await c.connect(at(*server, tls_mode::none), nullptr)) co_return out;
          if (co_await c.login("alice", bed.users.at("alice"))) co_return out;
          command_result r;
          if (co_await c.simple("NAMESPACE", r)) co_return out;
          for (auto& u : r.untagged)
            if (auto n = decode_namespace(u)) out.push_back(*n);
          co_await c.logout();
        }
        co_return out;
      });
  REQUIRE(ns.size() == 2);
  REQUIRE(ns[0].personal.size() == 1);
  CHECK(ns[0].personal[0].prefix == "INBOX.");
  CHECK(ns[0].personal[0].separator == '.');
  REQUIRE(ns[1].personal.size() == 1);
  CHECK(ns[1].personal[0].prefix == "");
  CHECK(ns[1].personal[0].separator == '/');
}

namespace {

// Collects streamed BODY[] literals of one FETCH, keyed by sequence number.
class body_collector : public response_handler {
 public:
  std::map<std::uint32_t, std::string> bodies;     // seq -> bytes
  std::map<std::uint32_t, std::uint32_t> uids;     // seq -> uid
  std::map<std::uint32_t, std::uint64_t> sizes;    // seq -> RFC822.SIZE
  std::size_t streamed = 0;
  std::uint32_t current = 0;
  awaitable<void> on_literal_begin(const literal_info& info) override {
    current = info.message_number.value_or(0);
    bodies[current].clear();
    ++streamed;
    co_return;
  }
  awaitable<void> on_literal_data(std::string_view chunk) override {
    bodies[current].append(chunk);
    co_return;
  }
  awaitable<void> on_response(response& r) override {
    auto f = decode_fetch(r);
    if (!f) co_return;
    if (f->uid) uids[f->seq] = *f->uid;
    if (f->rfc822_size) sizes[f->seq] = *f->rfc822_size;
    if (auto* s = f->section("BODY[]"); s && !s->content->streamed)
      bodies[f->seq] = s->content->text;
    co_return;
  }
};

}  // namespace

TEST_CASE("FETCH streams every legacy INBOX message with exact bytes (read-only)") {
  const auto& bed = testbed();
  std::ifstream in(bed.dir + "/corpus.json");
  REQUIRE(in);
  auto corpus = nlohmann::json::parse(in);
  std::multiset<std::string> expected;
  for (auto& [folder, msgs] : corpus.at("folders").items())
    if (folder == "INBOX")
      for (auto& m : msgs.at("messages")) expected.insert(m.at("sha256").get<std::string>());
  REQUIRE(!expected.empty());

  body_collector got;
  auto ec = run_coro<std::error_code>([&](asio::any_io_executor ex) -> awaitable<std::error_code> {
    client_options opts;
    opts.limits.inline_literal_max = 4096;  // most bodies stream, small ones stay inline
    opts.read_buffer_size = 16 * 1024;
    client c(ex, opts);
    if (auto e = co_await c.connect(at(bed.legacy, tls_mode::starttls), bed_tls())) co_return e;
    if (auto e = co_await c.login("alice", bed.users.at("alice"))) co_return e;
    command_result r;
    if (auto e = co_await c.simple("EXAMINE INBOX", r)) co_return e;
    if (auto e = status_error(r)) co_return e;
    if (auto e = co_await c.simple("UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[])", r, &got)) co_return e;
    if (auto e = status_error(r)) co_return e;
    co_await c.logout();
    co_return std::error_code{};
  });
  REQUIRE_MESSAGE(!ec, ec.message());
  std::multiset<std::string> actual;
  for (auto& [seq, body] : got.bodies) {
    CHECK(body.size() == got.sizes[seq]);
    actual.insert(sha256_hex(body));
  }
  CHECK(actual == expected);
  CHECK(got.streamed > 0);
}

TEST_CASE("pipelined commands complete in any order they are waited for") {
  const auto& bed = testbed();
  auto statuses = run_coro<std::vector<std::string>>(
      [&](asio::any_io_executor ex) -> awaitable<std::vector<std::string>> {
        std::vector<std::string> out;
        client c(ex);
        if (co_await c.connect(at(bed.fresh, tls_mode::none), nullptr)) co_return out;
        if (co_await c.login("alice", bed.users.at("alice"))) co_return out;
        std::vector<std::string> tags;
        for (const char* box : {"INBOX", "Sent", "Trash"}) {
          std::string tag = c.next_tag();
          command_builder b(tag, "STATUS", true);
          b.mailbox(box);
          b.atom("(MESSAGES UIDNEXT UIDVALIDITY)");
          if (co_await c.send(tag, std::move(b).finish())) co_return out;
          tags.push_back(tag);
        }
        for (auto it = tags.rbegin(); it != tags.rend(); ++it) {
          command_result r;
          if (co_await c.wait(*it, r)) co_return out;
          for (auto& u : r.untagged)
            if (auto s = decode_status(u)) out.push_back(s->mailbox);
          out.push_back(r.status == status::ok ? "ok" : "fail");
        }
        co_await c.logout();
        co_return out;
      });
  // Untagged STATUS data goes to the oldest command in flight when the server
  // sends it: all three arrive with the first command that is waited for or
  // earlier, and every command completes OK.
  CHECK(std::count(statuses.begin(), statuses.end(), "ok") == 3);
  CHECK(std::count(statuses.begin(), statuses.end(), "INBOX") == 1);
  CHECK(std::count(statuses.begin(), statuses.end(), "Sent") == 1);
  CHECK(std::count(statuses.begin(), statuses.end(), "Trash") == 1);
}

TEST_CASE("a command held for the next write goes out with it: ID before LOGIN, literals too") {
  const auto& bed = testbed();
  // carol's password is 8-bit: LOGIN sends it as a literal (a continuation
  // awaited behind the held ID), with and without LITERAL+.
  for (bool literal_plus : {true, false}) {
    for (const char* user : {"alice", "carol"}) {
      CAPTURE(user);
      CAPTURE(literal_plus);
      auto answers = run_coro<std::vector<std::string>>(
          [&](asio::any_io_executor ex) -> awaitable<std::vector<std::string>> {
            std::vector<std::string> out;
            client_options o;
            o.use_literal_plus = literal_plus;
            client c(ex, o);
            if (co_await c.connect(at(bed.fresh, tls_mode::none), nullptr)) co_return out;
            const std::string id_tag = c.next_tag();
            c.send_with_next(id_tag, id_tag + " ID (\"name\" \"suction-test\")\r\n");
            command_result login;
            auto ec = co_await c.login(user, bed.users.at(user), &login);
            out.push_back(ec ? ec.message() : "login ok");
            command_result id;
            auto id_ec = co_await c.wait(id_tag, id);
            out.push_back(id_ec ? id_ec.message() : std::string(id.status == status::ok ? "id ok" : "id not ok"));
            bool named = false;
            for (auto& u : id.untagged) named = named || u.keyword == "ID";
            out.push_back(named ? "server named" : "no ID data");
            co_await c.logout();
            co_return out;
          });
      CHECK(answers == std::vector<std::string>{"login ok", "id ok", "server named"});
    }
  }
}

TEST_CASE("APPEND and MULTIAPPEND stream bodies, with LITERAL+ and with synchronizing literals") {
  const auto& bed = testbed();
  for (bool literal_plus : {true, false}) {
    CAPTURE(literal_plus);
    std::string folder = literal_plus ? "AppendPlus" : "AppendSync";
    std::vector<std::string> bodies = {
        "From: a@example.org\r\nSubject: one\r\n\r\nfirst\r\n",
        "From: b@example.org\r\nSubject: =?utf-8?q?zw=C3=B6lf?=\r\n\r\n" + std::string(200000, 'x') + "\r\n",
        "Subject: caf\xc3\xa9 (raw 8-bit)\r\n\r\nthird\r\n",
    };
    struct outcome {
      std::error_code ec;
      std::string uids;
      std::vector<std::string> fetched;
      std::vector<std::string> dates;
      std::vector<std::vector<std::string>> flags;
    };
    auto o = run_coro<outcome>([&](asio::any_io_executor ex) -> awaitable<outcome> {
      outcome out;
      client_options opts;
      opts.use_literal_plus = literal_plus;
      client c(ex, opts);
      if ((out.ec = co_await c.connect(at(bed.fresh, tls_mode::none), nullptr))) co_return out;
      if ((out.ec = co_await c.login("bob", bed.users.at("bob")))) co_return out;
      command_result r;
      std::string create = "CREATE " + folder;
      co_await c.simple(create, r);  // may exist from an earlier run: fine
      std::vector<string_source> sources;
      for (auto& b : bodies) sources.emplace_back(b);
      std::vector<append_item> items;
      items.push_back({{"\\Seen", "$Forwarded", "\\Recent"}, "01-Jan-1998 10:00:00 +0100",
                       bodies[0].size(), &sources[0]});
      items.push_back({{}, "24-Dec-2005 23:59:59 -0500", bodies[1].size(), &sources[1]});
      items.push_back({{"\\Flagged"}, "", bodies[2].size(), &sources[2]});
      if ((out.ec = co_await c.append(folder, items, r))) co_return out;
      if ((out.ec = status_error(r))) co_return out;
      if (r.code)
        if (auto a = decode_appenduid(*r.code)) out.uids = a->uids;
      if ((out.ec = co_await c.simple("SELECT " + folder, r))) co_return out;
      std::string fetch = "UID FETCH " + out.uids + " (FLAGS INTERNALDATE BODY.PEEK[])";
      if ((out.ec = co_await c.simple(fetch, r))) co_return out;
      for (auto& u : r.untagged) {
        auto f = decode_fetch(u);
        if (!f) continue;
        out.fetched.push_back(f->section("BODY[]")->content->text);
        out.dates.push_back(f->internaldate.value_or(""));
        out.flags.push_back(f->flags.value_or(std::vector<std::string>{}));
      }
      co_await c.simple("CLOSE", r);
      co_await c.simple("DELETE " + folder, r);
      co_await c.logout();
      co_return out;
    });
    REQUIRE_MESSAGE(!o.ec, o.ec.message());
    CHECK(!o.uids.empty());
    CHECK(o.uids.find(':') != std::string::npos);  // one APPENDUID set for the batch
    REQUIRE(o.fetched.size() == 3);
    CHECK(o.fetched == bodies);
    // sdbox keeps no zone: the same instant comes back in the server's zone.
    auto instant = [](const std::string& d) { return parse_date_time(d).value().epoch_seconds; };
    CHECK(instant(o.dates[0]) == instant("01-Jan-1998 10:00:00 +0100"));
    CHECK(instant(o.dates[1]) == instant("24-Dec-2005 23:59:59 -0500"));
    CHECK(std::count(o.flags[0].begin(), o.flags[0].end(), "$Forwarded") == 1);
    CHECK(std::count(o.flags[0].begin(), o.flags[0].end(), "\\Seen") == 1);
    CHECK(std::count(o.flags[2].begin(), o.flags[2].end(), "\\Flagged") == 1);
  }
}
