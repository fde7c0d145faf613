#include "imap/capabilities.hpp"

#include "imap/value.hpp"

namespace suction::imap {

capability_set capability_set::parse(std::string_view text) {
  std::vector<std::string> atoms;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find(' ', pos);
    if (end == std::string_view::npos) end = text.size();
    if (end > pos) atoms.emplace_back(text.substr(pos, end - pos));
    pos = end + 1;
  }
  return capability_set(std::move(atoms));
}

bool capability_set::has(std::string_view capability) const {
  for (const auto& a : atoms_)
    if (iequals(a, capability)) return true;
  return false;
}

bool capability_set::has_auth(std::string_view mechanism) const {
  for (const auto& a : atoms_)
    if (a.size() == mechanism.size() + 5 && iequals(std::string_view(a).substr(0, 5), "AUTH=") &&
        iequals(std::string_view(a).substr(5), mechanism))
      return true;
  return false;
}

std::vector<std::string> capability_set::auth_mechanisms() const {
  std::vector<std::string> out;
  for (const auto& a : atoms_)
    if (a.size() > 5 && iequals(std::string_view(a).substr(0, 5), "AUTH="))
      out.push_back(to_upper(std::string_view(a).substr(5)));
  return out;
}

std::string capability_set::to_string() const {
  std::string out;
  for (const auto& a : atoms_) {
    if (!out.empty()) out += ' ';
    out += a;
  }
  return out;
}

}  // namespace suction::imap
