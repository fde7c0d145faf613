#include "imap/client/secure_wipe.hpp"

#include <openssl/crypto.h>

namespace suction::imap {

void secure_wipe(std::string& secret) {
  if (!secret.empty()) OPENSSL_cleanse(secret.data(), secret.size());
  secret.clear();
}

}  // namespace suction::imap
