// Incremental, sans-I/O parsers for IMAP server responses and client commands.
//
//   feed(bytes) -> {consumed, event}
//
// The caller hands in whatever bytes it has; the parser consumes up to the next
// event and says how much it used. Nothing here reads or writes a socket: for a
// synchronizing literal the command parser returns need_continuation and the
// caller, not the parser, writes "+ OK". Literals larger than
// limits.inline_literal_max are handed out in chunks (literal_begin,
// literal_data..., literal_end) that point into the caller's buffer, so a 50 MB
// message never sits in one buffer. Every limit is a parameter and a violation is
// an error event, never an exception.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "imap/errc.hpp"
#include "imap/value.hpp"

namespace suction::imap {

struct parser_limits {
  std::size_t max_line = 64 * 1024;           // one line, or one part of a line between literals
  std::uint64_t max_literal = 64ull << 20;    // one literal
  std::size_t max_depth = 32;                 // nesting of parenthesized lists
  std::size_t inline_literal_max = 64 * 1024; // larger literals are streamed as events
  std::size_t max_message = 8u << 20;         // bytes kept in memory for one message
};

enum class parse_event : std::uint8_t {
  need_more,          // all input used; nothing complete yet
  need_continuation,  // commands: a synchronizing literal was announced, send "+ ..."
  literal_begin,      // a streamed literal starts; literal() describes it
  literal_data,       // chunk() is the next part of the streamed literal
  literal_end,        // the streamed literal is complete
  message,            // a whole response / command is ready
  line,               // commands after expect_line(): line() holds one raw line
  error,              // error() says why
};

struct parse_result {
  std::size_t consumed = 0;
  parse_event event = parse_event::need_more;
};

struct literal_info {
  std::uint64_t size = 0;
  bool binary = false;         // ~{n}
  bool synchronizing = false;  // {n} rather than {n+} / {n-}
  std::string_view item;       // the atom just before the literal, e.g. "BODY[]"
  std::optional<std::uint32_t> message_number;  // "* 12 FETCH ..." -> 12
};

enum class response_kind : std::uint8_t { continuation, tagged, untagged };
enum class status : std::uint8_t { none, ok, no, bad, preauth, bye };

struct response_code {
  std::string name;            // upper-case, e.g. "APPENDUID"
  std::string raw_args;        // the text between the name and ']'
  std::vector<value> args;     // raw_args tokenized (empty if it does not tokenize)
  bool operator==(const response_code&) const = default;
};

struct response {
  response_kind kind = response_kind::untagged;
  std::string tag;                    // tagged responses
  imap::status status = status::none; // status responses (OK/NO/BAD/PREAUTH/BYE)
  std::optional<response_code> code;
  std::string text;                   // status text or continuation text
  std::optional<std::uint32_t> number;  // "* 3 EXISTS", "* 7 FETCH"
  std::string keyword;                // upper-case: FETCH, LIST, CAPABILITY, OK, ...
  std::vector<value> data;            // everything after the keyword

  bool is_status() const { return status != status::none; }
  bool operator==(const response&) const = default;
};

struct command {
  std::string tag;
  std::string name;  // upper-case; "UID FETCH" etc. for UID commands
  std::vector<value> args;
  bool operator==(const command&) const = default;
};

namespace detail {

// The engine shared by both parsers: line assembly, literals, list nesting, limits.
class engine {
 public:
  enum class mode : std::uint8_t { response, command };
  engine(mode m, parser_limits limits);

  parse_result feed(std::string_view in);
  void reset();

  const parser_limits& limits() const { return limits_; }
  const literal_info& literal() const { return literal_info_; }
  std::string_view chunk() const { return chunk_; }
  std::error_code error() const { return error_; }

 protected:
  enum class state : std::uint8_t { line, literal, raw_line, failed };
  enum class segment_outcome : std::uint8_t { complete, literal, failed };

  segment_outcome parse_segment(std::string_view seg);
  segment_outcome parse_response_header(std::string_view seg, std::size_t& pos);
  segment_outcome parse_command_header(std::string_view seg, std::size_t& pos);
  segment_outcome parse_values(std::string_view seg, std::size_t pos);
  segment_outcome begin_literal(std::string_view seg, std::size_t pos);
  segment_outcome fail(errc e);
  void finish_message();

  mode mode_;
  parser_limits limits_;
  state state_ = state::line;
  bool first_segment_ = true;
  std::string line_;
  std::size_t message_bytes_ = 0;

  value root_;
  std::vector<value*> stack_;

  // the literal being read
  std::uint64_t literal_left_ = 0;
  bool literal_streamed_ = false;
  bool pending_begin_ = false;
  bool pending_nonsync_ = false;  // segment ended in {n+}: cannot resync after an error
  bool nul_seen_ = false;         // commands: this command held a NUL byte (refused at its end)
  literal_info literal_info_;
  std::string literal_item_;
  std::string_view chunk_;

  std::error_code error_;
  bool recoverable_ = false;

  response response_;
  command command_;
  std::string raw_line_;
};

}  // namespace detail

// What both parsers offer: feed, reset, limits, and the current literal/chunk/error.
template <detail::engine::mode M>
class basic_parser : protected detail::engine {
 public:
  explicit basic_parser(parser_limits limits) : engine(M, limits) {}
  using engine::chunk;
  using engine::error;
  using engine::feed;
  using engine::limits;
  using engine::literal;
  using engine::reset;
};

// Parses what an IMAP server sends.
class response_parser : public basic_parser<detail::engine::mode::response> {
 public:
  explicit response_parser(parser_limits limits = {}) : basic_parser(limits) {}
  // Valid after a message event, until the next feed().
  const imap::response& response() const { return response_; }
  imap::response& response() { return response_; }
};

// Parses what an IMAP client sends.
class command_parser : public basic_parser<detail::engine::mode::command> {
 public:
  explicit command_parser(parser_limits limits = {}) : basic_parser(limits) {}
  const imap::command& command() const { return command_; }
  imap::command& command() { return command_; }
  // The next line is read raw (an AUTHENTICATE continuation), reported as a line event.
  void expect_line();
  std::string_view line() const { return raw_line_; }
  // After an error event: whether the parser skipped the bad command and can go on,
  // and the tag to answer BAD to ("" if none was read).
  bool recoverable() const { return recoverable_; }
  std::string_view error_tag() const { return command_.tag; }
};

}  // namespace suction::imap
