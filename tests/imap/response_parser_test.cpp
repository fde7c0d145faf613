// Server responses: RFC 3501 / RFC 9051 examples (and those of the extensions we
// rely on), each fed whole, split at every byte offset and one byte at a time.
#include <doctest/doctest.h>

#include "harness_impl.hpp"
#include "imap/response.hpp"

using namespace suction::imap;
using suction::imap::test::drive_all_splits;
using suction::imap::test::transcript;

namespace {

transcript parse(std::string_view input, parser_limits limits = {}) {
  return drive_all_splits<response_parser>(input, 0, limits);
}

}  // namespace

TEST_CASE("RFC 3501 section 8 sample session, server side") {
  const std::string header =
      "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
      "From: Terry Gray <gray@cac.washington.edu>\r\n"
      "Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
      "To: imap@cac.washington.edu\r\n"
      "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
      "Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
      "MIME-Version: 1.0\r\n"
      "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n";
  const std::string input =
      "* OK IMAP4rev1 Service Ready\r\n"
      "a001 OK LOGIN completed\r\n"
      "* 18 EXISTS\r\n"
      "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
      "* 2 RECENT\r\n"
      "* OK [UNSEEN 17] Message 17 is the first unseen message\r\n"
      "* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
      "a002 OK [READ-WRITE] SELECT completed\r\n"
      "* 12 FETCH (FLAGS (\\Seen) INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" "
      "RFC822.SIZE 4286 ENVELOPE (\"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\" "
      "\"IMAP4rev1 WG mtg summary and minutes\" "
      "((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) "
      "((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) "
      "((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) "
      "((NIL NIL \"imap\" \"cac.washington.edu\")) "
      "((NIL NIL \"minutes\" \"CNRI.Reston.VA.US\")"
      "(\"John Klensin\" NIL \"KLENSIN\" \"MIT.EDU\")) NIL NIL "
      "\"<B27397-0100000@cac.washington.edu>\") "
      "BODY (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 3028 92))\r\n"
      "a003 OK FETCH completed\r\n"
      "* 12 FETCH (BODY[HEADER] {" + std::to_string(header.size()) + "}\r\n" + header + ")\r\n"
      "a004 OK FETCH completed\r\n"
      "* 12 FETCH (FLAGS (\\Seen \\Deleted))\r\n"
      "a005 OK +FLAGS completed\r\n"
      "* BYE IMAP4rev1 server terminating connection\r\n"
      "a006 OK LOGOUT completed\r\n";
  transcript t = parse(input);
  REQUIRE(t.errors.empty());
  REQUIRE(t.responses.size() == 16);
  CHECK(t.responses[0].status == status::ok);
  CHECK(t.responses[0].text == "IMAP4rev1 Service Ready");
  CHECK(t.responses[1].kind == response_kind::tagged);
  CHECK(t.responses[1].tag == "a001");
  CHECK(t.responses[2].number == 18u);
  CHECK(t.responses[2].keyword == "EXISTS");
  auto flags = decode_flags(t.responses[3]);
  REQUIRE(flags);
  CHECK(flags->size() == 5);
  CHECK((*flags)[4] == "\\Draft");
  CHECK(t.responses[5].code->name == "UNSEEN");
  CHECK(decode_uidvalidity(t.responses[6]) == 3857529045u);
  CHECK(t.responses[7].code->name == "READ-WRITE");

  auto f = decode_fetch(t.responses[8]);
  REQUIRE(f);
  CHECK(f->seq == 12);
  CHECK(f->internaldate == "17-Jul-1996 02:44:25 -0700");
  CHECK(f->rfc822_size == 4286u);
  REQUIRE(f->flags);
  CHECK(*f->flags == std::vector<std::string>{"\\Seen"});
  const auto& envelope = t.responses[8].data[0].items[7];
  REQUIRE(envelope.is_list());
  CHECK(envelope.items.size() == 10);
  REQUIRE(envelope.items[6].items.size() == 2);  // cc
  CHECK(envelope.items[6].items[1].items[0].text == "John Klensin");
  CHECK(envelope.items[7].is_nil());             // bcc

  auto body = decode_fetch(t.responses[10]);
  REQUIRE(body);
  auto* sec = body->section("BODY[HEADER]");
  REQUIRE(sec);
  CHECK(sec->content->literal);
  CHECK(sec->content->text == header);
  CHECK(t.responses[14].status == status::bye);
}

