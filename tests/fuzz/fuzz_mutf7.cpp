#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "imap/mutf7.hpp"

using namespace suction::imap;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  // UTF-8 -> mUTF-7 -> UTF-8 is the identity for every valid input.
  if (auto enc = mutf7_encode(in)) {
    for (char c : *enc)
      if (c < 0x20 || c > 0x7e) std::abort();
    auto dec = mutf7_decode(*enc);
    if (!dec || *dec != in) std::abort();
  }
  // Whatever decodes is valid UTF-8 that encodes and decodes to itself.
  if (auto dec = mutf7_decode(in)) {
    auto enc = mutf7_encode(*dec);
    if (!enc) std::abort();
    auto again = mutf7_decode(*enc);
    if (!again || *again != *dec) std::abort();
  }
  return 0;
}
