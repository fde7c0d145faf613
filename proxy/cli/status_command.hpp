// `suction status`: the status socket's command line client (issue 5).
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace suction::cli {

struct status_command_args {
  std::string socket_path;   // --socket; empty: from --config, else the config's default
  std::string config_path;   // --config: read [status] socket from it
  std::string user;          // --user: one user's detail and runs instead of the table
  bool json = false;         // --json: the daemon's answers as they came, one line each
  // The steering commands; at most one, and not with --user (main.cpp checks).
  std::string resync_user;   // --resync USER
  bool pause = false;
  bool resume = false;
  bool drain = false;
};

// Registers `status` and its options on the command line, filling `args`.
CLI::App* add_status_subcommand(CLI::App& app, status_command_args& args);

// Exit codes: 0 answered; 1 no daemon, a timeout, or an {"error":...} answer
// (e.g. an unknown user); 2 bad command line or config.
int run_status_command(const status_command_args& args);

}  // namespace suction::cli
