#include "proxy/cli/accounts.hpp"

namespace suction::cli {

account_book::account_book(config::config c)
    : cfg_(std::move(c)),
      map_(std::make_shared<const config::account_map>(cfg_, config::read_map_file(cfg_))) {}

config::account account_book::resolve(std::string_view login) const {
  std::shared_ptr<const config::account_map> map;
  {
    std::lock_guard lock(m_);
    map = map_;
  }
  return map->resolve(login);
}

std::string account_book::reload() {
  if (cfg_.users.map_file.empty()) return "no [users] map_file to reload";
  auto fresh = std::make_shared<const config::account_map>(cfg_, config::read_map_file(cfg_));
  const std::size_t rows = fresh->rows();
  {
    std::lock_guard lock(m_);
    map_ = std::move(fresh);
  }
  return "map_file reloaded: " + std::to_string(rows) + " rows from " + cfg_.users.map_file;
}

proxy::mapped_login to_mapped(const config::account& a) {
  return {a.identity,    a.new_login,     a.new_user,   a.legacy_login,
          a.legacy_user, a.legacy_server, a.master_form};
}

sync::sync_identity to_identity(const proxy::mapped_login& m) {
  return {m.identity, {m.legacy_login, m.legacy_user}, {m.new_login, m.new_user}};
}

sync::sync_identity to_identity(const config::account& a) { return to_identity(to_mapped(a)); }

}  // namespace suction::cli
