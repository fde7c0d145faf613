// Base64 (RFC 4648) as SASL uses it in AUTHENTICATE exchanges.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace suction::imap {

std::string base64_encode(std::string_view bytes);
// nullopt for characters outside the alphabet, bad padding or a bad length.
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace suction::imap
