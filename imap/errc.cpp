#include "imap/errc.hpp"

#include <string>

namespace suction::imap {
namespace {

class imap_category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "imap"; }
  std::string message(int v) const override {
    switch (static_cast<errc>(v)) {
      case errc::ok: return "success";
      case errc::syntax: return "IMAP syntax error";
      case errc::line_too_long: return "line too long";
      case errc::nul_in_string: return "NULs not allowed in strings";
      case errc::literal_too_large: return "literal too large";
      case errc::nesting_too_deep: return "parenthesized lists nested too deep";
      case errc::bad_literal: return "malformed literal";
      case errc::bad_mailbox_name: return "invalid mailbox name encoding";
      case errc::bad_sequence_set: return "invalid sequence set";
      case errc::connect_failed: return "could not connect";
      case errc::tls_failed: return "TLS handshake failed";
      case errc::timeout: return "timed out";
      case errc::connection_closed: return "connection closed by peer";
      case errc::bad_greeting: return "server greeting not understood";
      case errc::server_bye: return "server said BYE";
      case errc::command_no: return "server answered NO";
      case errc::command_bad: return "server answered BAD";
      case errc::auth_failed: return "authentication failed";
      case errc::protocol_violation: return "server broke the IMAP protocol";
      case errc::not_supported: return "not supported by the server";
      case errc::busy: return "another operation is in progress";
      case errc::literal_source_short: return "the message source ended before its announced size";
    }
    return "unknown imap error";
  }
};

}  // namespace

const std::error_category& category() noexcept {
  static const imap_category c;
  return c;
}

}  // namespace suction::imap
