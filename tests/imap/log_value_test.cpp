// Values from outside in key=value log lines: nothing a client types can
// forge a field, a line, or an address for fail2ban (issue 11, defect 2).
#include <doctest/doctest.h>

#include "imap/log_value.hpp"

using suction::imap::log_value;

TEST_CASE("log_value: plain values as they are, everything else quoted and escaped") {
  CHECK(log_value("alice") == "alice");
  CHECK(log_value("alice@example.org") == "alice@example.org");
  CHECK(log_value("") == "\"\"");
  CHECK(log_value("x client=6.6.6.6 result=ok") == "\"x client\\x3d6.6.6.6 result\\x3dok\"");
  CHECK(log_value("a=b") == "\"a\\x3db\"");
  CHECK(log_value("say \"hi\"\\") == "\"say \\\"hi\\\"\\\\\"");
  CHECK(log_value("two\r\nlines\x7f") == "\"two\\x0d\\x0alines\\x7f\"");
  CHECK(log_value(std::string("nul\0x", 5)) == "\"nul\\x00x\"");
  // Unicode line breaks and C1 controls: NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR.
  CHECK(log_value("a\xc2\x85" "b") == "\"a\\u{0085}b\"");
  CHECK(log_value("a\xe2\x80\xa8" "b\xe2\x80\xa9") == "\"a\\u{2028}b\\u{2029}\"");
  // Other UTF-8 stays readable; bytes that are not UTF-8 are escaped.
  CHECK(log_value("J\xc3\xbcrgen") == "\"J\xc3\xbcrgen\"");
  CHECK(log_value("bad\xff\xc3") == "\"bad\\xff\\xc3\"");
}

TEST_CASE("log_value: no output ever holds a line break, a raw quote or a ' key='") {
  // Every single byte, and every byte after a space, in a value.
  for (int c = 0; c < 256; ++c) {
    for (const std::string& v : {std::string(1, static_cast<char>(c)), "u " + std::string(1, static_cast<char>(c)) + "k=v"}) {
      std::string out = log_value(v);
      CAPTURE(c);
      CHECK(out.find('\n') == std::string::npos);
      CHECK(out.find('\r') == std::string::npos);
      CHECK(out.find(" k=") == std::string::npos);
      if (out.size() >= 2 && out.front() == '"') {
        // Inside the quotes, every '"' is escaped.
        for (std::size_t i = 1; i + 1 < out.size(); ++i)
          if (out[i] == '\\') ++i;
          else CHECK(out[i] != '"');
      }
    }
  }
}
