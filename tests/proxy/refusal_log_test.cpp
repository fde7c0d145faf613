// Refused connections are logged bounded however fast they come (issue 11, defect 5).
#include <doctest/doctest.h>

#include "proxy/refusal_log.hpp"

using suction::proxy::refusal_log;

TEST_CASE("refusal_log: the first refusal of an address is logged, the rest summed per interval") {
  refusal_log log(std::chrono::seconds(10));
  const std::string why = "too many connections from this address";
  CHECK(log.quiet());  // nothing to flush: the daemon arms no timer
  CHECK(log.on_refused("10.0.0.1", why));
  CHECK_FALSE(log.quiet());
  for (int i = 0; i < 4999; ++i) CHECK_FALSE(log.on_refused("10.0.0.1", why));
  CHECK(log.on_refused("10.0.0.2", why));
  CHECK(log.on_refused("10.0.0.1", "too many connections"));  // another reason, its own line
  auto lines = log.flush();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0] == "connection refused client=10.0.0.1 reason=\"" + why + "\" count=4999 interval=10s");
  CHECK(log.quiet());
  // A new interval: the next refusal is logged at once again; nothing held, nothing to flush.
  CHECK(log.on_refused("10.0.0.1", why));
  CHECK_FALSE(log.quiet());
  CHECK(log.flush().empty());
  CHECK(log.quiet());
}

TEST_CASE("refusal_log: memory is bounded when many addresses are refused") {
  refusal_log log(std::chrono::seconds(10), 3);
  for (int a = 0; a < 3; ++a) CHECK(log.on_refused("10.0.0." + std::to_string(a), "x"));
  for (int a = 3; a < 1000; ++a) CHECK_FALSE(log.on_refused("10.0.1." + std::to_string(a), "x"));
  auto lines = log.flush();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0] == "connection refused from more addresses than are counted one by one count=997 interval=10s");
}
