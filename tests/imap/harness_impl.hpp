#pragma once
#include <doctest/doctest.h>

#include "harness.hpp"

namespace suction::imap::test {

template <class Parser, class... Args>
transcript drive_all_splits(std::string_view input, int raw_lines, Args... args) {
  Parser whole(args...);
  transcript reference = drive(whole, input, {}, raw_lines);
  for (std::size_t k = 1; k < input.size(); ++k) {
    Parser p(args...);
    transcript t = drive(p, input, {k}, raw_lines);
    if (!(t == reference)) {
      FAIL_CHECK("split at byte " << k << " of " << input.size() << " differs");
      break;
    }
  }
  std::vector<std::size_t> every;
  for (std::size_t k = 1; k < input.size(); ++k) every.push_back(k);
  Parser bytewise(args...);
  CHECK_MESSAGE(drive(bytewise, input, every, raw_lines) == reference, "byte-at-a-time differs");
  return reference;
}

}  // namespace suction::imap::test
