// The PROXY protocol header and the trusted networks (proxy/proxy_protocol.hpp), without sockets.
#include <doctest/doctest.h>

#include <string>

#include "proxy/proxy_protocol.hpp"

using namespace suction::proxy;

namespace {

std::string v2(unsigned char command, unsigned char family, const std::string& body) {
  std::string h("\r\n\r\n\0\r\nQUIT\n", 12);
  h += static_cast<char>(0x20 | command);
  h += static_cast<char>(family);
  h += static_cast<char>(body.size() >> 8);
  h += static_cast<char>(body.size() & 0xff);
  return h + body;
}

const std::string v4_body("\xc0\x00\x02\x07" "\x0a\x00\x00\x01" "\x9c\x40" "\x00\x8f", 12);

}  // namespace

TEST_CASE("proxy protocol v1: TCP4, TCP6, UNKNOWN, and what follows stays unread") {
  auto p = parse_proxy_header("PROXY TCP4 192.0.2.7 10.0.0.1 40000 143\r\na1 CAPABILITY\r\n");
  REQUIRE(p.status == header_status::ok);
  CHECK(p.size == 41);
  CHECK(p.header.address == "192.0.2.7");
  CHECK(p.header.port == 40000);
  CHECK_FALSE(p.header.local);
  p = parse_proxy_header("PROXY TCP6 2001:db8::7 2001:db8::1 65535 993\r\n");
  REQUIRE(p.status == header_status::ok);
  CHECK(p.header.address == "2001:db8::7");
  CHECK(p.header.port == 65535);
  p = parse_proxy_header("PROXY UNKNOWN\r\n");
  REQUIRE(p.status == header_status::ok);
  CHECK(p.header.local);
  CHECK(parse_proxy_header("PROXY TCP4 192.0.2.7 10.0.0.1 400").status == header_status::need_more);
  CHECK(parse_proxy_header("PRO").status == header_status::need_more);
}

TEST_CASE("proxy protocol v1: every malformed header refused with a reason") {
  for (const char* bad : {
           "PROXY TCP4 192.0.2.7 10.0.0.1 40000\r\n",          // a field missing
           "PROXY TCP4 2001:db8::7 10.0.0.1 40000 143\r\n",    // v6 address as TCP4
           "PROXY TCP6 192.0.2.7 2001:db8::1 40000 143\r\n",   // v4 address as TCP6
           "PROXY UDP4 192.0.2.7 10.0.0.1 40000 143\r\n",      // not TCP
           "PROXY TCP4 192.0.2.7 10.0.0.1 65536 143\r\n",      // port out of range
           "PROXY TCP4 192.0.2.7 10.0.0.1 040000 143\r\n",     // a leading zero
           "PROXY TCP4 192.0.2.7  10.0.0.1 40000 143\r\n",     // two spaces
           "PROXY TCP4 192.0.2.777 10.0.0.1 40000 143\r\n",    // not an address
           "a1 LOGIN alice wonderland\r\n",                    // an IMAP client
       }) {
    INFO(bad);
    auto p = parse_proxy_header(bad);
    CHECK(p.status == header_status::invalid);
    CHECK_FALSE(p.error.empty());
  }
  // No CRLF within 107 bytes: refused, not waited for.
  CHECK(parse_proxy_header("PROXY TCP4 " + std::string(100, '1')).status == header_status::invalid);
}

TEST_CASE("proxy protocol v2: PROXY over IPv4 and IPv6, LOCAL, TLVs skipped") {
  auto p = parse_proxy_header(v2(1, 0x11, v4_body) + "after");
  REQUIRE(p.status == header_status::ok);
  CHECK(p.size == 28);
  CHECK(p.header.address == "192.0.2.7");
  CHECK(p.header.port == 40000);
  std::string v6(36, '\0');
  v6[0] = '\x20', v6[1] = '\x01', v6[2] = '\x0d', v6[3] = '\xb8', v6[15] = '\x07';
  v6[32] = '\x01', v6[33] = '\xbb';
  p = parse_proxy_header(v2(1, 0x21, v6 + std::string("\x04\x00\x01x", 4)));  // + a NOOP TLV
  REQUIRE(p.status == header_status::ok);
  CHECK(p.header.address == "2001:db8::7");
  CHECK(p.header.port == 443);
  CHECK(p.size == 16 + 40);
  p = parse_proxy_header(v2(0, 0x00, ""));
  REQUIRE(p.status == header_status::ok);
  CHECK(p.header.local);
  // Incomplete: waits; wrong version, command, family, length: refused.
  CHECK(parse_proxy_header(v2(1, 0x11, v4_body).substr(0, 20)).status == header_status::need_more);
  std::string bad_version = v2(1, 0x11, v4_body);
  bad_version[12] = '\x11';
  CHECK(parse_proxy_header(bad_version).status == header_status::invalid);
  CHECK(parse_proxy_header(v2(2, 0x11, v4_body)).status == header_status::invalid);
  CHECK(parse_proxy_header(v2(1, 0x12, v4_body)).status == header_status::invalid);   // UDP
  CHECK(parse_proxy_header(v2(1, 0x11, v4_body.substr(0, 8))).status == header_status::invalid);
  CHECK(parse_proxy_header(v2(1, 0x11, std::string(2000, 'x'))).status == header_status::invalid);
}

TEST_CASE("proxy protocol: a header from an untrusted address is recognised") {
  CHECK(starts_proxy_header("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
  CHECK(starts_proxy_header(std::string("\r\n\r\n\0\r\nQUIT\n", 12)));
  CHECK_FALSE(starts_proxy_header("a1 CAPABILITY\r\n"));
  CHECK_FALSE(starts_proxy_header("\r\n"));  // an empty line is an IMAP client's
  CHECK_FALSE(starts_proxy_header(""));
}

TEST_CASE("trusted networks: IPv4, IPv6, mapped addresses, host bits ignored") {
  auto net = parse_cidr("10.1.2.3/8");
  REQUIRE(net);
  CHECK(net->contains("10.200.0.1"));
  CHECK(net->contains("::ffff:10.0.0.9"));
  CHECK_FALSE(net->contains("11.0.0.1"));
  auto one = parse_cidr("127.0.0.1");
  REQUIRE(one);
  CHECK(one->contains("127.0.0.1"));
  CHECK_FALSE(one->contains("127.0.0.2"));
  auto v6 = parse_cidr("2001:db8::/32");
  REQUIRE(v6);
  CHECK(v6->contains("2001:db8:ffff::1"));
  CHECK_FALSE(v6->contains("2001:db9::1"));
  CHECK_FALSE(v6->contains("10.0.0.1"));
  auto all = parse_cidr("0.0.0.0/0");
  REQUIRE(all);
  CHECK(all->contains("203.0.113.9"));
  CHECK_FALSE(all->contains("2001:db8::1"));
  for (const char* bad : {"10.0.0.0/33", "2001:db8::/129", "10.0.0/8", "10.0.0.0/", "x/8", ""})
    CHECK_FALSE(parse_cidr(bad));
  const std::vector<cidr> from{*one, *v6};
  CHECK(trusted(from, "127.0.0.1"));
  CHECK(trusted(from, "2001:db8::5"));
  CHECK_FALSE(trusted(from, "192.0.2.1"));
  CHECK_FALSE(trusted(from, "not an address"));
}

TEST_CASE("proxy protocol v2: an UNSPEC address family keeps the connection's own address") {
  auto p = parse_proxy_header(v2(1, 0x00, ""));
  REQUIRE(p.status == header_status::ok);
  CHECK(p.header.local);
}
