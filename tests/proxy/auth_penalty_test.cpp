// Failed password checks against legacy: delayed and limited per client
// address and per user (proxy/auth_penalty.hpp), with an injected clock.
#include <doctest/doctest.h>

#include "proxy/auth_penalty.hpp"

using suction::proxy::auth_penalty;
using namespace std::chrono_literals;

TEST_CASE("auth penalty: the delay doubles per failure, up to 15 s") {
  auth_penalty p(2s, 100, 300s);
  const auto t0 = auth_penalty::clock::time_point{} + 1h;
  CHECK(p.failed("192.0.2.1", "bob", t0) == 2s);
  CHECK(p.failed("192.0.2.1", "bob", t0) == 4s);
  CHECK(p.failed("192.0.2.1", "bob", t0) == 8s);
  CHECK(p.failed("192.0.2.1", "bob", t0) == 15s);
  CHECK(p.failed("192.0.2.1", "bob", t0) == 15s);
  // Another address guessing the same user is delayed as much: the user counts too.
  CHECK(p.failed("198.51.100.7", "bob", t0) == 15s);
  // A fresh address and user: from the start.
  CHECK(p.failed("198.51.100.8", "carol", t0) == 2s);
  auth_penalty none(0s, 3, 300s);
  CHECK(none.failed("192.0.2.1", "bob", t0) == 0s);
}

TEST_CASE("auth penalty: past max_failures in the window, legacy is not asked") {
  auth_penalty p(0s, 3, 300s);
  const auto t0 = auth_penalty::clock::time_point{} + 1h;
  for (int i = 0; i < 3; ++i) {
    CHECK(p.allowed("192.0.2.1", "u" + std::to_string(i), t0));
    p.failed("192.0.2.1", "u" + std::to_string(i), t0);  // one address, many users
  }
  CHECK_FALSE(p.allowed("192.0.2.1", "someone", t0 + 10s));
  CHECK(p.allowed("192.0.2.2", "someone", t0 + 10s));
  for (int i = 0; i < 3; ++i) p.failed("203.0.113." + std::to_string(i), "dave", t0);  // one user, many addresses
  CHECK_FALSE(p.allowed("203.0.113.99", "dave", t0));
  // The window passes: asked again.
  CHECK(p.allowed("192.0.2.1", "someone", t0 + 301s));
  CHECK(p.allowed("203.0.113.99", "dave", t0 + 301s));
}

TEST_CASE("auth penalty: a good password forgives the user, not the address") {
  auth_penalty p(0s, 2, 300s);
  const auto t0 = auth_penalty::clock::time_point{} + 1h;
  p.failed("192.0.2.1", "bob", t0);
  p.failed("192.0.2.2", "bob", t0);
  CHECK_FALSE(p.allowed("192.0.2.9", "bob", t0));
  p.succeeded("bob");
  CHECK(p.allowed("192.0.2.9", "bob", t0));
  p.failed("192.0.2.1", "x", t0);
  CHECK_FALSE(p.allowed("192.0.2.1", "bob", t0));  // the address had two failures
}

TEST_CASE("auth penalty: memory stays bounded under a flood of distinct names") {
  auth_penalty p(0s, 5, 300s);
  const auto t0 = auth_penalty::clock::time_point{} + 1h;
  for (std::size_t i = 0; i < auth_penalty::kMaxTracked + 10; ++i)
    p.failed("192.0.2.1", "user" + std::to_string(i), t0);
  // Still answers (the address is over its limit), and did not grow without bound.
  CHECK_FALSE(p.allowed("192.0.2.1", "x", t0));
}
