// Client commands as the proxy reads them before login: RFC 3501 / RFC 9051 /
// RFC 7888 (LITERAL+) / RFC 4959 (SASL-IR) examples, split at every byte offset.
#include <doctest/doctest.h>

#include "harness_impl.hpp"

using namespace suction::imap;
using suction::imap::test::drive_all_splits;
using suction::imap::test::transcript;

namespace {
transcript parse(std::string_view input, int raw_lines = 0, parser_limits limits = {}) {
  return drive_all_splits<command_parser>(input, raw_lines, limits);
}
}  // namespace

TEST_CASE("simple commands") {
  transcript t = parse(
      "a001 LOGIN SMITH SESAME\r\n"
      "a002 capability\r\n"
      "A003 noop\r\n"
      "a004 ID (\"name\" \"sodr\" \"version\" \"19.34\")\r\n"
      "a005 ID NIL\r\n"
      "A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])\r\n"
      "A999 UID FETCH 4827313:4828442 FLAGS\r\n"
      "a006 logout\r\n");
  REQUIRE(t.errors.empty());
  REQUIRE(t.commands.size() == 8);
  CHECK(t.commands[0].tag == "a001");
  CHECK(t.commands[0].name == "LOGIN");
  REQUIRE(t.commands[0].args.size() == 2);
  CHECK(t.commands[0].args[0].text == "SMITH");
  CHECK(t.commands[0].args[1].text == "SESAME");
  CHECK(t.commands[1].name == "CAPABILITY");
  CHECK(t.commands[1].args.empty());
  CHECK(t.commands[3].args[0].items.size() == 4);
  CHECK(t.commands[4].args[0].is_nil());
  CHECK(t.commands[5].args[1].items[1].text == "BODY[HEADER.FIELDS (DATE FROM)]");
  CHECK(t.commands[6].name == "UID FETCH");
  CHECK(t.commands[6].args[0].text == "4827313:4828442");
}

TEST_CASE("LOGIN with synchronizing literals asks for continuation") {
  // RFC 3501 section 6.2.3 style, and passwords no atom or quoted string can carry.
  std::string pw = "p\xc3\xa4ss {x} \"q\" \\b";
  std::string input = "A001 LOGIN {11}\r\nFRED FOOBAR {" + std::to_string(pw.size()) + "}\r\n" +
                      pw + "\r\n";
  transcript t = parse(input);
  REQUIRE(t.errors.empty());
  CHECK(t.continuations == 2);
  REQUIRE(t.commands.size() == 1);
  CHECK(t.commands[0].args[0].text == "FRED FOOBAR");
  CHECK(t.commands[0].args[0].literal);
  CHECK(t.commands[0].args[1].text == pw);
}

TEST_CASE("LITERAL+ and LITERAL- literals do not ask for continuation") {
  transcript t = parse("A001 LOGIN {5+}\r\nalice {6-}\r\nse cr3\r\n");
  REQUIRE(t.errors.empty());
  CHECK(t.continuations == 0);
  REQUIRE(t.commands.size() == 1);
  CHECK(t.commands[0].args[0].text == "alice");
  CHECK(t.commands[0].args[1].text == "se cr3");
}

TEST_CASE("a NUL is refused in a command, also split at every byte, but not in a binary literal") {
  transcript t = parse(std::string("a LOGIN {7}\r\nbob\0xyz pw\r\nb NOOP\r\n", 33));
  REQUIRE(t.errors.size() == 1);
  CHECK(t.errors[0] == errc::nul_in_string);
  REQUIRE(t.commands.size() == 1);
  CHECK(t.commands[0].tag == "b");
  transcript bin = parse(std::string("a APPEND INBOX ~{3+}\r\nx\0y\r\n", 27));
  REQUIRE(bin.errors.empty());
  REQUIRE(bin.commands.size() == 1);
  CHECK(bin.commands[0].args[1].text == std::string("x\0y", 3));
}

TEST_CASE("quoted strings with escapes") {
  transcript t = parse("a LOGIN \"joe\" \"pa ss\\\"w\\\\rd\"\r\n");
  REQUIRE(t.commands.size() == 1);
  CHECK(t.commands[0].args[1].text == "pa ss\"w\\rd");
}

