#include <doctest/doctest.h>

#include "harness.hpp"
#include "imap/capabilities.hpp"
#include "imap/sequence_set.hpp"
#include "imap/serialize.hpp"

using namespace suction::imap;

TEST_CASE("each string gets the form that carries it") {
  CHECK(astring_form("alice") == string_form::atom);
  CHECK(astring_form("a]b") == string_form::atom);
  CHECK(astring_form("") == string_form::quoted);
  CHECK(astring_form("NIL") == string_form::quoted);
  CHECK(astring_form("two words") == string_form::quoted);
  CHECK(astring_form("100%") == string_form::quoted);
  CHECK(astring_form("a\"b") == string_form::quoted);
  CHECK(astring_form("{5}") == string_form::quoted);
  CHECK(astring_form("caf\xc3\xa9") == string_form::literal);
  CHECK(astring_form("a\r\nb") == string_form::literal);
  CHECK(astring_form(std::string("a\0b", 3)) == string_form::literal);
  CHECK(string_form_of("alice") == string_form::quoted);
}

TEST_CASE("what the builder writes, the command parser reads back exactly") {
  const std::string strings[] = {"alice", "", "NIL", "pa ss", "q\"uo\\te", "{7}", "100% sure",
                                 "caf\xc3\xa9", "line\r\nbreak", std::string("nul\0x", 5)};
  for (bool non_sync : {false, true}) {
    for (const auto& s : strings) {
      CAPTURE(s);
      command_builder b("t1", "LOGIN", non_sync);
      b.astring(s).string(s);
      auto parts = std::move(b).finish();
      std::string wire;
      for (auto& p : parts) wire += p;
      bool literal = astring_form(s) == string_form::literal;
      CHECK(parts.size() == (literal && !non_sync ? 3u : 1u));
      command_parser p;
      auto t = test::drive(p, wire, {});
      if (s.find('\0') != std::string::npos) {
        // CHAR8 has no NUL (RFC 3501): a client's NUL is refused (issue 11).
        REQUIRE_FALSE(t.errors.empty());
        CHECK(t.errors[0] == errc::nul_in_string);
        CHECK(t.commands.empty());
        continue;
      }
      REQUIRE(t.commands.size() == 1);
      REQUIRE(t.commands[0].args.size() == 2);
      CHECK(t.commands[0].args[0].text == s);
      CHECK(t.commands[0].args[1].text == s);
      CHECK(t.continuations == (literal && !non_sync ? 2 : 0));
    }
  }
}

TEST_CASE("mailbox names are sent in modified UTF-7, INBOX canonical") {
  command_builder b("a", "SELECT", true);
  CHECK(b.mailbox("Entw\xc3\xbcrfe"));
  auto parts = std::move(b).finish();
  CHECK(parts[0] == "a SELECT Entw&APw-rfe\r\n");
  command_builder c("a", "SELECT", true);
  c.mailbox("inbox");
  CHECK(std::move(c).finish()[0] == "a SELECT INBOX\r\n");
  command_builder d("a", "SELECT", true);
  CHECK_FALSE(d.mailbox("\xff"));
  command_builder e("a", "CREATE", true);
  e.mailbox("Sent Items");
  CHECK(std::move(e).finish()[0] == "a CREATE \"Sent Items\"\r\n");
}

TEST_CASE("streamed APPEND announcement") {
  command_builder b("a7", "APPEND", false);
  b.mailbox("INBOX");
  b.atom("(\\Seen)");
  b.string("17-Jul-1996 02:44:25 -0700");
  auto parts = std::move(b).finish_before_literal(310);
  REQUIRE(parts.size() == 1);
  CHECK(parts[0] == "a7 APPEND INBOX (\\Seen) \"17-Jul-1996 02:44:25 -0700\" {310}\r\n");
  auto next = command_builder::continuation(true);
  next.atom("()");
  CHECK(std::move(next).finish_before_literal(5)[0] == " () {5+}\r\n");
  CHECK(std::move(command_builder::continuation(true)).finish()[0] == "\r\n");
}

