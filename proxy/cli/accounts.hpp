// The daemon's [users] resolution (config/users.hpp), reloadable on SIGHUP:
// the current account_map behind a lock, replaced whole. Sessions, the
// scheduler's adapter and the status socket ask it from their own threads.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "config/users.hpp"
#include "proxy/options.hpp"
#include "sync/user_sync.hpp"

namespace suction::cli {

class account_book {
 public:
  // Reads [users] map_file; throws config::config_error ("FILE:LINE: ...").
  explicit account_book(config::config c);

  config::account resolve(std::string_view login) const;
  // Reads the map file again: "map_file reloaded: N rows from FILE" (or "no
  // map_file"). A bad file throws config_error and the old map stays.
  std::string reload();

 private:
  const config::config cfg_;
  mutable std::mutex m_;
  std::shared_ptr<const config::account_map> map_;
};

proxy::mapped_login to_mapped(const config::account& a);
sync::sync_identity to_identity(const proxy::mapped_login& m);
sync::sync_identity to_identity(const config::account& a);

}  // namespace suction::cli
