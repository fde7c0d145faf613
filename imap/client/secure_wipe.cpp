#include "imap/client/secure_wipe.hpp"

#include <openssl/crypto.h>

namespace suction::imap {

void secure_wipe(std::string& secret) {
  // The whole buffer, not only size(): a string that was shortened or moved
  // from (its small-string buffer keeps the bytes) still holds them there.
  secret.resize(secret.capacity());
  OPENSSL_cleanse(secret.data(), secret.size());
  secret.clear();
}

}  // namespace suction::imap
