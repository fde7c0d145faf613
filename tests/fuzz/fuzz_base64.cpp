#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "imap/base64.hpp"

using namespace suction::imap;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto enc = base64_encode(in);
  auto dec = base64_decode(enc);
  if (!dec || *dec != in) std::abort();
  if (auto d = base64_decode(in)) {
    if (base64_decode(base64_encode(*d)) != *d) std::abort();
  }
  return 0;
}
