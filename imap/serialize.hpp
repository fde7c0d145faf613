// Writing IMAP: every string in the form that carries it exactly.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace suction::imap {

enum class string_form : std::uint8_t { atom, quoted, literal };

// The cheapest form for s as an astring: atom where every byte is an
// ASTRING-CHAR, quoted where it is 7-bit text without CR/LF/NUL, else a literal.
string_form astring_form(std::string_view s);
// The same for a string that may not be an atom (IMAP "string").
string_form string_form_of(std::string_view s);

// "..." with \ and " escaped. Precondition: string_form_of(s) != literal.
void append_quoted(std::string& out, std::string_view s);

// Builds one client command as wire parts. A synchronizing literal ends a part:
// the client sends part k+1 only after the server's "+" continuation. With
// LITERAL+ (non_sync_literals) every literal is {n+} and nothing waits.
class command_builder {
 public:
  // `head` is the command name with any fixed words, e.g. "LOGIN" or "UID FETCH".
  command_builder(std::string_view tag, std::string_view head, bool non_sync_literals);
  // The rest of a command after a literal body the caller streamed itself
  // (the next message of a MULTIAPPEND, or just the final CRLF).
  static command_builder continuation(bool non_sync_literals);

  command_builder& atom(std::string_view s);       // written as is (also sequence sets, lists)
  command_builder& astring(std::string_view s);
  command_builder& string(std::string_view s);
  // A mailbox name given in UTF-8; encoded to modified UTF-7 unless utf8_accept.
  // Returns false (and writes nothing) if the name is not valid UTF-8.
  bool mailbox(std::string_view utf8_name, bool utf8_accept = false);
  // Ends the command with CRLF and returns the parts.
  std::vector<std::string> finish() &&;
  // Ends with the announcement of a literal of `size` bytes whose body the
  // caller streams itself (APPEND); with synchronizing literals the caller
  // waits for "+" after the last part.
  std::vector<std::string> finish_before_literal(std::uint64_t size, bool binary = false) &&;

 private:
  command_builder() = default;
  void space();
  void literal(std::string_view s);
  void literal_header(std::uint64_t size, bool binary);
  std::vector<std::string> parts_;
  bool non_sync_ = false;
  bool need_space_ = true;
};

}  // namespace suction::imap
