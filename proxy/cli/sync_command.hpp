// `suction sync`: migrate one user now, in the foreground (issue 4).
#pragma once

#include <string>

namespace suction::cli {

struct sync_command_args {
  std::string config_path;
  std::string user;
  bool password_stdin = false;
  std::string password_file;
  bool dry_run = false;
  bool json = false;
  // A run that failed for a transient reason (a server unreachable, a
  // connection lost) is tried again this many times, after 1, 2, 4, ... s.
  unsigned retries = 3;
};

// Exit codes: 0 everything copied; 1 other failures (a server unreachable, state
// store error); 2 bad command line or config; 3 login refused (legacy or new);
// 4 finished with errors.
// args holds exactly one of password_stdin, password_file (main checks).
int run_sync_command(const sync_command_args& args);

}  // namespace suction::cli
