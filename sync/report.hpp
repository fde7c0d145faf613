// `suction report`: where every user of a migration stands, from the state
// store (issue 10 must 6), so a script can ask "may the legacy server go off
// now?". Pure: runs in, rows out; proxy/cli reads the store and prints.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sync/state_store.hpp"

namespace suction::sync {

enum class user_progress : std::uint8_t {
  never_seen,   // no run recorded: the user never logged in (nor was migrated)
  queued,       // the running daemon has a job for the user waiting (a login, a bulk run, a retry)
  running,      // a run is recorded as running now
  interrupted,  // the last run was cut off (crash, stop): partly copied, resumes
  failed,       // the last run failed (its error says why)
  done,         // the last run completed
};
std::string_view to_string(user_progress p);

struct user_report_row {
  std::string user;
  user_progress state = user_progress::never_seen;
  std::size_t runs = 0;
  std::int64_t last_run_at = 0;  // the newest run's start, unix seconds (0: none)
  std::int64_t done_at = 0;      // the newest completed run's end (0: never completed)
  std::string done_by;           // what started that run: "login", "bulk", "cli" ("" unknown)
  // Bytes known still to copy: 0 when done; from the newest run that got as
  // far as scanning (folders it did not scan are not counted); -1 unknown.
  std::int64_t bytes_left = -1;
  std::uint64_t messages_copied = 0, bytes_copied = 0;  // over all runs
  std::string error;             // the newest run's, if it failed
  std::string node;              // the node of the newest run (a shared store; "" otherwise)
};

struct migration_report {
  std::vector<user_report_row> rows;
  std::size_t counts[6] = {};  // per user_progress
  std::uint64_t messages_copied = 0, bytes_copied = 0;
  std::uint64_t bytes_left = 0;  // the sum of the known bytes_left
  std::size_t bytes_left_unknown = 0;  // users not done whose bytes left are not known
  bool all_done = false;       // every listed user's last run completed
};

// `histories`: per user (as keyed in the store), its runs newest first.
// `live`: what the running daemon says of users it has queued or running, by
// the same names (empty without a daemon); it wins over the store's history.
migration_report build_report(
    std::span<const std::pair<std::string, std::vector<run_record>>> histories,
    const std::map<std::string, user_progress, std::less<>>& live = {});

}  // namespace suction::sync
