// UTF-8 one code point at a time, strict: overlong forms, surrogates and
// values above U+10FFFF are invalid.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace suction::imap {

struct utf8_char {
  char32_t value = 0;
  std::size_t size = 0;  // bytes used; 0: not valid UTF-8 at this byte
};

utf8_char decode_utf8(std::string_view s, std::size_t i);
void append_utf8(std::string& out, char32_t c);

}  // namespace suction::imap
