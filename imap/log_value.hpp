// How every value that came from outside (a client, a server) is written into
// a key=value log line: so that no user name or server text can forge a field,
// a line, or an address that fail2ban would ban.
#pragma once

#include <string>
#include <string_view>

namespace suction::imap {

// As is when "plain" (printable ASCII, no space, '"', '\', '='); else in double
// quotes with '"' and '\' backslashed, control bytes, '=' and invalid UTF-8 as
// \xNN, and the Unicode line breaks and C1 controls (NEL U+0085, U+2028,
// U+2029, U+0080..U+009F) as \u{XXXX}. The empty string is "".
std::string log_value(std::string_view s);

}  // namespace suction::imap
