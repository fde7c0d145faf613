// Error codes of the IMAP layer. Expected protocol and network outcomes are
// error_code values of this category, never exceptions (STYLE.md rule 6).
#pragma once

#include <system_error>

namespace suction::imap {

enum class errc {
  ok = 0,
  // parser: input that breaks the grammar or a configured limit
  syntax = 1,
  line_too_long,
  literal_too_large,
  nesting_too_deep,
  bad_literal,
  bad_mailbox_name,
  bad_sequence_set,
  nul_in_string,  // commands: a NUL byte in a quoted string or a literal (Dovecot refuses it)
  // client: outcomes of talking to a server
  connect_failed,
  tls_failed,
  timeout,
  connection_closed,
  bad_greeting,
  server_bye,
  command_no,
  command_bad,
  auth_failed,
  protocol_violation,
  not_supported,
  busy,
  literal_source_short,  // our own source gave fewer bytes than announced
};

const std::error_category& category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), category()};
}

}  // namespace suction::imap

template <>
struct std::is_error_code_enum<suction::imap::errc> : std::true_type {};
