// [users], [legacy_servers.NAME] and the map file (config/users.hpp): who is
// who during a cutover, without a server.
#include "config/users.hpp"

#include <doctest/doctest.h>

#include "config/config.hpp"

namespace cfg = suction::config;

namespace {

const std::string base = R"([listen]
imaps = ""
[new]
host = "new.example"
[legacy]
host = "old.example"
[legacy_servers.old2]
host = "old2.example"
max_connections = 3
)";

cfg::config parse(const std::string& extra) { return cfg::parse(base + extra, "test.toml"); }

std::string error_of(const std::string& extra) {
  try {
    parse(extra);
  } catch (const cfg::config_error& e) {
    return e.what();
  }
  return "";
}

std::string map_error(const cfg::config& c, const std::string& text) {
  try {
    cfg::parse_map(text, "map.csv", c);
  } catch (const cfg::config_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("templates take Dovecot's variables") {
  CHECK(cfg::expand_template("%u", "Alice@Example.org") == "Alice@Example.org");
  CHECK(cfg::expand_template("%n", "Alice@Example.org") == "Alice");
  CHECK(cfg::expand_template("%d", "Alice@Example.org") == "Example.org");
  CHECK(cfg::expand_template("%Lu", "Alice@Example.org") == "alice@example.org");
  CHECK(cfg::expand_template("%Ln@new.example", "Alice@Example.org") == "alice@new.example");
  CHECK(cfg::expand_template("%u@example.org", "alice") == "alice@example.org");
  CHECK(cfg::expand_template("%d", "alice") == "");
  CHECK(cfg::expand_template("100%%-%n", "bob@x") == "100%-bob");
  CHECK(cfg::template_problem("%u@example.org").empty());
  CHECK(cfg::template_problem("%Ld").empty());
  CHECK(cfg::template_problem("%x") ==
        "unknown variable \"%x\" at 1 (known: %u %n %d, %Lu %Ln %Ld lowercase, %% a %)");
  CHECK(cfg::template_problem("a%").find("unknown variable \"%\" at 2") == 0);
  CHECK(cfg::template_problem("%Lz").find("unknown variable \"%Lz\"") == 0);
  CHECK(cfg::template_problem("") == "must not be empty");
}

TEST_CASE("[users] and [legacy_servers] read and checked") {
  auto c = parse(R"([users]
legacy = "%n"
new = "%Ln@example.org"
map_file = "/etc/suction/map.csv"
legacy_by_domain = {"Example.NET" = "old2", "example.org" = "legacy"}
master_separator = "%"
)");
  CHECK(c.users.legacy == "%n");
  CHECK(c.users.fresh == "%Ln@example.org");
  CHECK(c.users.map_file == "/etc/suction/map.csv");
  REQUIRE(c.users.legacy_by_domain.size() == 2);
  CHECK(c.users.legacy_by_domain[0].second == "old2");
  CHECK(c.users.master_separator == "%");
  REQUIRE(c.legacy_servers.size() == 1);
  CHECK(c.legacy_servers[0].name == "old2");
  CHECK(c.legacy_servers[0].server.max_connections == 3);
  CHECK(cfg::find_legacy(c, "old2")->host == "old2.example");
  CHECK(cfg::find_legacy(c, "")->host == "old.example");
  CHECK(cfg::find_legacy(c, "old3") == nullptr);

  CHECK(error_of("[users]\nnew = \"%q\"\n") ==
        "test.toml:11: [users] new: unknown variable \"%q\" at 1 (known: %u %n %d, %Lu %Ln %Ld "
        "lowercase, %% a %)");
  CHECK(error_of("[users]\nlegacy_by_domain = {\"example.org\" = \"old9\"}\n") ==
        "test.toml:11: [users] legacy_by_domain.example.org: no legacy server \"old9\" "
        "(\"legacy\" or the NAME of a [legacy_servers.NAME])");
  CHECK(error_of("[users]\nlegacy_by_domain = {\"a@b\" = \"old2\"}\n") ==
        "test.toml:11: [users] legacy_by_domain.a@b: a domain without '@' (got \"a@b\")");
  CHECK(error_of("[legacy_servers.old3]\nport = 143\n") ==
        "test.toml:10: [legacy_servers.old3] host: required");
  CHECK(error_of("[legacy_servers.old3]\nhost = \"x\"\nmax_conections = 2\n") ==
        "test.toml:12: [legacy_servers.old3] max_conections: unknown key (did you mean "
        "\"max_connections\"?)");
  CHECK(error_of("[legacy_servers.legacy]\nhost = \"x\"\n").find(
            "not \"legacy\" (the default) nor \"new\"") != std::string::npos);
  CHECK(error_of("[legacy_servers.old3]\nhost = \"x\"\nmaster_user = \"m\"\n") ==
        "test.toml:12: [legacy_servers.old3] master_password_file: required with master_user");
}

TEST_CASE("the map file: rows, header, and every bad row named by line") {
  const auto c = parse("");
  auto rows = cfg::parse_map(
      "login,legacy_user,new_user,legacy_server\n# comment\n\nAlice,alice,alice@example.org\r\n"
      "bob,bob,bob@example.org,old2\n",
      "map.csv", c);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0] == cfg::map_row{"alice", "alice", "alice@example.org", "", 4});
  CHECK(rows[1].legacy_server == "old2");
  CHECK(map_error(c, "a,b\n") ==
        "map.csv:1: [users] map_file: expected login,legacy_user,new_user[,legacy_server] (got 2 "
        "fields)");
  CHECK(map_error(c, "a,b,c\na,b,c,d,e\n").find("map.csv:2: ") == 0);
  CHECK(map_error(c, "a,,c\n") == "map.csv:1: [users] map_file: legacy_user is empty");
  CHECK(map_error(c, "a,b c,c\n").find("map.csv:1: [users] map_file: legacy_user holds a space") ==
        0);
  CHECK(map_error(c, "\"a\",b,c\n").find("login holds a space, a quote") != std::string::npos);
  CHECK(map_error(c, "a,b,c,old9\n") ==
        "map.csv:1: [users] map_file: legacy server \"old9\" is not in the config (\"legacy\" or "
        "a [legacy_servers.NAME])");
  CHECK(map_error(c, "A,b,c\nx,y,z\na,b,c\n") ==
        "map.csv:3: [users] map_file: login \"a\" again (first on line 1)");
}