TEST_CASE("status responses carry codes and free text") {
  transcript t = parse(
      "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE STARTTLS AUTH=PLAIN] "
      "Dovecot (Debian) ready.\r\n"
      "A003 OK [APPENDUID 38505 3955] APPEND completed\r\n"
      "A004 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n"
      "* OK [HIGHESTMODSEQ 715194045007] Highest\r\n"
      "* OK [UIDNEXT 4392] Predicted next UID\r\n"
      "* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n"
      "A005 NO [TRYCREATE] Mailbox doesn't exist: Foo (0.001 + 0.000 secs).\r\n"
      "* OK [ALERT] System shutdown in 10 minutes (unbalanced \" and ( are text)\r\n"
      "A006 BAD\r\n"
      "* PREAUTH IMAP4rev1 server logged in as Smith\r\n");
  REQUIRE(t.errors.empty());
  REQUIRE(t.responses.size() == 10);
  auto caps = decode_capability(t.responses[0]);
  REQUIRE(caps);
  CHECK(caps->has("literal+"));
  CHECK(caps->has_auth("plain"));
  CHECK_FALSE(caps->has("LOGINDISABLED"));
  CHECK(t.responses[0].text == "Dovecot (Debian) ready.");

  auto a = decode_appenduid(t.responses[1]);
  REQUIRE(a);
  CHECK(a->uidvalidity == 38505u);
  CHECK(a->uids == "3955");
  auto c = decode_copyuid(t.responses[2]);
  REQUIRE(c);
  CHECK(c->source_uids == "304,319:320");
  CHECK(c->dest_uids == "3956:3958");
  CHECK(decode_highestmodseq(t.responses[3]) == 715194045007ull);
  CHECK(decode_uidnext(t.responses[4]) == 4392u);
  auto pf = decode_permanentflags(t.responses[5]);
  REQUIRE(pf);
  CHECK(*pf == std::vector<std::string>{"\\Deleted", "\\Seen", "\\*"});
  CHECK(t.responses[6].status == status::no);
  CHECK(t.responses[6].code->name == "TRYCREATE");
  CHECK(t.responses[7].text == "System shutdown in 10 minutes (unbalanced \" and ( are text)");
  CHECK(t.responses[8].status == status::bad);
  CHECK(t.responses[8].text.empty());
  CHECK(t.responses[9].status == status::preauth);
}

TEST_CASE("continuation requests") {
  transcript t = parse("+ Ready for additional command text\r\n+ \r\n+\r\n+ YGgGCSqGSIb3EgECAgIA\r\n");
  REQUIRE(t.responses.size() == 4);
  for (auto& r : t.responses) CHECK(r.kind == response_kind::continuation);
  CHECK(t.responses[0].text == "Ready for additional command text");
  CHECK(t.responses[1].text.empty());
  CHECK(t.responses[2].text.empty());
  CHECK(t.responses[3].text == "YGgGCSqGSIb3EgECAgIA");
}

