// proxy::parse_proxy_header on any bytes (issue 12 must 4): the first bytes of
// every connection from a trusted balancer. Never reads past its input, never
// claims more bytes than it was given or than kMaxProxyHeader, and an accepted
// header names a real address; fed one byte more at a time it never changes its
// mind about a prefix it already accepted or refused.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "proxy/proxy_protocol.hpp"

using namespace suction::proxy;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const header_parse whole = parse_proxy_header(in);
  if (whole.status == header_status::ok) {
    if (whole.size == 0 || whole.size > in.size() || whole.size > kMaxProxyHeader) std::abort();
    if (!whole.header.local && !ip_bytes(whole.header.address)) std::abort();
    if (!starts_proxy_header(in)) std::abort();
  }
  if (whole.status == header_status::invalid && whole.error.empty()) std::abort();
  // Resumption: the first prefix that decides decides the same as the whole.
  for (std::size_t n = 0; n <= in.size() && n <= kMaxProxyHeader + 1; ++n) {
    const header_parse part = parse_proxy_header(in.substr(0, n));
    if (part.status == header_status::need_more) continue;
    if (part.status != whole.status) std::abort();
    if (part.status == header_status::ok &&
        (part.size != whole.size || part.header.address != whole.header.address ||
         part.header.port != whole.header.port))
      std::abort();
    break;
  }
  return 0;
}
