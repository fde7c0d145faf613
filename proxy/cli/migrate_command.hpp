// `suction migrate`: finish users who never log in (issue 10 must 5). Each
// login of a list is resolved through [users] (templates, map file, its
// legacy server) and migrated with the master credentials of its legacy
// server and of [new] (which does not know the passwords either).
// - Without --standalone the list goes to the running daemon over the status
//   socket (`enqueue`, one request per user): the daemon migrates those users
//   at its caps, behind every user who logs in.
// - With --standalone this process runs the daemon's own scheduler over the
//   list (same caps, same per-server limits, same retries as `suction sync
//   --retries`), shows a progress bar on a terminal, and prints the results.
// Incremental like every run: a re-run copies only what is new. Without
// master credentials nothing is guessed: the users are listed as needing a
// login.
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

// Exit codes: 0 every user migrated (--standalone) or queued by the daemon;
// 1 some not (or no master credentials, or no daemon); 2 bad command line,
// config or users file.
int run_migrate_command(const migrate_command_args& args);

}  // namespace suction::cli
