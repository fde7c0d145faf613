#include "sync/report.hpp"

namespace suction::sync {

std::string_view to_string(user_progress p) {
  switch (p) {
    case user_progress::never_seen: return "never_seen";
    case user_progress::queued: return "queued";
    case user_progress::running: return "running";
    case user_progress::interrupted: return "interrupted";
    case user_progress::failed: return "failed";
    case user_progress::done: return "done";
  }
  return "never_seen";
}

migration_report build_report(
    std::span<const std::pair<std::string, std::vector<run_record>>> histories,
    const std::map<std::string, user_progress, std::less<>>& live) {
  migration_report rep;
  for (const auto& [user, runs] : histories) {
    user_report_row row;
    row.user = user;
    row.runs = runs.size();
    for (const auto& r : runs) {
      row.messages_copied += r.messages_copied;
      row.bytes_copied += r.bytes_copied;
      if (r.result == run_result::done && row.done_at == 0) {
        row.done_at = r.finished_at;
        row.done_by = r.started_by;
      }
    }
    if (!runs.empty()) {
      const run_record& last = runs.front();
      row.last_run_at = last.started_at;
      row.node = last.node;
      switch (last.result) {
        case run_result::running: row.state = user_progress::running; break;
        case run_result::interrupted: row.state = user_progress::interrupted; break;
        case run_result::failed:
          row.state = user_progress::failed;
          row.error = last.error;
          break;
        case run_result::done: row.state = user_progress::done; break;
      }
      if (last.result == run_result::done) {
        row.bytes_left = 0;
      } else {
        // The newest run that got as far as scanning knows what was left.
        for (const auto& r : runs)
          if (r.bytes_left >= 0) {
            row.bytes_left = r.bytes_left;
            break;
          }
      }
    }
    // The daemon's queue says more than the store, except for a done user:
    // an incremental pass queued after it does not make it "not done".
    if (auto it = live.find(user); it != live.end() && row.state != user_progress::running &&
                                   row.state != user_progress::done)
      row.state = it->second;
    if (row.state != user_progress::done && row.bytes_left < 0) ++rep.bytes_left_unknown;
    if (row.bytes_left > 0) rep.bytes_left += static_cast<std::uint64_t>(row.bytes_left);
    ++rep.counts[static_cast<std::size_t>(row.state)];
    rep.messages_copied += row.messages_copied;
    rep.bytes_copied += row.bytes_copied;
    rep.rows.push_back(std::move(row));
  }
  rep.all_done = !rep.rows.empty() &&
                 rep.counts[static_cast<std::size_t>(user_progress::done)] == rep.rows.size();
  return rep;
}

}  // namespace suction::sync
