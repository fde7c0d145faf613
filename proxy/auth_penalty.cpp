#include "proxy/auth_penalty.hpp"

#include <algorithm>

namespace suction::proxy {

std::uint32_t auth_penalty::count(const table& t, std::string_view key, clock::time_point now) const {
  auto it = t.find(std::string(key));
  if (it == t.end() || now - it->second.since > window_) return 0;
  return it->second.failures;
}

std::uint32_t auth_penalty::add(table& t, std::string_view key, clock::time_point now) {
  if (t.size() >= kMaxTracked)
    std::erase_if(t, [&](const auto& kv) { return now - kv.second.since > window_; });
  if (t.size() >= kMaxTracked) t.clear();  // a flood of distinct keys: start over, bounded
  entry& e = t[std::string(key)];
  if (e.failures == 0 || now - e.since > window_) e = entry{0, now};
  return ++e.failures;
}

bool auth_penalty::allowed(std::string_view address, std::string_view user, clock::time_point now) {
  return count(by_address_, address, now) < max_failures_ && count(by_user_, user, now) < max_failures_;
}

std::chrono::milliseconds auth_penalty::failed(std::string_view address, std::string_view user,
                                               clock::time_point now) {
  const std::uint32_t n = std::max(add(by_address_, address, now), add(by_user_, user, now));
  if (delay_.count() == 0) return std::chrono::milliseconds(0);
  const auto d = delay_ * (std::int64_t{1} << std::min<std::uint32_t>(n - 1, 10));
  return std::min<std::chrono::milliseconds>(d, kMaxDelay);
}

void auth_penalty::succeeded(std::string_view user) { by_user_.erase(std::string(user)); }

}  // namespace suction::proxy
