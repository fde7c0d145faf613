// Drives a parser over an input delivered in pieces, the way a socket would,
// and records everything it reports, so a test can compare "fed whole" with
// "fed split at byte k" and "fed one byte at a time".
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "imap/parser.hpp"

namespace suction::imap::test {

struct transcript {
  std::vector<response> responses;
  std::vector<command> commands;
  std::vector<std::string> lines;
  std::vector<std::string> streamed;       // each streamed literal, reassembled
  std::vector<std::string> streamed_items; // literal().item at literal_begin
  int continuations = 0;
  std::vector<std::error_code> errors;
  bool operator==(const transcript&) const = default;
};

// Splits `input` at the offsets in `cuts` (ascending) and feeds the pieces.
template <class Parser>
transcript drive(Parser& p, std::string_view input, const std::vector<std::size_t>& cuts,
                 int raw_lines_after_command = 0) {
  transcript t;
  std::vector<std::string_view> pieces;
  std::size_t prev = 0;
  for (auto c : cuts) {
    pieces.push_back(input.substr(prev, c - prev));
    prev = c;
  }
  pieces.push_back(input.substr(prev));
  for (auto piece : pieces) {
    for (int guard = 0; guard < 1'000'000; ++guard) {
      auto r = p.feed(piece);
      piece.remove_prefix(r.consumed);
      bool stop = false;
      switch (r.event) {
        case parse_event::need_more: stop = true; break;
        case parse_event::need_continuation: ++t.continuations; break;
        case parse_event::literal_begin:
          t.streamed.emplace_back();
          t.streamed_items.emplace_back(p.literal().item);
          break;
        case parse_event::literal_data: t.streamed.back() += p.chunk(); break;
        case parse_event::literal_end: break;
        case parse_event::message:
          if constexpr (requires { p.response(); }) {
            t.responses.push_back(p.response());
          } else {
            t.commands.push_back(p.command());
            if (raw_lines_after_command > 0) {
              --raw_lines_after_command;
              p.expect_line();
            }
          }
          break;
        case parse_event::line:
          if constexpr (requires { p.line(); }) t.lines.emplace_back(p.line());
          break;
        case parse_event::error:
          t.errors.push_back(p.error());
          if constexpr (requires { p.recoverable(); }) {
            if (!p.recoverable()) return t;
          } else {
            return t;
          }
          break;
      }
      if (stop) break;
    }
  }
  return t;
}

// Feeds `input` whole, at every single split point, and one byte at a time;
// checks all agree and returns the whole-input transcript.
template <class Parser, class... Args>
transcript drive_all_splits(std::string_view input, int raw_lines, Args... args);

}  // namespace suction::imap::test