TEST_CASE("LIST and LSUB, RFC 3501 and RFC 6154 examples") {
  transcript t = parse(
      "* LIST (\\Noselect) \"/\" ~/Mail/foo\r\n"
      "* LIST () \".\" #news.comp.mail.misc\r\n"
      "* LIST (\\Noselect) NIL \"\"\r\n"
      "* LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\n"
      "* LIST (\\HasNoChildren) \".\" \"INBOX.Sent Items\"\r\n"
      "* LIST () \"/\" {9}\r\nSay \"hi\"\\\r\n"
      "* LIST () \"/\" \"NIL\"\r\n"
      "* LIST (\\HasNoChildren) \".\" \"INBOX.Entw&APw-rfe\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n"
      "* LSUB () \".\" #news.comp.mail.mime\r\n");
  REQUIRE(t.errors.empty());
  REQUIRE(t.responses.size() == 9);
  auto l0 = decode_list(t.responses[0]);
  REQUIRE(l0);
  CHECK(l0->has_attribute("\\noselect"));
  CHECK(l0->separator == '/');
  CHECK(l0->name == "~/Mail/foo");
  auto l2 = decode_list(t.responses[2]);
  REQUIRE(l2);
  CHECK_FALSE(l2->separator);
  CHECK(l2->name.empty());
  auto l3 = decode_list(t.responses[3]);
  CHECK(l3->has_attribute("\\Sent"));
  CHECK(decode_list(t.responses[4])->name == "INBOX.Sent Items");
  CHECK(decode_list(t.responses[5])->name == "Say \"hi\"\\");
  CHECK(decode_list(t.responses[6])->name == "NIL");
  CHECK(decode_list(t.responses[7])->name == "INBOX.Entw&APw-rfe");
  CHECK(decode_list(t.responses[8])->lsub);
}

TEST_CASE("STATUS, SEARCH, ESEARCH, NAMESPACE, ENABLED, VANISHED") {
  transcript t = parse(
      "* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n"
      "* STATUS \"INBOX.Sent Items\" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 1700000000 UNSEEN 0 "
      "HIGHESTMODSEQ 12)\r\n"
      "* SEARCH 2 84 882\r\n"
      "* SEARCH\r\n"
      "* SEARCH 2 5 (MODSEQ 917162500)\r\n"
      "* ESEARCH (TAG \"A282\") MIN 2 COUNT 3\r\n"
      "* ESEARCH (TAG \"A283\") ALL 2,10:11\r\n"
      "* ESEARCH (TAG \"A285\") UID MIN 7 MAX 3800\r\n"
      "* NAMESPACE ((\"\" \"/\")) ((\"~\" \"/\")) ((\"#shared/\" \"/\")(\"#public/\" \"/\")"
      "(\"#ftp/\" \"/\")(\"#news.\" \".\"))\r\n"
      "* NAMESPACE ((\"INBOX.\" \".\")) NIL NIL\r\n"
      "* ENABLED CONDSTORE QRESYNC\r\n"
      "* VANISHED (EARLIER) 41,43:116,118,120:211,214:540\r\n"
      "* VANISHED 405,407,410,425\r\n");
  REQUIRE(t.errors.empty());
  REQUIRE(t.responses.size() == 13);
  auto s0 = decode_status(t.responses[0]);
  REQUIRE(s0);
  CHECK(s0->mailbox == "blurdybloop");
  CHECK(s0->messages == 231u);
  CHECK(s0->uidnext == 44292u);
  auto s1 = decode_status(t.responses[1]);
  CHECK(s1->mailbox == "INBOX.Sent Items");
  CHECK(s1->uidvalidity == 1700000000u);
  CHECK(s1->highestmodseq == 12u);
  CHECK(decode_search(t.responses[2])->numbers == std::vector<std::uint32_t>{2, 84, 882});
  CHECK(decode_search(t.responses[3])->numbers.empty());
  CHECK(decode_search(t.responses[4])->modseq == 917162500u);
  auto e0 = decode_esearch(t.responses[5]);
  CHECK(e0->tag == "A282");
  CHECK(e0->min == 2u);
  CHECK(e0->count == 3u);
  CHECK(decode_esearch(t.responses[6])->all == "2,10:11");
  auto e2 = decode_esearch(t.responses[7]);
  CHECK(e2->uid);
  CHECK(e2->max == 3800u);
  auto n0 = decode_namespace(t.responses[8]);
  REQUIRE(n0);
  CHECK(n0->personal.size() == 1);
  CHECK(n0->personal[0].separator == '/');
  CHECK(n0->shared.size() == 4);
  CHECK(n0->shared[3].prefix == "#news.");
  auto n1 = decode_namespace(t.responses[9]);
  CHECK(n1->personal[0].prefix == "INBOX.");
  CHECK(n1->other.empty());
  CHECK(*decode_enabled(t.responses[10]) == std::vector<std::string>{"CONDSTORE", "QRESYNC"});
  auto v0 = decode_vanished(t.responses[11]);
  CHECK(v0->earlier);
  CHECK(v0->uids == "41,43:116,118,120:211,214:540");
  CHECK_FALSE(decode_vanished(t.responses[12])->earlier);
}

