#include "imap/sequence_set.hpp"

#include <algorithm>
#include <charconv>

namespace suction::imap {
namespace {

std::optional<std::uint32_t> parse_seq_number(std::string_view s) {
  if (s == "*") return kSequenceStar;
  if (s.empty() || s.size() > 10 || s[0] == '0') return std::nullopt;
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size() || v == 0 || v >= kSequenceStar)
    return std::nullopt;
  return static_cast<std::uint32_t>(v);
}

}  // namespace

std::string format_sequence_set(std::span<const std::uint32_t> numbers) {
  std::vector<std::uint32_t> sorted(numbers.begin(), numbers.end());
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  std::string out;
  for (std::size_t i = 0; i < sorted.size();) {
    std::size_t j = i;
    while (j + 1 < sorted.size() && sorted[j + 1] == sorted[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(sorted[i]);
    if (j > i) {
      out += ':';
      out += std::to_string(sorted[j]);
    }
    i = j + 1;
  }
  return out;
}

std::optional<std::vector<sequence_range>> parse_sequence_set(std::string_view s) {
  std::vector<sequence_range> out;
  if (s.empty()) return std::nullopt;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    std::size_t comma = s.find(',', pos);
    if (comma == std::string_view::npos) comma = s.size();
    std::string_view part = s.substr(pos, comma - pos);
    std::size_t colon = part.find(':');
    auto a = parse_seq_number(part.substr(0, colon));
    if (!a) return std::nullopt;
    std::uint32_t b = *a;
    if (colon != std::string_view::npos) {
      auto bb = parse_seq_number(part.substr(colon + 1));
      if (!bb) return std::nullopt;
      b = *bb;
    }
    out.push_back({std::min(*a, b), std::max(*a, b)});
    if (comma == s.size()) break;
    pos = comma + 1;
  }
  return out;
}

std::optional<std::vector<std::uint32_t>> expand_sequence_set(
    std::span<const sequence_range> set, std::uint32_t star, std::size_t max_count) {
  std::vector<std::uint32_t> out;
  for (auto r : set) {
    std::uint32_t first = r.first == kSequenceStar ? star : r.first;
    std::uint32_t last = r.last == kSequenceStar ? star : r.last;
    if (first > last) std::swap(first, last);
    if (static_cast<std::uint64_t>(last) - first + 1 > max_count - out.size()) return std::nullopt;
    for (std::uint64_t v = first; v <= last; ++v) out.push_back(static_cast<std::uint32_t>(v));
  }
  return out;
}

}  // namespace suction::imap
