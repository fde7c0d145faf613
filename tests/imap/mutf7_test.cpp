#include <doctest/doctest.h>

#include "imap/mutf7.hpp"

using namespace suction::imap;

TEST_CASE("modified UTF-7: RFC 3501 examples and common names") {
  struct pair {
    const char* utf8;
    const char* mutf7;
  };
  const pair cases[] = {
      {"~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
       "~peter/mail/&U,BTFw-/&ZeVnLIqe-"},
      {"INBOX", "INBOX"},
      {"Entw\xc3\xbcrfe", "Entw&APw-rfe"},
      {"\xc3\x89l\xc3\xa9ments envoy\xc3\xa9s", "&AMk-l&AOk-ments envoy&AOk-s"},
      {"Tom & Jerry", "Tom &- Jerry"},
      {"&", "&-"},
      {"", ""},
      {"\xf0\x9f\x93\xa7 mail", "&2D3c5w- mail"},  // a surrogate pair
      {"\xd0\x9e\xd1\x82\xd0\xbf\xd1\x80\xd0\xb0\xd0\xb2\xd0\xbb\xd0\xb5\xd0\xbd\xd0\xbd\xd1\x8b\xd0\xb5",
       "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.utf8);
    CHECK(mutf7_encode(c.utf8) == std::string(c.mutf7));
    CHECK(mutf7_decode(c.mutf7) == std::string(c.utf8));
  }
}

TEST_CASE("modified UTF-7: invalid input is refused") {
  const char* bad_mutf7[] = {
      "&U,BTFw",      // unterminated shift
      "&U,B/Fw-",     // '/' is not in the modified alphabet
      "&AGE-",        // printable ASCII ('a') must not be encoded
      "&2D0-",        // lone high surrogate
      "&3,c-",        // lone low surrogate
      "&AMkA-",       // leftover bits are not zero
      "caf\xc3\xa9",  // raw 8-bit
      "&U,BTF-",      // leftover bits not a clean boundary
  };
  for (const char* b : bad_mutf7) {
    CAPTURE(b);
    CHECK_FALSE(mutf7_decode(b));
  }
  const char* bad_utf8[] = {"\xff", "\xc3", "\xe5\x8f", "\xc0\xaf", "\xed\xa0\x80"};
  for (const char* b : bad_utf8) CHECK_FALSE(mutf7_encode(b));
}

TEST_CASE("modified UTF-7 round-trips every BMP and some astral code points") {
  for (std::uint32_t cp = 0x20; cp < 0x30000; cp += (cp < 0x800 ? 1 : 37)) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    std::string s = "x";
    if (cp < 0x80) s += static_cast<char>(cp);
    else if (cp < 0x800) { s += static_cast<char>(0xc0 | (cp >> 6)); s += static_cast<char>(0x80 | (cp & 0x3f)); }
    else if (cp < 0x10000) { s += static_cast<char>(0xe0 | (cp >> 12)); s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f)); s += static_cast<char>(0x80 | (cp & 0x3f)); }
    else { s += static_cast<char>(0xf0 | (cp >> 18)); s += static_cast<char>(0x80 | ((cp >> 12) & 0x3f)); s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f)); s += static_cast<char>(0x80 | (cp & 0x3f)); }
    s += "y";
    auto enc = mutf7_encode(s);
    REQUIRE(enc);
    for (char c : *enc) REQUIRE((c >= 0x20 && c <= 0x7e));
    REQUIRE(mutf7_decode(*enc) == s);
  }
}
