#include "imap/response.hpp"
#include "split_feed.hpp"

using namespace suction::imap;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  parser_limits limits;
  limits.max_line = 4096;
  limits.max_literal = 1 << 20;
  limits.inline_literal_max = 64;
  limits.max_message = 1 << 16;
  response_parser p(limits);
  std::uint64_t streamed = 0;
  split_feed(p, data, size, [&](parse_event e) {
    switch (e) {
      case parse_event::literal_begin: streamed = p.literal().size; break;
      case parse_event::literal_data:
        if (p.chunk().size() > streamed) std::abort();
        streamed -= p.chunk().size();
        break;
      case parse_event::literal_end:
        if (streamed != 0) std::abort();
        break;
      case parse_event::message: {
        const response& r = p.response();
        // Every decoder must cope with whatever shape the parser accepted.
        (void)decode_fetch(r); (void)decode_list(r); (void)decode_status(r);
        (void)decode_esearch(r); (void)decode_search(r); (void)decode_namespace(r);
        (void)decode_vanished(r); (void)decode_flags(r); (void)decode_enabled(r);
        (void)decode_capability(r); (void)decode_appenduid(r); (void)decode_copyuid(r);
        (void)decode_uidvalidity(r); (void)decode_uidnext(r); (void)decode_highestmodseq(r);
        (void)decode_permanentflags(r);
        break;
      }
      case parse_event::error: return false;
      default: break;
    }
    return true;
  });
  return 0;
}
