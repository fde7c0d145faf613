#include "proxy/cli/sync_command.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <unistd.h>
#include <optional>
#include <thread>
#include <algorithm>
#include <chrono>

#include "config/config.hpp"
#include "imap/client/secure_wipe.hpp"
#include "proxy/cli/accounts.hpp"
#include "proxy/cli/options.hpp"
#include "sync/user_sync.hpp"

namespace suction::cli {

namespace {

using imap::secret;  // the password, wiped whatever way the command ends

// A shared store: the run's lease renewed every third of it until `timer` is
// cancelled, so a long silent stretch (one huge message) does not let
// another node take the user over (the daemon's scheduler does the same).
// `done`: the run ended (a wait that had already expired when the timer was
// cancelled completes without an error).
boost::asio::awaitable<void> keep_lease(boost::asio::steady_timer& timer, sync::state_store& state,
                                        std::chrono::seconds lease, const bool& done) {
  for (;;) {
    timer.expires_after(std::chrono::duration_cast<std::chrono::milliseconds>(lease) / 3);
    boost::system::error_code ec;
    co_await timer.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    if (ec || done) co_return;
    try {
      state.renew_leases();
    } catch (const sync::state_error& e) {
      // The next recorded batch renews it or finds it lost (fenced).
      std::fprintf(stderr, "suction sync: renewing the run's lease failed: %s\n", e.what());
    }
  }
}


// The first line of fd, without its end of line, read with read(2) a byte at
// a time into a buffer reserved up front: no stdio or iostream buffer keeps a
// copy of the password, and no reallocation leaves one behind. False when
// the line is longer than kMaxPassword or reading fails.
constexpr std::size_t kMaxPassword = 4096;
bool read_first_line(int fd, std::string& out) {
  out.reserve(kMaxPassword);
  char c;
  for (;;) {
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0 || c == '\n') break;
    if (out.size() == kMaxPassword) return false;
    out.push_back(c);
  }
  if (!out.empty() && out.back() == '\r') out.pop_back();
  c = 0;
  return true;
}

// Reads the password; on failure prints one line and returns false.
bool read_password(const sync_command_args& a, secret& pw) {
  if (a.password_stdin) {
    if (!read_first_line(STDIN_FILENO, pw.value)) {
      std::fprintf(stderr, "suction sync: cannot read a password line from stdin (at most %zu bytes)\n",
                   kMaxPassword);
      return false;
    }
    if (pw.value.empty()) {
      std::fprintf(stderr, "suction sync: no password on stdin (one line expected)\n");
      return false;
    }
    return true;
  }
  int fd = ::open(a.password_file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    std::fprintf(stderr, "suction sync: cannot read the password file %s: %s\n",
                 a.password_file.c_str(), std::strerror(errno));
    return false;
  }
  const bool ok = read_first_line(fd, pw.value);
  ::close(fd);
  if (!ok) {
    std::fprintf(stderr, "suction sync: cannot read a password line from %s (at most %zu bytes)\n",
                 a.password_file.c_str(), kMaxPassword);
    return false;
  }
  if (pw.value.empty()) {
    std::fprintf(stderr, "suction sync: the password file %s is empty\n", a.password_file.c_str());
    return false;
  }
  return true;
}

nlohmann::json to_json(const sync::user_sync_report& r) {
  nlohmann::json j;
  j["user"] = r.user;
  j["dry_run"] = r.dry_run;
  j["outcome"] = sync::to_string(r.outcome);
  j["failure"] = sync::to_string(r.failure);
  j["folders_planned"] = r.folders_planned;
  j["folders_copied"] = r.folders_copied;
  j["folders_examined"] = r.folders_examined;
  j["legacy_status_commands"] = r.legacy_status_commands;
  j["messages_copied"] = r.messages_copied;
  j["messages_skipped"] = r.messages_skipped;
  j["messages_failed"] = r.messages_failed;
  j["bytes"] = r.bytes;
  j["duration_ms"] = r.duration.count();
  nlohmann::json folders = nlohmann::json::array();
  for (auto& f : r.folders) {
    nlohmann::json x;
    x["legacy"] = f.legacy_name;
    x["new"] = f.new_name;
    x["use"] = f.use;
    x["selectable"] = f.selectable;
    x["subscribe"] = f.subscribe;
    if (!f.note.empty()) x["note"] = f.note;
    x["legacy_messages"] = f.legacy_messages;
    x["to_copy"] = f.to_copy;
    x["copied"] = f.copied;
    x["bytes"] = f.bytes;
    x["skipped"] = f.skipped;
    x["failed"] = f.failed;
    x["check"] = f.check;
    x["reconciled"] = f.reconciled;
    x["removed"] = f.removed;
    x["rematched"] = f.rematched;
    x["flags_updated"] = f.flags_updated;
    if (!f.error.empty()) x["error"] = f.error;
    folders.push_back(std::move(x));
  }
  j["folders"] = std::move(folders);
  j["subscribe_only"] = r.subscribe_only;
  j["excluded"] = r.excluded;
  j["problems"] = r.problems;
  j["errors"] = r.errors;
  return j;
}

void print_text(const sync::user_sync_report& r) {
  std::printf("suction sync %s%s: %s\n", r.user.c_str(), r.dry_run ? " (dry run)" : "",
              sync::to_string(r.outcome));
  if (!r.folders.empty()) std::printf("folders:\n");
  for (auto& f : r.folders) {
    std::printf("  %s -> %s", f.legacy_name.c_str(), f.new_name.c_str());
    if (!f.selectable) std::printf("  (\\Noselect)");
    else if (r.dry_run)
      std::printf("  %u messages, %u to copy", f.legacy_messages, f.to_copy);
    else
      std::printf("  %u messages, copied %llu (%llu bytes), skipped %llu, failed %llu",
                  f.legacy_messages, static_cast<unsigned long long>(f.copied),
                  static_cast<unsigned long long>(f.bytes),
                  static_cast<unsigned long long>(f.skipped),
                  static_cast<unsigned long long>(f.failed));
    if (!f.note.empty()) std::printf("  [%s]", f.note.c_str());
    if (!f.error.empty()) std::printf("  ERROR: %s", f.error.c_str());
    std::printf("\n");
  }
  for (auto& s : r.subscribe_only) std::printf("  subscribe only: %s\n", s.c_str());
  for (auto& s : r.excluded) std::printf("  excluded: %s\n", s.c_str());
  for (auto& s : r.problems) std::printf("  note: %s\n", s.c_str());
  if (!r.dry_run)
    std::printf("total: %zu/%zu folders, %llu messages copied, %llu skipped, %llu failed, "
                "%llu bytes, %.3f s\n",
                r.folders_copied, r.folders_planned,
                static_cast<unsigned long long>(r.messages_copied),
                static_cast<unsigned long long>(r.messages_skipped),
                static_cast<unsigned long long>(r.messages_failed),
                static_cast<unsigned long long>(r.bytes), r.duration.count() / 1000.0);
  else
    std::printf("dry run: nothing copied (to_copy approximates from STATUS UIDNEXT/MESSAGES "
                "and the checkpoint)\n");
  for (auto& e : r.errors) std::printf("error: %s\n", e.c_str());
}

}  // namespace