TEST_CASE("AUTHENTICATE with SASL-IR and with a continuation line") {
  transcript t = parse(
      "a AUTHENTICATE PLAIN AGFsaWNlAHBhc3M=\r\n"
      "b AUTHENTICATE PLAIN\r\n"
      "AGFsaWNlAHBhc3M=\r\n"
      "c NOOP\r\n",
      /*raw_lines=*/0);
  // Without expect_line the continuation line is (wrongly) a command: the
  // parser reports it as a syntax error and recovers.
  CHECK(t.commands.size() == 3);
  CHECK(t.errors.size() == 1);

  command_parser p;
  std::string in = "b AUTHENTICATE PLAIN\r\nAGFsaWNlAHBhc3M=\r\nc NOOP\r\n";
  std::string_view rest = in;
  auto r = p.feed(rest);
  REQUIRE(r.event == parse_event::message);
  CHECK(p.command().args.size() == 1);
  rest.remove_prefix(r.consumed);
  p.expect_line();
  r = p.feed(rest);
  REQUIRE(r.event == parse_event::line);
  CHECK(p.line() == "AGFsaWNlAHBhc3M=");
  rest.remove_prefix(r.consumed);
  r = p.feed(rest);
  REQUIRE(r.event == parse_event::message);
  CHECK(p.command().name == "NOOP");

  transcript t2 = parse("b AUTHENTICATE PLAIN\r\n*\r\nc NOOP\r\n", 1);
  REQUIRE(t2.lines.size() == 1);
  CHECK(t2.lines[0] == "*");
  CHECK(t2.commands.size() == 2);
}

TEST_CASE("APPEND literal is streamed when large") {
  parser_limits limits;
  limits.inline_literal_max = 8;
  std::string msg = "Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\r\nHello Joe\r\n";
  std::string input = "A003 APPEND saved-messages (\\Seen) {" + std::to_string(msg.size()) +
                      "}\r\n" + msg + "\r\n";
  transcript t = parse(input, 0, limits);
  REQUIRE(t.errors.empty());
  CHECK(t.continuations == 1);
  REQUIRE(t.streamed.size() == 1);
  CHECK(t.streamed[0] == msg);
  REQUIRE(t.commands.size() == 1);
  CHECK(t.commands[0].args[2].streamed);
}

TEST_CASE("bad commands are skipped and the next one parses") {
  struct bad_case {
    std::string input;
    errc expected;
    std::string tag;
  };
  const bad_case cases[] = {
      {"\r\n", errc::syntax, ""},
      {"a001\r\n", errc::syntax, "a001"},
      {"* LOGIN a b\r\n", errc::syntax, ""},
      {"+a LOGIN a b\r\n", errc::syntax, ""},
      {"a1 LO(GIN\r\n", errc::syntax, "a1"},
      {"a2 LOGIN \"unterminated\r\n", errc::syntax, "a2"},
      {"a3 LOGIN (a\r\n", errc::syntax, "a3"},
      {"a4 LOGIN a)\r\n", errc::syntax, "a4"},
      {"a5 LOGIN {x}\r\n", errc::bad_literal, "a5"},
      {"a6 LOGIN {5000}\r\n", errc::literal_too_large, "a6"},
      // NUL in a quoted string, an atom or a literal: Dovecot cuts the name
      // there while we would see another one (issue 11, defect 1).
      {std::string("a7 LOGIN \"carol\0a\" pw\r\n", 23), errc::nul_in_string, "a7"},
      {std::string("a8 LOGIN carol\0b pw\r\n", 21), errc::nul_in_string, "a8"},
      {std::string("a9 LOGIN {7+}\r\ncarol\0c pw\r\n", 27), errc::nul_in_string, "a9"},
  };
  parser_limits limits;
  limits.max_literal = 1000;
  for (const auto& c : cases) {
    CAPTURE(c.input);
    command_parser p(limits);
    std::string in = c.input + "z NOOP\r\n";
    std::string_view rest = in;
    auto r = p.feed(rest);
    REQUIRE(r.event == parse_event::error);
    CHECK(p.error() == c.expected);
    CHECK(p.recoverable());
    CHECK(p.error_tag() == c.tag);
    rest.remove_prefix(r.consumed);
    r = p.feed(rest);
    REQUIRE(r.event == parse_event::message);
    CHECK(p.command().tag == "z");
  }
}

TEST_CASE("limits that cannot be recovered from") {
  parser_limits limits;
  limits.max_literal = 1000;
  limits.max_line = 100;
  {
    command_parser p(limits);  // a LITERAL+ body is already on its way
    auto r = p.feed("a LOGIN {5000+}\r\n");
    REQUIRE(r.event == parse_event::error);
    CHECK(p.error() == errc::literal_too_large);
    CHECK_FALSE(p.recoverable());
  }
  {
    command_parser p(limits);
    auto r = p.feed(std::string(200, 'a'));
    REQUIRE(r.event == parse_event::error);
    CHECK(p.error() == errc::line_too_long);
    CHECK_FALSE(p.recoverable());
  }
  {
    command_parser p(limits);
    transcript t = test::drive(p, "a ID " + std::string(40, '(') + "\r\n", {});
    REQUIRE(t.errors.size() == 1);
    CHECK(t.errors[0] == errc::nesting_too_deep);
  }
}
