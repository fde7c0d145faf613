// A list of users for `suction report` and `suction migrate`: one login per
// line, or a CSV whose first column is the login (a map file, its header line
// "login,..." skipped); blank lines and '#' comments skipped, duplicates once.
#pragma once

#include <string>
#include <vector>

namespace suction::cli {

// False, with the reason ("FILE:LINE: ..."), on a file that cannot be read or
// a line without a login.
bool read_users(const std::string& path, std::vector<std::string>& out, std::string& why);

}  // namespace suction::cli
