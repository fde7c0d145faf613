// Who is who during a cutover (issue 10 must 3 and 4): the name a user types,
// the names the two servers know, the legacy server the mailbox lives on, and
// the one canonical identity that keys the state store, the jobs and the
// status socket. Pure: [users] (templates, legacy_by_domain, the master-user
// separator) and the rows of the map file in, an account out.
//
// Templates take Dovecot's variables: %u the name (without a master-user
// suffix), %n its local part, %d its domain ("" without '@'), %Lu %Ln %Ld
// the same in lowercase, %% a '%'. The map file is CSV,
// `login,legacy_user,new_user[,legacy_server]`; a row wins over the templates.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace suction::config {

struct config;

// Why a template cannot be used ("unknown variable %x at 3"), or "" when it can.
std::string template_problem(std::string_view tmpl);
// The template with the user's name put in (template_problem must be "").
std::string expand_template(std::string_view tmpl, std::string_view user);

struct map_row {
  std::string login;          // the key: folded when [sync] fold_user_case
  std::string legacy_user, new_user;
  std::string legacy_server;  // "" = by domain, else [legacy]
  std::uint32_t line = 0;

  bool operator==(const map_row&) const = default;
};

// Reads [users] map_file. Throws config_error "FILE:LINE: reason" for a file
// that cannot be read, a row without 3 or 4 fields, an empty field, a control
// byte or a space in a name, a login listed twice, or a legacy server the
// config does not name. A first line "login,legacy_user,..." is a header.
std::vector<map_row> read_map_file(const config& c);
std::vector<map_row> parse_map(std::string_view text, const std::string& file, const config& c);

struct account {
  std::string identity;       // canonical: the new name (folded): keys state, jobs, status
  std::string legacy_login;   // what legacy is told at LOGIN (with the master suffix, if any)
  std::string new_login;      // what the new server is told
  std::string legacy_user;    // without the suffix: for a legacy master login
  std::string new_user;
  std::string legacy_server;  // "" = [legacy], else a [legacy_servers.NAME]
  bool master_form = false;   // typed as "user<sep>master": the password is a master's

  bool operator==(const account&) const = default;
};

// One resolution rule over one config and one map; immutable, shared by
// threads (a SIGHUP makes a new one).
class account_map {
 public:
  account_map(const config& c, std::vector<map_row> rows);

  // login: the name as typed. "bob*admin" (Dovecot's master-user form, with
  // [users] master_separator) is bob's account, logged in to as bob*admin.
  account resolve(std::string_view login) const;
  std::size_t rows() const { return rows_.size(); }

 private:
  std::string legacy_template_, new_template_, separator_;
  bool fold_ = true;
  std::map<std::string, std::string, std::less<>> by_domain_;
  std::map<std::string, map_row, std::less<>> rows_;
};

// The names [users] legacy_by_domain and the map file may use for a legacy
// server: "legacy" (the default [legacy]) and every [legacy_servers.NAME].
bool known_legacy_server(const config& c, std::string_view name);

}  // namespace suction::config
