// IMAP sequence sets ("1:4,7,9:*") both ways.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace suction::imap {

// '*' (the largest number in use) is represented by this value.
inline constexpr std::uint32_t kSequenceStar = 0xffffffffu;

struct sequence_range {
  std::uint32_t first = 0, last = 0;  // first <= last after parsing
  bool operator==(const sequence_range&) const = default;
};

// Compact form of a list of numbers (any order, duplicates allowed): "1:3,5".
std::string format_sequence_set(std::span<const std::uint32_t> numbers);

// Parses a sequence set; nullopt when malformed (0, empty parts, garbage).
std::optional<std::vector<sequence_range>> parse_sequence_set(std::string_view s);

// Every number in the set, in order, with '*' taken as `star`. nullopt when the
// set holds more than `max_count` numbers (protects against "1:4294967295").
std::optional<std::vector<std::uint32_t>> expand_sequence_set(
    std::span<const sequence_range> set, std::uint32_t star, std::size_t max_count);

}  // namespace suction::imap
