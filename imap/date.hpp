// IMAP date-time ("17-Jul-1996 02:44:25 -0700", RFC 3501 date-time) both ways.
// Servers that store no time zone (Dovecot's maildir and dbox) answer with the
// same instant in their own zone, so copies are compared as instants.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace suction::imap {

struct date_time {
  std::int64_t epoch_seconds = 0;  // the instant, UTC
  int offset_minutes = 0;          // the zone it was written in
};

// Accepts a space-padded or one-digit day. nullopt when malformed.
std::optional<date_time> parse_date_time(std::string_view s);
std::string format_date_time(const date_time& t);

}  // namespace suction::imap
