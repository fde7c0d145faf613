#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "imap/sequence_set.hpp"

using namespace suction::imap;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto set = parse_sequence_set(in);
  if (!set) return 0;
  auto numbers = expand_sequence_set(*set, 1000, 10000);
  if (!numbers) return 0;
  // format -> parse -> expand gives the same numbers, sorted and unique.
  std::string text = format_sequence_set(*numbers);
  if (numbers->empty()) return 0;
  auto again = parse_sequence_set(text);
  if (!again) std::abort();
  auto back = expand_sequence_set(*again, 1000, 10000);
  if (!back) std::abort();
  for (std::size_t i = 1; i < back->size(); ++i)
    if ((*back)[i] <= (*back)[i - 1]) std::abort();
  for (auto n : *numbers)
    if (!std::binary_search(back->begin(), back->end(), n)) std::abort();
  return 0;
}