TEST_CASE("FETCH items: UID, MODSEQ, sections with spaces, BINARY literal8, 8-bit literal") {
  std::string binary("\x00\x01\xff\r\nx", 6);
  std::string input =
      "* 7 FETCH (MODSEQ (12121231000) UID 9 FLAGS (\\Seen $Forwarded Junk))\r\n"
      "* 8 FETCH (UID 10 BODY[HEADER.FIELDS (FROM \"TO\")]<0> {9}\r\nFrom: a\r\n)\r\n"
      "* 9 FETCH (UID 11 BINARY[1] ~{6}\r\n" + binary + " BINARY.SIZE[1] 6)\r\n"
      "* 10 FETCH (UID 12 BODY[] {6}\r\nS\xc3\xbc\xc3\x9f\n RFC822.SIZE 6)\r\n"
      "* 11 FETCH (UID 13 BODY[] NIL)\r\n"
      "* 12 FETCH (UID 14 BODY[] \"\")\r\n";
  transcript t = parse(input);
  REQUIRE(t.errors.empty());
  REQUIRE(t.responses.size() == 6);
  auto f0 = decode_fetch(t.responses[0]);
  REQUIRE(f0);
  CHECK(f0->modseq == 12121231000ull);
  CHECK(f0->uid == 9u);
  CHECK(f0->flags->size() == 3);
  auto f1 = decode_fetch(t.responses[1]);
  REQUIRE(f1);
  REQUIRE(f1->section("BODY[HEADER.FIELDS (FROM \"TO\")]<0>"));
  CHECK(f1->sections[0].content->text == "From: a\r\n");
  auto f2 = decode_fetch(t.responses[2]);
  REQUIRE(f2);
  CHECK(f2->sections[0].content->binary);
  CHECK(f2->sections[0].content->text == binary);
  auto f3 = decode_fetch(t.responses[3]);
  CHECK(f3->section("BODY[]")->content->text == "S\xc3\xbc\xc3\x9f\n");
  CHECK(f3->rfc822_size == 6u);
  CHECK(decode_fetch(t.responses[4])->section("BODY[]")->content->is_nil());
  CHECK(decode_fetch(t.responses[5])->section("BODY[]")->content->text.empty());
}

TEST_CASE("large literals are streamed in chunks, small ones kept inline") {
  parser_limits limits;
  limits.inline_literal_max = 16;
  std::string big(100, 'x');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  std::string input = "* 1 FETCH (UID 5 BODY[] {100}\r\n" + big +
                      " BODY[HEADER] {3}\r\nabc)\r\n* 2 FETCH (UID 6 BODY[] {0}\r\n)\r\n";
  transcript t = parse(input, limits);
  REQUIRE(t.errors.empty());
  REQUIRE(t.streamed.size() == 1);
  CHECK(t.streamed[0] == big);
  CHECK(t.streamed_items[0] == "BODY[]");
  REQUIRE(t.responses.size() == 2);
  auto f = decode_fetch(t.responses[0]);
  REQUIRE(f);
  const value* body = f->section("BODY[]")->content;
  CHECK(body->streamed);
  CHECK(body->literal_size == 100u);
  CHECK(body->text.empty());
  CHECK(f->section("BODY[HEADER]")->content->text == "abc");
  CHECK(decode_fetch(t.responses[1])->section("BODY[]")->content->text.empty());
}

