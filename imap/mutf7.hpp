// Modified UTF-7 mailbox names (RFC 3501 section 5.1.3), both ways.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace suction::imap {

// UTF-8 -> modified UTF-7. nullopt when the input is not valid UTF-8.
std::optional<std::string> mutf7_encode(std::string_view utf8);

// Modified UTF-7 -> UTF-8. nullopt for anything RFC 3501 forbids: raw 8-bit
// bytes, an unterminated shift, bad base64, leftover bits, broken surrogates,
// or printable ASCII hidden inside a base64 run.
std::optional<std::string> mutf7_decode(std::string_view mutf7);

}  // namespace suction::imap
