#include "imap/log_value.hpp"

#include <cstdio>

#include "imap/utf8.hpp"

namespace suction::imap {

namespace {

bool plain_byte(unsigned char c) { return c > 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '='; }

// Code points some log readers take as a line break or a control.
bool breaks_lines(char32_t c) { return (c >= 0x80 && c <= 0x9f) || c == 0x2028 || c == 0x2029; }

}  // namespace

std::string log_value(std::string_view s) {
  bool plain = !s.empty();
  for (unsigned char c : s) plain = plain && plain_byte(c);
  if (plain) return std::string(s);

  std::string out = "\"";
  char esc[16];
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
      ++i;
    } else if (c < 0x20 || c == 0x7f || c == '=') {
      // '=' too: then no " key=" can appear inside a value, not even for a
      // careless regex like "login failed .*? client=<HOST>".
      std::snprintf(esc, sizeof esc, "\\x%02x", c);
      out += esc;
      ++i;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
    } else {
      utf8_char u = decode_utf8(s, i);
      if (u.size == 0) {
        std::snprintf(esc, sizeof esc, "\\x%02x", c);
        out += esc;
        ++i;
      } else if (breaks_lines(u.value)) {
        std::snprintf(esc, sizeof esc, "\\u{%04x}", static_cast<unsigned>(u.value));
        out += esc;
        i += u.size;
      } else {
        out.append(s.substr(i, u.size));
        i += u.size;
      }
    }
  }
  return out + "\"";
}

}  // namespace suction::imap
