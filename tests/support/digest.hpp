// sha256 of message bytes, as tests compare copies (hex, like corpus.json).
#pragma once

#include <openssl/evp.h>

#include <string>
#include <string_view>

namespace suction::test {

// A digest's bytes in lowercase hex.
inline std::string to_hex(const unsigned char* md, unsigned int len) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += digits[md[i] >> 4];
    out += digits[md[i] & 15];
  }
  return out;
}

inline std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return to_hex(md, len);
}

}  // namespace suction::test
