#include "proxy/refusal_log.hpp"

#include "imap/log_value.hpp"

namespace suction::proxy {

bool refusal_log::on_refused(const std::string& address, const std::string& reason) {
  auto key = std::make_pair(address, reason);
  auto it = held_.find(key);
  if (it != held_.end()) {
    ++it->second;
    return false;
  }
  if (held_.size() >= max_addresses_) {
    ++others_;
    return false;
  }
  held_.emplace(std::move(key), 0);
  return true;
}

std::vector<std::string> refusal_log::flush() {
  std::vector<std::string> lines;
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(interval_).count();
  for (const auto& [key, count] : held_) {
    if (count == 0) continue;
    lines.push_back("connection refused client=" + imap::log_value(key.first) + " reason=\"" + key.second +
                    "\" count=" + std::to_string(count) + " interval=" + std::to_string(seconds) + "s");
  }
  if (others_ > 0)
    lines.push_back("connection refused from more addresses than are counted one by one count=" +
                    std::to_string(others_) + " interval=" + std::to_string(seconds) + "s");
  held_.clear();
  others_ = 0;
  return lines;
}

}  // namespace suction::proxy
