#include "imap/mutf7.hpp"

#include "imap/utf8.hpp"

#include <cstdint>
#include <vector>

namespace suction::imap {
namespace {

constexpr char kAlphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == ',') return 63;
  return -1;
}

bool is_direct(std::uint32_t cp) { return cp >= 0x20 && cp <= 0x7e; }

void flush_base64(std::string& out, const std::vector<std::uint16_t>& units) {
  out += '&';
  std::uint32_t bits = 0;
  int nbits = 0;
  for (std::uint16_t u : units) {
    bits = (bits << 16) | u;
    nbits += 16;
    while (nbits >= 6) {
      nbits -= 6;
      out += kAlphabet[(bits >> nbits) & 0x3f];
    }
  }
  if (nbits > 0) out += kAlphabet[(bits << (6 - nbits)) & 0x3f];
  out += '-';
}

}  // namespace

std::optional<std::string> mutf7_encode(std::string_view utf8) {
  std::string out;
  out.reserve(utf8.size());
  std::vector<std::uint16_t> pending;
  std::size_t i = 0;
  while (i < utf8.size()) {
    const utf8_char c = decode_utf8(utf8, i);
    if (c.size == 0) return std::nullopt;
    std::uint32_t cp = c.value;
    i += c.size;
    if (is_direct(cp)) {
      if (!pending.empty()) {
        flush_base64(out, pending);
        pending.clear();
      }
      if (cp == '&') out += "&-";
      else out += static_cast<char>(cp);
    } else if (cp < 0x10000) {
      pending.push_back(static_cast<std::uint16_t>(cp));
    } else {
      cp -= 0x10000;
      pending.push_back(static_cast<std::uint16_t>(0xd800 | (cp >> 10)));
      pending.push_back(static_cast<std::uint16_t>(0xdc00 | (cp & 0x3ff)));
    }
  }
  if (!pending.empty()) flush_base64(out, pending);
  return out;
}

std::optional<std::string> mutf7_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  std::size_t i = 0;
  while (i < in.size()) {
    char c = in[i];
    if (!is_direct(static_cast<unsigned char>(c))) return std::nullopt;
    if (c != '&') {
      out += c;
      ++i;
      continue;
    }
    ++i;
    if (i < in.size() && in[i] == '-') {
      out += '&';
      ++i;
      continue;
    }
    std::uint32_t bits = 0;
    int nbits = 0;
    std::uint32_t high_surrogate = 0;
    bool any = false;
    while (true) {
      if (i >= in.size()) return std::nullopt;  // unterminated shift
      char d = in[i++];
      if (d == '-') break;
      int v = base64_value(d);
      if (v < 0) return std::nullopt;
      bits = (bits << 6) | static_cast<std::uint32_t>(v);
      nbits += 6;
      if (nbits >= 16) {
        nbits -= 16;
        auto unit = static_cast<std::uint16_t>((bits >> nbits) & 0xffff);
        bits &= (1u << nbits) - 1;
        any = true;
        if (high_surrogate) {
          if (unit < 0xdc00 || unit > 0xdfff) return std::nullopt;
          append_utf8(out, 0x10000 + ((high_surrogate - 0xd800) << 10) + (unit - 0xdc00));
          high_surrogate = 0;
        } else if (unit >= 0xd800 && unit <= 0xdbff) {
          high_surrogate = unit;
        } else if (unit >= 0xdc00 && unit <= 0xdfff) {
          return std::nullopt;
        } else {
          if (is_direct(unit)) return std::nullopt;  // must have been sent directly
          append_utf8(out, unit);
        }
      }
    }
    // Leftover bits must be fewer than 6 and zero; a run must hold something.
    if (!any || high_surrogate || nbits >= 6 || (bits & ((1u << nbits) - 1)) != 0)
      return std::nullopt;
  }
  return out;
}

}  // namespace suction::imap
