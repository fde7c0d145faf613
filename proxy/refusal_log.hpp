// Log lines for refused connections (over max_connections or
// max_connections_per_ip), bounded however fast they come: the first refusal
// of an address in an interval is logged at once, the rest of that interval
// as one summary line with a count. No I/O and no clock: the first refusal
// after a quiet spell starts an interval, and the daemon calls flush() at its
// end; no timer runs while nobody is refused.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace suction::proxy {

class refusal_log {
 public:
  // At most `max_addresses` addresses are counted one by one in an interval;
  // more are summed in one "other addresses" line, so memory stays bounded.
  refusal_log(std::chrono::milliseconds interval, std::size_t max_addresses = 1024)
      : interval_(interval), max_addresses_(max_addresses) {}

  // A connection from `address` (IP, no port) was refused for `reason` (one of
  // ours, not client text). Returns true when this one should be logged now
  // (the first from this address and reason in the interval); otherwise it is
  // counted for the summary.
  bool on_refused(const std::string& address, const std::string& reason);

  // Summary lines of the interval that ended, then a fresh interval. Call
  // every interval; empty when nothing was held back.
  std::vector<std::string> flush();

  std::chrono::milliseconds interval() const { return interval_; }

  // Nothing counted since the last flush: the next refusal starts an
  // interval (the daemon then arms its one-shot flush timer).
  bool quiet() const { return held_.empty() && others_ == 0; }

 private:
  std::chrono::milliseconds interval_;
  std::size_t max_addresses_;
  // (address, reason) -> refusals held back (not logged one by one).
  std::map<std::pair<std::string, std::string>, std::uint64_t> held_;
  std::uint64_t others_ = 0;  // refusals of addresses past max_addresses_
};

}  // namespace suction::proxy
