// Feeds data to a parser in two pieces, cut where the first byte says, and
// calls on_event for every event. Bounded: a parser that stops consuming
// without asking for more input is a bug, reported by trapping.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "imap/parser.hpp"

template <class Parser, class OnEvent>
void split_feed(Parser& p, const std::uint8_t* data, std::size_t size, OnEvent&& on_event) {
  if (size == 0) return;
  std::size_t cut = size > 1 ? data[0] % size : 0;
  std::string_view all(reinterpret_cast<const char*>(data) + 1, size - 1);
  cut = cut > all.size() ? all.size() : cut;
  std::string_view pieces[2] = {all.substr(0, cut), all.substr(cut)};
  for (auto piece : pieces) {
    for (int guard = 0;; ++guard) {
      if (guard > 1'000'000) std::abort();
      auto r = p.feed(piece);
      if (r.consumed > piece.size()) std::abort();
      piece.remove_prefix(r.consumed);
      if (r.event == suction::imap::parse_event::need_more) {
        if (!piece.empty()) std::abort();  // need_more must mean "all used"
        break;
      }
      if (!on_event(r.event)) return;
    }
  }
}
