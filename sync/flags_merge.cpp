#include "sync/flags_merge.hpp"

#include <algorithm>
#include <cstdio>
#include <map>

#include "imap/value.hpp"

namespace suction::sync {
namespace {

constexpr std::string_view kSystemFlags[] = {"\\Answered", "\\Deleted", "\\Draft", "\\Flagged", "\\Seen"};

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return out;
}

bool contains(std::span<const std::string> set, std::string_view flag) {
  return std::any_of(set.begin(), set.end(), [&](const std::string& f) { return imap::iequals(f, flag); });
}

// Header fields as they will be compared: each field unfolded onto one line,
// its name lower-cased, surrounding white space trimmed, fields sorted.
std::string canonical_headers(std::string_view raw) {
  std::vector<std::string> fields;
  std::string current;
  std::size_t pos = 0;
  while (pos < raw.size()) {
    std::size_t eol = raw.find('\n', pos);
    std::string_view line = raw.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos);
    pos = eol == std::string_view::npos ? raw.size() : eol + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    if ((line[0] == ' ' || line[0] == '\t') && !current.empty()) {  // continuation
      std::size_t start = line.find_first_not_of(" \t");
      current += ' ';
      if (start != std::string_view::npos) current.append(line.substr(start));
      continue;
    }
    if (!current.empty()) fields.push_back(std::move(current));
    current.clear();
    std::size_t colon = line.find(':');
    std::string_view value = colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
    std::size_t start = value.find_first_not_of(" \t");
    current = lower(line.substr(0, colon)) + ":" +
              std::string(start == std::string_view::npos ? std::string_view() : value.substr(start));
  }
  if (!current.empty()) fields.push_back(std::move(current));
  for (auto& f : fields)
    while (!f.empty() && (f.back() == ' ' || f.back() == '\t')) f.pop_back();
  std::sort(fields.begin(), fields.end());
  std::string out;
  for (auto& f : fields) out += f + "\n";
  return out;
}

std::uint64_t fnv1a64(std::string_view s) {
  std::uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

std::vector<std::string> normalize_flags(std::span<const std::string> flags) {
  std::vector<std::string> out;
  for (const auto& f : flags) {
    if (f.empty() || imap::iequals(f, "\\Recent")) continue;
    std::string canonical = f;
    for (auto sys : kSystemFlags)
      if (imap::iequals(f, sys)) canonical = sys;
    if (!contains(out, canonical)) out.push_back(std::move(canonical));
  }
  std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) { return lower(a) < lower(b); });
  return out;
}

std::string join_flags(std::span<const std::string> normalized) {
  std::string out;
  for (const auto& f : normalized) {
    if (!out.empty()) out += ' ';
    out += f;
  }
  return out;
}

std::vector<std::string> split_flags(std::string_view joined) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < joined.size()) {
    std::size_t end = joined.find(' ', pos);
    if (end == std::string_view::npos) end = joined.size();
    if (end > pos) out.emplace_back(joined.substr(pos, end - pos));
    pos = end + 1;
  }
  return normalize_flags(out);
}

flag_merge merge_flags(std::span<const std::string> base_in, std::span<const std::string> legacy_in,
                       std::span<const std::string> fresh_in) {
  auto base = normalize_flags(base_in);
  auto legacy = normalize_flags(legacy_in);
  auto fresh = normalize_flags(fresh_in);
  flag_merge m;
  m.agreed = legacy;
  std::vector<std::string> all = base;
  for (const auto& f : legacy)
    if (!contains(all, f)) all.push_back(f);
  for (const auto& f : all) {
    bool b = contains(base, f), l = contains(legacy, f), n = contains(fresh, f);
    if (l == b || n != b) continue;  // legacy did not change it, or the user did
    (l ? m.add : m.remove).push_back(f);
  }
  m.add = normalize_flags(m.add);
  m.remove = normalize_flags(m.remove);
  return m;
}

std::string content_signature(std::uint64_t size, std::int64_t internaldate_epoch,
                              std::string_view header_fields) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%llu:%lld:%016llx", static_cast<unsigned long long>(size),
                static_cast<long long>(internaldate_epoch),
                static_cast<unsigned long long>(fnv1a64(canonical_headers(header_fields))));
  return buf;
}

std::vector<std::pair<std::uint32_t, std::uint32_t>> match_by_signature(
    std::span<const std::pair<std::uint32_t, std::string>> legacy,
    std::span<const std::pair<std::uint32_t, std::string>> fresh) {
  // signature -> new UIDs in UID order, consumed front to back
  std::map<std::string, std::vector<std::uint32_t>> available;
  std::vector<std::pair<std::uint32_t, std::string>> fresh_sorted(fresh.begin(), fresh.end());
  std::sort(fresh_sorted.begin(), fresh_sorted.end());
  for (const auto& [uid, sig] : fresh_sorted) available[sig].push_back(uid);
  std::map<std::string, std::size_t> used;
  std::vector<std::pair<std::uint32_t, std::string>> legacy_sorted(legacy.begin(), legacy.end());
  std::sort(legacy_sorted.begin(), legacy_sorted.end());
  std::vector<std::pair<std::uint32_t, std::uint32_t>> out;
  for (const auto& [uid, sig] : legacy_sorted) {
    auto it = available.find(sig);
    if (it == available.end()) continue;
    std::size_t& n = used[sig];
    if (n < it->second.size()) out.emplace_back(uid, it->second[n++]);
  }
  return out;
}

}  // namespace suction::sync