TEST_CASE("streamed literal knows its message number") {
  parser_limits limits;
  limits.inline_literal_max = 0;
  response_parser p(limits);
  std::string input = "* 42 FETCH (BODY[] {3}\r\nabc)\r\n";
  auto r = p.feed(input);
  REQUIRE(r.event == parse_event::literal_begin);
  CHECK(p.literal().message_number == 42u);
  CHECK(p.literal().size == 3u);
  CHECK_FALSE(p.literal().binary);
}

TEST_CASE("malformed responses are errors, never crashes") {
  struct bad_case {
    const char* input;
    errc expected;
  };
  const bad_case cases[] = {
      {"* 1 FETCH (UID 5\r\n", errc::syntax},                    // unclosed list
      {"* 1 FETCH UID 5)\r\n", errc::syntax},                    // extra ')'
      {"* LIST () \"/\" \"unterminated\r\n", errc::syntax},
      {"* 1 FETCH (BODY[] {abc}\r\n", errc::bad_literal},
      {"* 1 FETCH (BODY[] {5} x\r\n", errc::bad_literal},        // literal not at line end
      {"* 1 FETCH (BODY[] {99999999999999999999999}\r\n", errc::bad_literal},
      {"* 1 FETCH (BODY[] {1000}\r\n", errc::literal_too_large},
      {"A1 FETCH 1 (UID)\r\n", errc::syntax},                    // tagged data response
      {"\r\n", errc::syntax},
      {"*\r\n", errc::syntax},
      {"* OK [ALERT unterminated code\r\n", errc::syntax},
      {"* 99999999999 EXISTS\r\n", errc::syntax},
      {"* 1 FETCH (BODY[HEADER.FIELDS (A) UID 1)\r\n", errc::syntax},
      {"* X ((((((((((((((((((((((((((((((((((((((((((((\r\n", errc::nesting_too_deep},
  };
  parser_limits limits;
  limits.max_literal = 100;
  for (const auto& c : cases) {
    CAPTURE(c.input);
    transcript t = parse(c.input, limits);
    REQUIRE(t.errors.size() == 1);
    CHECK(t.errors[0] == c.expected);
    CHECK(t.responses.empty());
  }
}

TEST_CASE("line and message limits") {
  parser_limits limits;
  limits.max_line = 64;
  std::string long_line = "* OK " + std::string(100, 'a') + "\r\n";
  transcript t = parse(long_line, limits);
  REQUIRE(t.errors.size() == 1);
  CHECK(t.errors[0] == errc::line_too_long);

  // No CRLF at all: the limit still holds (the parser must not buffer forever).
  response_parser p(limits);
  std::string endless(1000, 'a');
  auto r = p.feed(endless);
  CHECK(r.event == parse_event::error);
  CHECK(p.error() == errc::line_too_long);

  parser_limits small;
  small.max_message = 50;
  std::string many = "* 1 FETCH (BODY[1] {30}\r\n" + std::string(30, 'x') + " BODY[2] {30}\r\n" +
                     std::string(30, 'y') + ")\r\n";
  transcript t2 = parse(many, small);
  REQUIRE(t2.errors.size() == 1);
  CHECK(t2.errors[0] == errc::literal_too_large);
}

TEST_CASE("after an error the response parser stays failed") {
  response_parser p;
  std::string in = "* 1 FETCH )\r\n* OK fine\r\n";
  auto r = p.feed(in);
  CHECK(r.event == parse_event::error);
  auto r2 = p.feed(std::string_view(in).substr(r.consumed));
  CHECK(r2.event == parse_event::error);
  CHECK(r2.consumed == 0);
  p.reset();
  auto r3 = p.feed("* OK fine\r\n");
  CHECK(r3.event == parse_event::message);
}

TEST_CASE("bare LF line ends are accepted") {
  transcript t = parse("* OK hello\n* 3 EXISTS\n");
  REQUIRE(t.responses.size() == 2);
  CHECK(t.responses[0].text == "hello");
}
