#include "proxy/proxy_protocol.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>

namespace suction::proxy {

namespace {

constexpr std::string_view kV1 = "PROXY ";
constexpr std::size_t kV1Max = 107;  // the spec's longest v1 line, CRLF included
constexpr std::string_view kV2Signature{"\r\n\r\n\0\r\nQUIT\n", 12};

header_parse invalid(std::string error) {
  header_parse p;
  p.status = header_status::invalid;
  p.error = std::move(error);
  return p;
}

std::vector<std::string_view> split_spaces(std::string_view line) {
  std::vector<std::string_view> out;
  std::size_t pos = 0;
  while (pos <= line.size()) {
    const std::size_t sp = line.find(' ', pos);
    out.push_back(line.substr(pos, sp == std::string_view::npos ? std::string_view::npos : sp - pos));
    if (sp == std::string_view::npos) break;
    pos = sp + 1;
  }
  return out;
}

std::optional<std::uint16_t> port_of(std::string_view s) {
  // Decimal without leading zeros (the spec's form), 0..65535.
  if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  unsigned v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || end != s.data() + s.size() || v > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(v);
}

bool is_family(std::string_view ip, int family) {
  std::string text(ip);
  unsigned char out[16];
  return ::inet_pton(family, text.c_str(), out) == 1;
}

header_parse parse_v1(std::string_view data) {
  const std::size_t crlf = data.find("\r\n");
  if (crlf == std::string_view::npos) {
    if (data.size() >= kV1Max) return invalid("v1 header longer than 107 bytes");
    return {};
  }
  if (crlf + 2 > kV1Max) return invalid("v1 header longer than 107 bytes");
  const auto f = split_spaces(data.substr(0, crlf));
  header_parse p;
  p.status = header_status::ok;
  p.size = crlf + 2;
  if (f.size() >= 2 && f[1] == "UNKNOWN") {  // the sender does not know: the connection's own
    p.header.local = true;
    return p;
  }
  if (f.size() != 6) return invalid("v1 header without PROXY TCP4|TCP6 SRC DST SPORT DPORT");
  const int family = f[1] == "TCP4" ? AF_INET : f[1] == "TCP6" ? AF_INET6 : 0;
  if (family == 0) return invalid("v1 header with an unknown protocol");
  if (!is_family(f[2], family) || !is_family(f[3], family))
    return invalid("v1 header with an address that is not " + std::string(f[1]));
  const auto sport = port_of(f[4]), dport = port_of(f[5]);
  if (!sport || !dport) return invalid("v1 header with a bad port");
  p.header.address = std::string(f[2]);
  p.header.port = *sport;
  return p;
}

std::string ip_text(int family, const unsigned char* bytes) {
  char buf[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(family, bytes, buf, sizeof buf);
  return buf;
}

header_parse parse_v2(std::string_view data) {
  if (data.size() < 16) return {};
  const auto* b = reinterpret_cast<const unsigned char*>(data.data());
  const unsigned version = b[12] >> 4, command = b[12] & 0x0f;
  const unsigned family = b[13];
  const std::size_t length = (std::size_t{b[14]} << 8) | b[15];
  if (version != 2) return invalid("v2 header with version " + std::to_string(version));
  if (command > 1) return invalid("v2 header with an unknown command");
  if (16 + length > kMaxProxyHeader) return invalid("v2 header longer than 1024 bytes");
  if (data.size() < 16 + length) return {};
  header_parse p;
  p.status = header_status::ok;
  p.size = 16 + length;
  if (command == 0) {  // LOCAL: the balancer's own connection (a health check)
    p.header.local = true;
    return p;
  }
  const unsigned char* a = b + 16;
  switch (family) {
    case 0x00:  // UNSPEC: the sender does not know; the connection's own address stands
      p.header.local = true;
      return p;
    case 0x11:  // TCP over IPv4: src, dst, sport, dport
      if (length < 12) return invalid("v2 header too short for IPv4 addresses");
      p.header.address = ip_text(AF_INET, a);
      p.header.port = static_cast<std::uint16_t>((a[8] << 8) | a[9]);
      return p;
    case 0x21:  // TCP over IPv6
      if (length < 36) return invalid("v2 header too short for IPv6 addresses");
      p.header.address = ip_text(AF_INET6, a);
      p.header.port = static_cast<std::uint16_t>((a[32] << 8) | a[33]);
      return p;
    default:
      return invalid("v2 header for a protocol other than TCP over IPv4 or IPv6");
  }
}

}  // namespace

header_parse parse_proxy_header(std::string_view data) {
  const std::size_t n = std::min(data.size(), kV2Signature.size());
  if (data.substr(0, n) == kV2Signature.substr(0, n)) {
    if (data.size() < kV2Signature.size()) return {};
    return parse_v2(data);
  }
  const std::size_t m = std::min(data.size(), kV1.size());
  if (data.substr(0, m) == kV1.substr(0, m)) {
    if (data.size() < kV1.size()) return {};
    return parse_v1(data);
  }
  return invalid("no PROXY protocol header");
}

bool starts_proxy_header(std::string_view data) {
  if (data.empty()) return false;
  const std::size_t n = std::min(data.size(), kV2Signature.size());
  if (data.substr(0, n) == kV2Signature.substr(0, n) && n >= 4) return true;
  return data.starts_with(kV1);
}

std::optional<std::array<std::uint8_t, 16>> ip_bytes(std::string_view ip) {
  std::string text(ip);
  std::array<std::uint8_t, 16> out{};
  unsigned char v4[4];
  if (::inet_pton(AF_INET, text.c_str(), v4) == 1) {
    out[10] = out[11] = 0xff;
    std::memcpy(out.data() + 12, v4, 4);
    return out;
  }
  if (::inet_pton(AF_INET6, text.c_str(), out.data()) == 1) return out;
  return std::nullopt;
}

std::optional<cidr> parse_cidr(std::string_view text) {
  const std::size_t slash = text.find('/');
  const std::string_view ip = text.substr(0, slash);
  auto bytes = ip_bytes(ip);
  if (!bytes) return std::nullopt;
  const bool v4 = ip.find(':') == std::string_view::npos;
  unsigned prefix = v4 ? 32 : 128;
  if (slash != std::string_view::npos) {
    const std::string_view p = text.substr(slash + 1);
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), prefix);
    if (p.empty() || ec != std::errc{} || end != p.data() + p.size() || prefix > (v4 ? 32u : 128u))
      return std::nullopt;
  }
  cidr c;
  c.prefix = v4 ? prefix + 96 : prefix;
  // The host bits are cleared: "10.1.2.3/8" is 10.0.0.0/8.
  for (unsigned i = 0; i < 16; ++i) {
    const unsigned bits = c.prefix > i * 8 ? std::min(8u, c.prefix - i * 8) : 0;
    c.net[i] = static_cast<std::uint8_t>((*bytes)[i] & (bits == 0 ? 0 : 0xff << (8 - bits)));
  }
  return c;
}

bool cidr::contains(std::string_view ip) const {
  auto bytes = ip_bytes(ip);
  if (!bytes) return false;
  for (unsigned i = 0; i < 16; ++i) {
    const unsigned bits = prefix > i * 8 ? std::min(8u, prefix - i * 8) : 0;
    if (bits == 0) break;
    const auto mask = static_cast<std::uint8_t>(0xff << (8 - bits));
    if (((*bytes)[i] & mask) != net[i]) return false;
  }
  return true;
}

bool trusted(const std::vector<cidr>& from, std::string_view ip) {
  return std::ranges::any_of(from, [&](const cidr& c) { return c.contains(ip); });
}

}  // namespace suction::proxy
