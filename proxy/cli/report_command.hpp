// `suction report`: every user of a list (or every user the state store
// knows) with where the migration stands, totals, and an exit code a script
// can trust: 0 only when every listed user's last run completed.
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace suction::cli {

struct report_command_args {
  std::string config_path;
  std::string users_path;  // "" = every user the state store knows
  bool json = false;
  bool csv = false;
};

CLI::App* add_report_subcommand(CLI::App& app, report_command_args& args);

// Exit codes: 0 every listed user done; 1 some are not (or none listed);
// 2 bad command line, config or users file; 3 the state store cannot be read.
int run_report_command(const report_command_args& args);

}  // namespace suction::cli