int run_sync_command(const sync_command_args& a) {
  const auto cfg = load_config(a.config_path, false);
  if (!cfg) return 2;
  if (cfg->legacy.host.empty() || cfg->fresh.host.empty()) {
    std::fprintf(stderr, "suction sync: %s: [legacy] and [new] host are required\n",
                 a.config_path.c_str());
    return 2;
  }
  secret pw;
  if (!read_password(a, pw)) return 2;

  sync::user_sync_options opts;
  sync::sync_identity who;  // the names [users] makes of the login
  try {
    opts = sync_options_from(*cfg);
    const config::account account = account_book(*cfg).resolve(a.user);
    who = to_identity(account);
    const config::legacy_section* legacy = config::find_legacy(*cfg, account.legacy_server);
    if (!legacy)
      throw config::config_error(cfg->source.string() + ": no legacy server \"" +
                                 account.legacy_server + "\" for " + a.user);
    opts.legacy = to_server(*legacy);
    opts.connections = std::max<std::uint32_t>(
        1, std::min(cfg->sync.connections_per_user, legacy->max_connections));
  } catch (const config::config_error& e) {
    std::fprintf(stderr, "suction: %s\n", e.what());
    return 2;
  }
  std::optional<sync::user_sync_report> report;
  std::exception_ptr failure;
  try {
    const sync::store_identity identity = store_identity_from(*cfg);
    const std::int64_t lease_seconds = identity.lease_seconds;
    sync::state_store state(cfg->sync.state_db, identity);
    state.claim_node();
    state.mark_interrupted(static_cast<std::int64_t>(std::time(nullptr)));
    std::string_view password = pw.value;
    // Transient failures are tried again with a growing pause; the runs are
    // incremental, so a retry goes on where the last one stopped. The report
    // adds up what every attempt copied.
    std::uint64_t copied = 0, bytes = 0, failed = 0, skipped = 0;
    std::chrono::milliseconds spent{0};
    for (unsigned attempt = 0;; ++attempt) {
      boost::asio::io_context io(1);
      boost::asio::steady_timer lease_timer(io);
      bool run_over = false;
      if (state.shared())
        boost::asio::co_spawn(io, keep_lease(lease_timer, state, std::chrono::seconds(lease_seconds), run_over),
                              boost::asio::detached);
      boost::asio::co_spawn(
          io,
          [&]() -> boost::asio::awaitable<void> {
            report = co_await sync::sync_user(io.get_executor(), opts, who, password, state,
                                              a.dry_run);
          },
          [&](std::exception_ptr e) {
            if (e) failure = e;
            run_over = true;
            lease_timer.cancel();
          });
      io.run();
      if (failure || !report) break;
      std::fprintf(stderr, "suction: sync %s\n", sync::describe_run(*report).c_str());
      copied += report->messages_copied;
      bytes += report->bytes;
      failed += report->messages_failed;
      skipped += report->messages_skipped;
      spent += report->duration;
      // The scheduler's backoff policy, with a shorter start for a command
      // someone waits on: 1 s doubling to 60 s.
      const sync::backoff_policy backoff{std::chrono::seconds(1), std::chrono::seconds(60),
                                         a.retries + 1};
      const bool again = sync::policy(report->failure).retried && backoff.allows(attempt + 1);
      if (!again) break;
      const auto pause = backoff.delay(attempt + 1);
      std::fprintf(stderr,
                   "suction sync: attempt %u of %u failed (%s: %s); trying again in %g s\n",
                   attempt + 1, a.retries + 1,
                   std::string(sync::to_string(report->failure)).c_str(),
                   report->errors.empty() ? "?" : report->errors.front().c_str(),
                   pause.count() / 1000.0);
      std::this_thread::sleep_for(pause);
    }
    if (report) {
      report->messages_copied = copied;
      report->bytes = bytes;
      report->messages_failed = failed;
      report->messages_skipped = skipped;
      report->duration = spent;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "suction sync: %s\n", e.what());
    return 1;
  }
  if (failure || !report) {
    try {
      if (failure) std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "suction sync: %s\n", e.what());
    }
    return 1;
  }
  if (a.json) std::printf("%s\n", to_json(*report).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  else print_text(*report);
  if (report->outcome != sync::sync_outcome::ok && !report->errors.empty())
    std::fprintf(stderr, "suction sync: %s\n", report->errors.front().c_str());
  if (report->outcome == sync::sync_outcome::ok) return 0;
  // The failure's policy (sync/failure.hpp); a failure without a name (an
  // internal error) is 1.
  return std::max(1, sync::policy(report->failure).exit_code);
}

}  // namespace suction::cli
