#include "split_feed.hpp"

using namespace suction::imap;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  parser_limits limits;
  limits.max_line = 2048;
  limits.max_literal = 1 << 16;
  limits.inline_literal_max = 256;
  limits.max_message = 1 << 16;
  command_parser p(limits);
  split_feed(p, data, size, [&](parse_event e) {
    switch (e) {
      case parse_event::message:
        // As the proxy does: AUTHENTICATE without an initial response reads a raw line.
        if (p.command().name == "AUTHENTICATE" && p.command().args.size() == 1) p.expect_line();
        break;
      case parse_event::error:
        return p.recoverable();
      default: break;
    }
    return true;
  });
  return 0;
}
