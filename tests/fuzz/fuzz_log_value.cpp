// imap::log_value on any bytes: the result is one log token that cannot end
// the line, close its quotes early, or hold a " key=" a log reader would take
// for a field (issue 11: log injection, fail2ban).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "imap/log_value.hpp"

using namespace suction::imap;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::string out = log_value(in);
  if (out.empty()) std::abort();
  for (unsigned char c : out)
    if (c < 0x20 || c == 0x7f || c == '=') std::abort();
  if (out.front() != '"') {  // plain: exactly the input, printable ASCII without space
    if (out != in) std::abort();
    for (unsigned char c : out)
      if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\') std::abort();
    return 0;
  }
  // Quoted: the only unescaped '"' is the last byte.
  if (out.size() < 2 || out.back() != '"') std::abort();
  for (std::size_t i = 1; i + 1 < out.size(); ++i) {
    if (out[i] == '\\') {
      if (++i + 1 >= out.size()) std::abort();  // an escape never eats the closing quote
    } else if (out[i] == '"') {
      std::abort();
    }
  }
  // No Unicode line breaks in clear (NEL, U+2028, U+2029).
  if (out.find("\xc2\x85") != std::string::npos || out.find("\xe2\x80\xa8") != std::string::npos ||
      out.find("\xe2\x80\xa9") != std::string::npos)
    std::abort();
  return 0;
}
