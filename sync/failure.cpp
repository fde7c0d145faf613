#include "sync/failure.hpp"

#include <algorithm>
#include <array>
#include <string>

namespace suction::sync {

namespace {

constexpr std::array<failure_policy, 12> kPolicies{{
    {"none", false, true, 0},
    {"message_refused", false, true, 4},
    {"quota", false, true, 4},
    {"protocol", false, true, 1},
    {"state_store", false, true, 1},
    {"busy", true, true, 1},
    {"connect", true, true, 1},
    {"tls", true, true, 1},
    {"greeting", true, true, 1},
    {"unavailable", true, true, 1},
    {"credentials", false, false, 3},
    {"stopped", false, true, 1},
}};

}  // namespace

const failure_policy& policy(failure_kind k) {
  return kPolicies.at(static_cast<std::size_t>(k));
}

failure_kind worse(failure_kind a, failure_kind b) {
  // The enum is declared in this order.
  return static_cast<std::uint8_t>(a) >= static_cast<std::uint8_t>(b) ? a : b;
}

failure_kind login_refusal(const imap::command_result& r) {
  return imap::login_tempfail(r) ? failure_kind::unavailable : failure_kind::credentials;
}

failure_kind connect_failure(std::error_code ec) {
  if (ec == imap::errc::tls_failed) return failure_kind::tls;
  if (ec == imap::errc::bad_greeting || ec == imap::errc::server_bye) return failure_kind::greeting;
  return failure_kind::connect;
}

std::chrono::milliseconds backoff_policy::delay(std::uint32_t failures) const {
  const std::uint32_t doublings = std::min<std::uint32_t>(failures == 0 ? 0 : failures - 1, 20);
  const auto d = initial * (std::uint64_t{1} << doublings);
  return std::min<std::chrono::milliseconds>(std::chrono::duration_cast<std::chrono::milliseconds>(d), max);
}

}  // namespace suction::sync
