// `suction report`: where every user of a migration stands, from the state
// store (issue 10 must 6), so a script can ask "may the legacy server go off
// now?". Pure: runs in, rows out; proxy/cli reads the store and prints.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sync/state_store.hpp"

namespace suction::sync {

enum class user_progress : std::uint8_t {
  never_seen,   // no run recorded: the user never logged in (nor was migrated)
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
  std::uint64_t messages_copied = 0, bytes_copied = 0;  // over all runs
  std::string error;             // the newest run's, if it failed
};

struct migration_report {
  std::vector<user_report_row> rows;
  std::size_t counts[5] = {};  // per user_progress
  std::uint64_t messages_copied = 0, bytes_copied = 0;
  bool all_done = false;       // every listed user's last run completed
};

// `histories`: per user (as keyed in the store), its runs newest first.
migration_report build_report(
    std::span<const std::pair<std::string, std::vector<run_record>>> histories);

}  // namespace suction::sync
