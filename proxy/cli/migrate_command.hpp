// `suction migrate --standalone`: finish users who never log in (issue 10
// must 5, first part): each user of a list is migrated in this process with
// the master credentials of [legacy] (and of [new], which does not know the
// passwords either), at the daemon's caps ([sync] max_concurrent_users,
// [legacy] max_connections). Incremental like every run: a re-run copies only
// what is new. Without legacy master credentials nothing is guessed: the users
// are listed as needing a login. Handing the list to a running daemon (the
// status socket's `enqueue`) is not there yet.
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace suction::cli {

struct migrate_command_args {
  std::string config_path;
  std::string users_path;
  bool standalone = false;
  bool json = false;
};

CLI::App* add_migrate_subcommand(CLI::App& app, migrate_command_args& args);

// Exit codes: 0 every user migrated; 1 some not (or no master credentials);
// 2 bad command line, config or users file.
int run_migrate_command(const migrate_command_args& args);

}  // namespace suction::cli
