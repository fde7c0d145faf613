// The PROXY protocol (HAProxy's, versions 1 and 2) on the listeners (issue 12
// must 4): a load balancer in front of suction says, before anything else on
// the connection, whom it accepted the connection from. Sans I/O: bytes in, a
// header or a reason out; the session peeks at the connection (MSG_PEEK) and
// then reads exactly the header's bytes, so nothing behind it (a TLS
// ClientHello) is lost. Trust is by address: `[listen] proxy_protocol_from`.
//
// Accepted: v1 "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" and "PROXY UNKNOWN
// ...\r\n" (at most 107 bytes); v2 with the PROXY command over TCP/IPv4 or
// TCP/IPv6 (TLVs skipped), or the LOCAL command (a health check: the
// connection's own address stands). Anything else is refused.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace suction::proxy {

struct proxy_header {
  bool local = false;        // v1 UNKNOWN, v2 LOCAL: no client address given
  std::string address;       // the client's IP, text
  std::uint16_t port = 0;
};

enum class header_status : std::uint8_t { need_more, ok, invalid };

struct header_parse {
  header_status status = header_status::need_more;
  std::size_t size = 0;      // ok: the header's bytes, to be read off the connection
  proxy_header header;
  std::string error;         // invalid: why, for the log (never the bytes themselves)
};

// The longest header read: v1's 107 bytes, v2's 16 + addresses + TLVs within this.
inline constexpr std::size_t kMaxProxyHeader = 1024;

// `data`: what the connection has sent so far, from its first byte.
header_parse parse_proxy_header(std::string_view data);

// Whether these first bytes of a connection start a PROXY header (v1 or v2),
// for refusing one from an address not trusted to send it.
bool starts_proxy_header(std::string_view data);

// An IPv4 or IPv6 network, "10.0.0.0/8", "2001:db8::/32", or one address.
struct cidr {
  std::array<std::uint8_t, 16> net{};  // IPv4 as ::ffff:a.b.c.d
  unsigned prefix = 128;               // over the 128 bits

  bool contains(std::string_view ip) const;
};
std::optional<cidr> parse_cidr(std::string_view text);

// "1.2.3.4" / "::1" / "::ffff:1.2.3.4" as 16 bytes (IPv4 mapped); nullopt if not an address.
std::optional<std::array<std::uint8_t, 16>> ip_bytes(std::string_view ip);

bool trusted(const std::vector<cidr>& from, std::string_view ip);

}  // namespace suction::proxy
