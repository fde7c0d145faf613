// Overwrites a secret in memory (OPENSSL_cleanse: not optimized away), its
// whole buffer up to capacity(), and empties it. For passwords and anything that carried one.
#pragma once

#include <string>

namespace suction::imap {

void secure_wipe(std::string& secret);

}  // namespace suction::imap
