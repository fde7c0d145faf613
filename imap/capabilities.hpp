// A server's capability list, compared case-insensitively.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace suction::imap {

class capability_set {
 public:
  capability_set() = default;
  explicit capability_set(std::vector<std::string> atoms) : atoms_(std::move(atoms)) {}
  // From the space-separated text of "* CAPABILITY ..." or "[CAPABILITY ...]".
  static capability_set parse(std::string_view text);

  bool has(std::string_view capability) const;
  bool has_auth(std::string_view mechanism) const;  // AUTH=<mechanism>
  std::vector<std::string> auth_mechanisms() const; // upper-case, without "AUTH="
  const std::vector<std::string>& atoms() const { return atoms_; }
  bool empty() const { return atoms_.empty(); }
  std::string to_string() const;  // space-separated, as received

 private:
  std::vector<std::string> atoms_;
};

}  // namespace suction::imap
