#include "config/users.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "config/config.hpp"

namespace suction::config {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& ch : out)
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
  return out;
}

std::string_view local_part(std::string_view user) { return user.substr(0, user.find('@')); }

std::string_view domain_part(std::string_view user) {
  auto at = user.find('@');
  return at == std::string_view::npos ? std::string_view{} : user.substr(at + 1);
}

// The value of variable `v` (u, n, d) for `user`; nullopt for another letter.
std::optional<std::string_view> variable(char v, std::string_view user) {
  switch (v) {
    case 'u': return user;
    case 'n': return local_part(user);
    case 'd': return domain_part(user);
    default: return std::nullopt;
  }
}

// The bytes a name in a map row may not hold: they would forge log lines or
// split IMAP atoms, and no mail server takes them in a user name.
bool bad_name_byte(unsigned char ch) { return ch < 0x21 || ch == 0x7f || ch == '"' || ch == '\\'; }

}  // namespace

std::string template_problem(std::string_view tmpl) {
  if (tmpl.empty()) return "must not be empty";
  for (std::size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] != '%') continue;
    if (i + 1 < tmpl.size() && tmpl[i + 1] == '%') {
      ++i;
      continue;
    }
    std::size_t v = i + 1;
    if (v < tmpl.size() && tmpl[v] == 'L') ++v;
    if (v >= tmpl.size() || !variable(tmpl[v], "")) {
      return "unknown variable \"" + std::string(tmpl.substr(i, v + 1 - i)) + "\" at " +
             std::to_string(i + 1) + " (known: %u %n %d, %Lu %Ln %Ld lowercase, %% a %)";
    }
    i = v;
  }
  return {};
}

std::string expand_template(std::string_view tmpl, std::string_view user) {
  std::string out;
  for (std::size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] != '%' || i + 1 >= tmpl.size()) {
      out += tmpl[i];
      continue;
    }
    if (tmpl[i + 1] == '%') {
      out += '%';
      ++i;
      continue;
    }
    const bool lowercase = tmpl[i + 1] == 'L';
    const std::size_t v = i + (lowercase ? 2 : 1);
    auto value = v < tmpl.size() ? variable(tmpl[v], user) : std::nullopt;
    if (!value) {  // template_problem refuses it; kept verbatim if it got here
      out += tmpl[i];
      continue;
    }
    out += lowercase ? lower(*value) : std::string(*value);
    i = v;
  }
  return out;
}

bool known_legacy_server(const config& c, std::string_view name) {
  if (name == "legacy") return true;
  return std::ranges::any_of(c.legacy_servers, [&](const auto& s) { return s.name == name; });
}

std::vector<map_row> parse_map(std::string_view text, const std::string& file, const config& c) {
  std::vector<map_row> rows;
  std::map<std::string, std::uint32_t, std::less<>> seen;
  // new name (folded) -> its row: two legacy mailboxes cannot become one
  // account (their checkpoints would share one key in the state store).
  std::map<std::string, std::size_t, std::less<>> targets;
  std::uint32_t line_no = 0;
  std::size_t pos = 0;
  auto fail = [&](const std::string& reason) -> void {
    throw config_error(file + ":" + std::to_string(line_no) + ": [users] map_file: " + reason);
  };
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line_no == 1 && line.starts_with("\xEF\xBB\xBF")) line.remove_prefix(3);  // a UTF-8 BOM
    if (line.empty() || line.front() == '#') continue;
    std::vector<std::string> fields;
    for (std::size_t start = 0;;) {
      std::size_t comma = line.find(',', start);
      fields.emplace_back(line.substr(start, comma - start));
      if (comma == std::string_view::npos) break;
      start = comma + 1;
    }
    if (line_no == 1 && fields.size() >= 3 && lower(fields[0]) == "login") continue;  // header
    if (fields.size() < 3 || fields.size() > 4)
      fail("expected login,legacy_user,new_user[,legacy_server] (got " +
           std::to_string(fields.size()) + " fields)");
    static const char* const names[] = {"login", "legacy_user", "new_user", "legacy_server"};
    for (std::size_t i = 0; i < fields.size(); ++i) {
      if (fields[i].empty() && i < 3) fail(std::string(names[i]) + " is empty");
      if (std::ranges::any_of(fields[i], [](char ch) { return bad_name_byte(static_cast<unsigned char>(ch)); }))
        fail(std::string(names[i]) +
             " holds a space, a quote, a backslash or a control byte (quoting is not supported)");
    }
    map_row row{c.sync.fold_user_case ? lower(fields[0]) : fields[0], fields[1], fields[2],
                fields.size() == 4 ? fields[3] : std::string(), line_no};
    if (!row.legacy_server.empty() && !known_legacy_server(c, row.legacy_server))
      fail("legacy server \"" + row.legacy_server +
           "\" is not in the config (\"legacy\" or a [legacy_servers.NAME])");
    if (auto [it, fresh] = seen.emplace(row.login, line_no); !fresh)
      fail("login \"" + row.login + "\" again (first on line " + std::to_string(it->second) + ")");
    const std::string target = c.sync.fold_user_case ? lower(row.new_user) : row.new_user;
    if (auto [it, fresh] = targets.emplace(target, rows.size()); !fresh) {
      const map_row& first = rows[it->second];
      if (first.legacy_user != row.legacy_user || first.legacy_server != row.legacy_server)
        fail("new_user \"" + row.new_user + "\" is line " + std::to_string(first.line) +
             "'s too, from another legacy mailbox (two mailboxes cannot become one account)");
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

std::vector<map_row> read_map_file(const config& c) {
  if (c.users.map_file.empty()) return {};
  std::ifstream in(c.users.map_file, std::ios::binary);
  if (!in)
    throw config_error(c.source.string() + ": [users] map_file: cannot read \"" +
                       c.users.map_file + "\"");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_map(text.str(), c.users.map_file, c);
}

account_map::account_map(const config& c, std::vector<map_row> rows)
    : legacy_template_(c.users.legacy),
      new_template_(c.users.fresh),
      separator_(c.users.master_separator),
      fold_(c.sync.fold_user_case) {
  for (const auto& [domain, server] : c.users.legacy_by_domain) by_domain_.emplace(lower(domain), server);
  for (auto& r : rows) {
    std::string key = r.login;
    rows_.emplace(std::move(key), std::move(r));
  }
}

account account_map::resolve(std::string_view login) const {
  // "bob*admin": bob's mailbox, logged in to by the master user admin.
  std::string_view user = login, suffix;
  if (!separator_.empty()) {
    if (auto at = login.find(separator_); at != std::string_view::npos && at > 0) {
      user = login.substr(0, at);
      suffix = login.substr(at);
    }
  }
  account a;
  const std::string key = fold_ ? lower(user) : std::string(user);
  if (auto row = rows_.find(key); row != rows_.end()) {
    a.legacy_user = row->second.legacy_user;
    a.new_user = row->second.new_user;
    a.legacy_server = row->second.legacy_server;
  } else {
    a.legacy_user = expand_template(legacy_template_, user);
    a.new_user = expand_template(new_template_, user);
  }
  if (a.legacy_server.empty()) {
    if (auto d = by_domain_.find(lower(domain_part(user))); d != by_domain_.end())
      a.legacy_server = d->second;
  }
  if (a.legacy_server == "legacy") a.legacy_server.clear();
  a.identity = fold_ ? lower(a.new_user) : a.new_user;
  a.master_form = !suffix.empty();
  a.legacy_login = a.legacy_user + std::string(suffix);
  a.new_login = a.new_user + std::string(suffix);
  return a;
}

}  // namespace suction::config
