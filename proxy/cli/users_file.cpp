#include "proxy/cli/users_file.hpp"

#include <fstream>
#include <set>

#include "imap/value.hpp"

namespace suction::cli {

bool read_users(const std::string& path, std::vector<std::string>& out, std::string& why) {
  std::ifstream f(path);
  if (!f) {
    why = "cannot read " + path;
    return false;
  }
  std::string line;
  std::set<std::string> seen;
  for (std::size_t n = 1; std::getline(f, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (n == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);  // a UTF-8 BOM
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    std::string login = line.substr(first, line.find(',') == std::string::npos
                                                ? std::string::npos
                                                : line.find(',') - first);
    while (!login.empty() && (login.back() == ' ' || login.back() == '\t')) login.pop_back();
    // The map file's header line ("login,legacy_user,new_user,...") names no user.
    if (n == 1 && imap::iequals(login, "login") && line.find(',') != std::string::npos)
      continue;
    if (login.empty()) {
      why = path + ":" + std::to_string(n) + ": no login name";
      return false;
    }
    if (seen.insert(login).second) out.push_back(login);
  }
  return true;
}

}  // namespace suction::cli
