// The generic IMAP value tree: what the parsers build from atoms, strings,
// literals and parenthesized lists. Typed views (FETCH, LIST, STATUS, ...)
// are decoded from it in response.hpp.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace suction::imap {

enum class value_kind : std::uint8_t { atom, string, list, nil };

struct value {
  value_kind kind = value_kind::atom;
  bool literal = false;   // the string arrived as {n} / ~{n}
  bool binary = false;    // literal8 (~{n})
  bool streamed = false;  // the literal's bytes were handed out as events; text is empty
  std::uint64_t literal_size = 0;
  std::string text;             // atom or string content
  std::vector<value> items;     // list members

  bool is_atom() const { return kind == value_kind::atom; }
  bool is_string() const { return kind == value_kind::string; }
  bool is_list() const { return kind == value_kind::list; }
  bool is_nil() const { return kind == value_kind::nil; }
  // An atom, string or NIL read as text (NIL -> ""); what IMAP calls nstring/astring.
  bool is_text() const { return kind != value_kind::list; }
  // Case-insensitive comparison of an atom with an ASCII keyword.
  bool is_atom(std::string_view keyword) const;
  // The atom read as a number (number / nz-number / mod-sequence).
  std::optional<std::uint64_t> number() const;

  bool operator==(const value&) const = default;
};

// ASCII case-insensitive equality, as IMAP keywords are compared.
bool iequals(std::string_view a, std::string_view b) noexcept;
std::string to_upper(std::string_view s);
std::optional<std::uint64_t> parse_number(std::string_view s) noexcept;

}  // namespace suction::imap
