// Checking passwords against the legacy server makes suction an oracle for
// it. Failed checks are delayed and limited per client address and per user
// (like Dovecot's auth penalty): the answer to a failed check waits
// failure_delay doubled per earlier failure of that address or user in the
// window (at most 15 s); past max_failures in the window, checks of that
// address or user are refused without asking legacy until the window passes.
// Pure: the clock comes in; the session does the waiting.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

namespace suction::proxy {

class auth_penalty {
 public:
  using clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kMaxDelay{15000};
  static constexpr std::size_t kMaxTracked = 100000;  // entries per map; expired ones go first

  auth_penalty(std::chrono::milliseconds delay, std::uint32_t max_failures,
               std::chrono::seconds window)
      : delay_(delay), max_failures_(max_failures), window_(window) {}

  // Whether legacy may be asked for this address and user now.
  bool allowed(std::string_view address, std::string_view user, clock::time_point now);
  // A failed check; returns how long to wait before answering.
  std::chrono::milliseconds failed(std::string_view address, std::string_view user,
                                   clock::time_point now);
  // A good password: the user's failures are forgiven (the address's are not).
  void succeeded(std::string_view user);

 private:
  struct entry {
    std::uint32_t failures = 0;
    clock::time_point since;
  };
  using table = std::unordered_map<std::string, entry>;
  std::uint32_t count(const table& t, std::string_view key, clock::time_point now) const;
  std::uint32_t add(table& t, std::string_view key, clock::time_point now);

  std::chrono::milliseconds delay_;
  std::uint32_t max_failures_;
  std::chrono::seconds window_;
  table by_address_, by_user_;
};

}  // namespace suction::proxy
