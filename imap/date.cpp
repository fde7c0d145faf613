#include "imap/date.hpp"

#include <cstdio>

#include "imap/value.hpp"

namespace suction::imap {
namespace {

constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

void civil_from_days(std::int64_t z, std::int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  y = static_cast<std::int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y += m <= 2;
}

bool digits(std::string_view s, std::size_t pos, std::size_t n, int& out) {
  if (pos + n > s.size()) return false;
  out = 0;
  for (std::size_t i = 0; i < n; ++i) {
    char c = s[pos + i];
    if (c < '0' || c > '9') return false;
    out = out * 10 + (c - '0');
  }
  return true;
}

}  // namespace

std::optional<date_time> parse_date_time(std::string_view s) {
  if (!s.empty() && s[0] == ' ') s.remove_prefix(1);  // date-day-fixed: " 7-Jul-..."
  std::size_t dash = s.find('-');
  if (dash == std::string_view::npos || dash < 1 || dash > 2) return std::nullopt;
  int day, year, hh, mm, ss, zh, zm;
  if (!digits(s, 0, dash, day)) return std::nullopt;
  s.remove_prefix(dash + 1);
  // "Jul-1996 02:44:25 -0700"
  if (s.size() != 23 || s[3] != '-' || s[8] != ' ' || s[11] != ':' || s[14] != ':' ||
      s[17] != ' ' || (s[18] != '+' && s[18] != '-'))
    return std::nullopt;
  int month = -1;
  for (int i = 0; i < 12; ++i)
    if (iequals(s.substr(0, 3), kMonths[i])) month = i + 1;
  if (month < 0 || !digits(s, 4, 4, year) || !digits(s, 9, 2, hh) || !digits(s, 12, 2, mm) ||
      !digits(s, 15, 2, ss) || !digits(s, 19, 2, zh) || !digits(s, 21, 2, zm))
    return std::nullopt;
  static constexpr int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (day < 1 || day > kDays[month - 1] || hh > 23 || mm > 59 || ss > 60 || zm > 59)
    return std::nullopt;
  int offset = (zh * 60 + zm) * (s[18] == '-' ? -1 : 1);
  std::int64_t local = days_from_civil(year, static_cast<unsigned>(month), static_cast<unsigned>(day)) * 86400 +
                       hh * 3600 + mm * 60 + ss;
  return date_time{local - offset * 60, offset};
}

std::string format_date_time(const date_time& t) {
  std::int64_t local = t.epoch_seconds + t.offset_minutes * 60;
  std::int64_t days = local >= 0 ? local / 86400 : (local - 86399) / 86400;
  std::int64_t secs = local - days * 86400;
  std::int64_t y;
  unsigned m, d;
  civil_from_days(days, y, m, d);
  int off = t.offset_minutes < 0 ? -t.offset_minutes : t.offset_minutes;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%02u-%s-%04lld %02lld:%02lld:%02lld %c%02d%02d", d, kMonths[m - 1],
                static_cast<long long>(y), static_cast<long long>(secs / 3600),
                static_cast<long long>(secs / 60 % 60), static_cast<long long>(secs % 60),
                t.offset_minutes < 0 ? '-' : '+', off / 60, off % 60);
  return buf;
}

}  // namespace suction::imap
