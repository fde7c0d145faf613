// What every relay kind gives the session and the daemon, without Asio: the
// result the session logs, and the two things the daemon does to a running
// relay (the idle sweep, SIGTERM's grace period, the operator).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>

namespace suction::proxy {

struct relay_result {
  std::uint64_t to_backend = 0, to_client = 0;
  std::string end;  // "client closed", "backend closed", "idle", "shutdown", ...
};

class relay_control {
 public:
  virtual ~relay_control() = default;
  // Ends the relay from outside; `reason` becomes relay_result::end unless
  // the relay had already ended for another.
  virtual void stop(std::string reason) = 0;
  // When a byte last moved either way.
  virtual std::chrono::steady_clock::time_point last_activity() const = 0;
};

// How often relays are checked against `relay_idle`: a few times per idle
// period, at most every 5 s (a relay ends at most that late), instead of a
// timer per relay.
inline std::chrono::milliseconds idle_sweep_interval(std::chrono::milliseconds idle) {
  return std::clamp<std::chrono::milliseconds>(idle / 8, std::chrono::milliseconds(50), std::chrono::seconds(5));
}

}  // namespace suction::proxy