TEST_CASE("sequence sets") {
  std::vector<std::uint32_t> n{9, 1, 2, 3, 5, 10, 11, 3, 7};
  CHECK(format_sequence_set(n) == "1:3,5,7,9:11");
  CHECK(format_sequence_set(std::vector<std::uint32_t>{}) == "");
  auto s = parse_sequence_set("1:3,5,9:*,20:18");
  REQUIRE(s);
  CHECK(s->size() == 4);
  CHECK((*s)[2] == sequence_range{9, kSequenceStar});
  CHECK((*s)[3] == sequence_range{18, 20});
  auto e = expand_sequence_set(*s, 11, 100);
  REQUIRE(e);
  CHECK(*e == std::vector<std::uint32_t>{1, 2, 3, 5, 9, 10, 11, 18, 19, 20});
  auto huge = parse_sequence_set("1:4294967294");
  REQUIRE(huge);
  CHECK_FALSE(expand_sequence_set(*huge, 0, 1000000));
  for (const char* bad : {"", "0", "1,,2", "1:", ":3", "a", "1:2:3", "01", "4294967296", ","})
    CHECK_FALSE(parse_sequence_set(bad));
}

TEST_CASE("capability sets compare case-insensitively and list SASL mechanisms") {
  auto c = capability_set::parse("IMAP4rev1 LITERAL+ auth=plain AUTH=CRAM-MD5  SASL-IR");
  CHECK(c.has("imap4REV1"));
  CHECK(c.has_auth("PLAIN"));
  CHECK_FALSE(c.has_auth("LOGIN"));
  CHECK(c.auth_mechanisms() == std::vector<std::string>{"PLAIN", "CRAM-MD5"});
  CHECK(c.atoms().size() == 5);
  CHECK(c.to_string() == "IMAP4rev1 LITERAL+ auth=plain AUTH=CRAM-MD5 SASL-IR");
}

#include "imap/base64.hpp"

TEST_CASE("base64 as SASL PLAIN uses it") {
  CHECK(base64_encode(std::string("\0alice\0pass", 11)) == "AGFsaWNlAHBhc3M=");
  CHECK(base64_decode("AGFsaWNlAHBhc3M=") == std::string("\0alice\0pass", 11));
  CHECK(base64_encode("") == "");
  CHECK(base64_encode("f") == "Zg==");
  CHECK(base64_encode("fo") == "Zm8=");
  CHECK(base64_encode("foo") == "Zm9v");
  CHECK(base64_decode("Zg==") == std::string("f"));
  for (const char* bad : {"Zg=", "Z===", "Zg=a", "Zm9v!A==", "=Zm9", "Zg==Zg=="})
    CHECK_FALSE(base64_decode(bad));
}

#include "imap/date.hpp"

TEST_CASE("INTERNALDATE: parse, compare as instants, format") {
  auto a = parse_date_time("01-Jan-1998 10:00:00 +0100");
  auto b = parse_date_time("01-Jan-1998 09:00:00 +0000");
  auto c = parse_date_time(" 1-Jan-1998 04:00:00 -0500");
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(c);
  CHECK(a->epoch_seconds == 883612800 + 9 * 3600);  // 1998-01-01T09:00:00Z
  CHECK(a->epoch_seconds == b->epoch_seconds);
  CHECK(a->epoch_seconds == c->epoch_seconds);
  CHECK(a->offset_minutes == 60);
  CHECK(c->offset_minutes == -300);
  CHECK(format_date_time(*a) == "01-Jan-1998 10:00:00 +0100");
  CHECK(format_date_time(*c) == "01-Jan-1998 04:00:00 -0500");
  auto leap = parse_date_time("29-Feb-2024 23:59:59 +0530");
  REQUIRE(leap);
  CHECK(format_date_time(*leap) == "29-Feb-2024 23:59:59 +0530");
  auto old = parse_date_time("17-Jul-1969 02:44:25 -0700");  // before the epoch
  REQUIRE(old);
  CHECK(format_date_time(*old) == "17-Jul-1969 02:44:25 -0700");
  for (const char* bad : {"", "17-Jul-1996", "32-Jan-2000 00:00:00 +0000", "17-Foo-1996 02:44:25 -0700",
                          "17-Jul-1996 24:00:00 +0000", "17-Jul-1996 02:44:25 0700",
                          "117-Jul-1996 02:44:25 -0700", "17-Jul-96 02:44:25 -0700"})
    CHECK_FALSE(parse_date_time(bad));
}
