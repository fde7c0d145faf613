#include "imap/serialize.hpp"

#include "imap/mutf7.hpp"
#include "imap/value.hpp"

namespace suction::imap {
namespace {

// ATOM-CHAR plus ']' (RFC 9051 ASTRING-CHAR).
bool is_astring_char(unsigned char c) {
  if (c <= 0x20 || c >= 0x7f) return false;
  switch (c) {
    case '(': case ')': case '{': case '%': case '*': case '"': case '\\':
      return false;
    default:
      return true;
  }
}

bool is_quotable(unsigned char c) { return c != 0 && c != '\r' && c != '\n' && c < 0x80; }

}  // namespace

string_form string_form_of(std::string_view s) {
  for (unsigned char c : s)
    if (!is_quotable(c)) return string_form::literal;
  return string_form::quoted;
}

string_form astring_form(std::string_view s) {
  if (s.empty() || iequals(s, "NIL")) return string_form::quoted;
  bool atom = true;
  for (unsigned char c : s) {
    if (!is_quotable(c)) return string_form::literal;
    if (!is_astring_char(c)) atom = false;
  }
  return atom ? string_form::atom : string_form::quoted;
}

void append_quoted(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
}

command_builder::command_builder(std::string_view tag, std::string_view head, bool non_sync)
    : non_sync_(non_sync) {
  parts_.emplace_back();
  parts_.back().append(tag).append(" ").append(head);
}

void command_builder::space() {
  if (need_space_) parts_.back() += ' ';
  need_space_ = true;
}

command_builder& command_builder::atom(std::string_view s) {
  space();
  parts_.back() += s;
  return *this;
}

void command_builder::literal_header(std::uint64_t size, bool binary) {
  space();
  auto& p = parts_.back();
  if (binary) p += '~';
  p += '{';
  p += std::to_string(size);
  if (non_sync_) p += '+';
  p += "}\r\n";
}

void command_builder::literal(std::string_view s) {
  literal_header(s.size(), false);
  if (!non_sync_) parts_.emplace_back();  // wait for "+" before the body
  parts_.back() += s;
}

command_builder& command_builder::astring(std::string_view s) {
  switch (astring_form(s)) {
    case string_form::atom: return atom(s);
    case string_form::quoted: space(); append_quoted(parts_.back(), s); return *this;
    case string_form::literal: literal(s); return *this;
  }
  return *this;
}

command_builder& command_builder::string(std::string_view s) {
  if (string_form_of(s) == string_form::literal) {
    literal(s);
  } else {
    space();
    append_quoted(parts_.back(), s);
  }
  return *this;
}

bool command_builder::mailbox(std::string_view utf8_name, bool utf8_accept) {
  if (utf8_accept) {
    astring(utf8_name);
    return true;
  }
  auto encoded = mutf7_encode(utf8_name);
  if (!encoded) return false;
  // INBOX is case-insensitive; send it in its canonical spelling.
  astring(iequals(*encoded, "INBOX") ? std::string("INBOX") : *encoded);
  return true;
}

command_builder command_builder::continuation(bool non_sync) {
  command_builder b;
  b.non_sync_ = non_sync;
  b.parts_.emplace_back();
  return b;
}

std::vector<std::string> command_builder::finish() && {
  parts_.back() += "\r\n";
  return std::move(parts_);
}

std::vector<std::string> command_builder::finish_before_literal(std::uint64_t size,
                                                                bool binary) && {
  literal_header(size, binary);
  return std::move(parts_);
}

}  // namespace suction::imap