TEST_CASE("resolve: map row over templates, domain routing, one identity per account") {
  auto c = parse(R"([users]
legacy = "%n"
new = "%Ln@example.org"
legacy_by_domain = {"old2.example" = "old2"}
)");
  const cfg::account_map map(c, cfg::parse_map("carol,c.legacy,carol@new.example,old2\n", "m", c));
  auto a = map.resolve("Alice");
  CHECK(a.legacy_login == "Alice");
  CHECK(a.new_login == "alice@example.org");
  CHECK(a.identity == "alice@example.org");
  CHECK(a.legacy_server.empty());
  // Case and the master-user form are spellings of one account.
  CHECK(map.resolve("ALICE").identity == a.identity);
  auto m = map.resolve("alice*admin");
  CHECK(m.identity == a.identity);
  CHECK(m.legacy_login == "alice*admin");
  CHECK(m.new_login == "alice@example.org*admin");
  CHECK(m.legacy_user == "alice");
  // A row wins, its server too.
  auto r = map.resolve("CAROL");
  CHECK(r.legacy_login == "c.legacy");
  CHECK(r.new_login == "carol@new.example");
  CHECK(r.legacy_server == "old2");
  // By the domain of the name typed.
  auto d = map.resolve("dave@OLD2.example");
  CHECK(d.legacy_server == "old2");
  CHECK(d.legacy_login == "dave");
  CHECK(d.identity == "dave@example.org");
}

TEST_CASE("resolve with the defaults: the names as typed, case folded for the identity") {
  const auto c = parse("");
  const cfg::account_map map(c, {});
  auto a = map.resolve("Bob");
  CHECK(a == cfg::account{"bob", "Bob", "Bob", "Bob", "Bob", ""});
  auto plain = cfg::parse(base + "[users]\nmaster_separator = \"\"\n[sync]\nfold_user_case = false\n",
                          "t.toml");
  const cfg::account_map exact(plain, {});
  CHECK(exact.resolve("Bob*x").identity == "Bob*x");
}

TEST_CASE("the map file: two legacy mailboxes cannot become one account, aliases may") {
  const auto c = parse("");
  CHECK(map_error(c, "a,alice,alice@example.org\nb,bob,ALICE@example.org\n") ==
        "map.csv:2: [users] map_file: new_user \"ALICE@example.org\" is line 1's too, from another "
        "legacy mailbox (two mailboxes cannot become one account)");
  CHECK(map_error(c, "a,alice,alice@example.org\nb,alice,alice@example.org,old2\n").find(
            "is line 1's too") != std::string::npos);
  // Two logins of one mailbox (an alias) are one account.
  CHECK(map_error(c, "alice,alice,alice@example.org\nali,alice,alice@example.org\n").empty());
  CHECK(cfg::parse_map("\xEF\xBB\xBFlogin,legacy_user,new_user\nx,y,z\n", "m", c).size() == 1);
}

TEST_CASE("resolve: a master-user login is marked, its password being a master's") {
  const auto c = parse("");
  const cfg::account_map map(c, {});
  CHECK(map.resolve("bob*admin").master_form);
  CHECK_FALSE(map.resolve("bob").master_form);
}
