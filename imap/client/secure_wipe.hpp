// Overwrites a secret in memory (OPENSSL_cleanse: not optimized away), its
// whole buffer up to capacity(), and empties it. For passwords and anything that carried one.
#pragma once

#include <string>

namespace suction::imap {

void secure_wipe(std::string& secret);

// A string wiped whatever way its holder goes. Copies in, never moves out
// (a moved-from small string would keep its bytes).
struct secret {
  std::string value;
  secret() = default;
  explicit secret(const std::string& v) : value(v) {}
  secret(const secret&) = delete;
  secret& operator=(const secret&) = delete;
  ~secret() { secure_wipe(value); }
};

}  // namespace suction::imap
