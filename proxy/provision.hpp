// [auth] provision_command: run once for a user whose password legacy
// confirmed, the first time this daemon sees the user, so the admin can
// create the account or set its password on the new server (a passwd-file
// line, an LDAP modify, an HTTP call). argv as configured (no shell), then
// the login name and the new name; the password on stdin, one line. Its exit
// code is checked and its stderr logged (the password scrubbed, every value
// through log_value); a failure does not block the login (the master login
// carries it) and is tried again at the user's next login. Runs on its own
// thread: a slow command never holds a session or the relay.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace suction::proxy {

struct provision_result {
  int exit_code = -1;       // the command's, when it exited
  bool timed_out = false;   // killed after the timeout
  std::string error;        // could not start it (errno text)
  std::string stderr_text;  // at most 4 KiB, the password replaced by "***"
  bool ok() const { return error.empty() && !timed_out && exit_code == 0; }
};

// Runs the command and waits (at most `timeout`, then SIGKILL). Blocking.
provision_result run_provision(const std::vector<std::string>& argv,
                               std::chrono::milliseconds timeout, std::string_view login,
                               std::string_view new_name, std::string_view password);

// Once per user per daemon run (a failure: again at the next login), at most
// kMaxRunning at once (more: tried at a later login).
class provisioner : public std::enable_shared_from_this<provisioner> {
 public:
  static constexpr std::size_t kMaxRunning = 8;
  provisioner(std::vector<std::string> argv, std::chrono::milliseconds timeout)
      : argv_(std::move(argv)), timeout_(timeout) {}
  bool configured() const { return !argv_.empty(); }
  // Starts the command for `user` (as typed; `new_name` on the new server)
  // unless it succeeded or runs already for that new name.
  void maybe_run(const std::string& user, const std::string& new_name, const std::string& password,
                 const std::string& client);

 private:
  std::vector<std::string> argv_;
  std::chrono::milliseconds timeout_;
  std::mutex m_;
  std::set<std::string> done_, running_;
};

}  // namespace suction::proxy
