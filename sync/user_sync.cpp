#include "sync/user_sync.hpp"

#include "imap/mutf7.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <memory>
#include <optional>
#include <map>
#include <set>

#include "imap/response.hpp"
#include "imap/serialize.hpp"
#include "sync/folder_brain.hpp"

namespace suction::sync {

namespace {

using imap::command_result;
using imap::status;

std::string where(const server_options& s) { return imap::display(s.endpoint); }

// One connection of a run; registered with the run's stopper while it lives.
struct session {
  std::unique_ptr<imap::client> c;
  bool logged_in = false;
  run_stopper* stopper = nullptr;

  session() = default;
  session(const session&) = delete;
  session& operator=(const session&) = delete;
  ~session() {
    if (stopper && c) stopper->remove(c.get());
  }
};

// One TLS context per server for a run's connections: building one reads the
// CA store (imap::make_client_tls_context), so it is made once, at first use.
struct tls_contexts {
  std::shared_ptr<boost::asio::ssl::context> legacy, fresh;
};

// Connects and logs in; `tls` is the run's context for this server (made
// here if still null). On failure sets report outcome/errors and returns false.
boost::asio::awaitable<bool> open(session& s, boost::asio::any_io_executor ex,
                                  const server_options& so,
                                  std::shared_ptr<boost::asio::ssl::context>& tls,
                                  const char* which, const server_login& who,
                                  std::string_view password, user_sync_report& rep) {
  imap::client_options co;
  co.connect_timeout = so.connect_timeout;
  co.command_timeout = so.command_timeout;
  s.c = std::make_unique<imap::client>(ex, co);
  if (s.stopper) {
    // A run that gets here after the stop does not connect at all.
    if (s.stopper->stopped()) {
      rep.outcome = sync_outcome::failed;
      note_failure(rep, failure_kind::stopped);
      co_return false;
    }
    s.stopper->add(s.c.get());
  }
  if (so.endpoint.tls != imap::tls_mode::none && !tls) {
    std::error_code ec;
    tls = imap::make_client_tls_context(so.tls, ec);
    if (ec) {
      tls.reset();
      rep.outcome = sync_outcome::failed;
      note_failure(rep, failure_kind::tls);
      rep.errors.push_back(std::string(which) + " server " + where(so) + ": TLS setup: " +
                           ec.message());
      co_return false;
    }
  }
  imap::endpoint ep = so.endpoint;
  auto connected = co_await s.c->connect(ep, tls);
  // Stopped while connecting: not to be used, whatever connect said (a
  // stream made after the stop closed the others is closed here).
  if (s.stopper && s.stopper->stopped()) {
    s.c->close();
    rep.outcome = sync_outcome::failed;
    note_failure(rep, failure_kind::stopped);
    co_return false;
  }
  if (auto ec = connected) {
    rep.outcome = sync_outcome::failed;
    rep.errors.push_back("cannot reach the " + std::string(which) + " server " + where(so) +
                         ": " + ec.message());
    note_failure(rep, connect_failure(ec));
    co_return false;
  }
  command_result r;
  // The master logs in as the user; otherwise the user's own login name.
  const std::string& name = so.master.configured() ? who.user : who.login;
  std::error_code ec;  // two statements, no co_await in ?: (GCC 12, imap/client/README.md)
  if (so.master.configured())
    ec = co_await s.c->login_as(name, so.master, &r);
  else
    ec = co_await s.c->login(name, password, &r);
  if (ec) {
    if (ec == imap::errc::auth_failed) {
      // Refused for good (the credentials), or for now ([UNAVAILABLE] ...): retried.
      const failure_kind kind = login_refusal(r);
      rep.outcome = kind == failure_kind::credentials ? sync_outcome::login_failed
                                                      : sync_outcome::failed;
      note_failure(rep, kind);
      rep.errors.push_back("the " + std::string(which) + " server " + where(so) +
                           (kind == failure_kind::credentials ? " refused the login for "
                                                              : " refused the login for now for ") +
                           name + (r.text.empty() ? std::string() : ": " + r.text));
    } else {
      rep.outcome = sync_outcome::failed;
      rep.errors.push_back("login on the " + std::string(which) + " server " + where(so) +
                           " failed: " + ec.message());
      note_failure(rep, failure_kind::greeting);
    }
    s.c->close();
    co_return false;
  }
  s.logged_in = true;
  co_return true;
}

boost::asio::awaitable<std::optional<namespace_info>> read_namespace(imap::client& c) {
  command_result r;
  if (c.capabilities().has("NAMESPACE")) {
    if (!co_await c.simple("NAMESPACE", r) && r.status == status::ok)
      for (auto& u : r.untagged)
        if (auto ns = imap::decode_namespace(u))
          if (auto p = personal_namespace(*ns)) co_return p;
  }
  command_result r2;
  if (co_await c.simple("LIST \"\" \"\"", r2) || r2.status != status::ok) co_return std::nullopt;
  for (auto& u : r2.untagged)
    if (auto l = imap::decode_list(u)) co_return namespace_info{"", l->separator};
  co_return namespace_info{};
}

// With `statuses` and LIST-STATUS (RFC 5819) offered, the LIST also returns
// every selectable folder's STATUS, keyed by its UTF-8 name: one round trip for
// all folders instead of one STATUS each.
boost::asio::awaitable<std::optional<std::vector<mailbox_info>>> read_mailboxes(
    imap::client& c, std::map<std::string, imap::status_data>* statuses = nullptr) {
  command_result list, lsub;
  std::string cmd = "LIST \"\" \"*\"";
  const bool list_status = statuses && c.capabilities().has("LIST-STATUS");
  if (list_status)
    cmd += c.capabilities().has("CONDSTORE")
               ? " RETURN (STATUS (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ))"
               : " RETURN (STATUS (MESSAGES UIDNEXT UIDVALIDITY))";
  if (co_await c.simple(cmd, list) || list.status != status::ok)
    co_return std::nullopt;
  if (list_status)
    for (auto& u : list.untagged)
      if (auto st = imap::decode_status(u)) {
        std::string name = imap::mutf7_decode(st->mailbox).value_or(st->mailbox);
        (*statuses)[name] = std::move(*st);
      }
  if (co_await c.simple("LSUB \"\" \"*\"", lsub) || lsub.status != status::ok)
    co_return std::nullopt;
  std::vector<imap::list_data> l, s;
  for (auto& u : list.untagged)
    if (auto d = imap::decode_list(u)) l.push_back(std::move(*d));
  for (auto& u : lsub.untagged)
    if (auto d = imap::decode_list(u)) s.push_back(std::move(*d));
  co_return mailboxes_from(l, s);
}

std::uint32_t approx_to_copy(const imap::status_data& st, const std::optional<folder_state>& cp) {
  std::uint32_t messages = st.messages.value_or(0);
  if (!cp || cp->last_legacy_uid == 0) return messages;
  std::uint32_t uidnext = st.uidnext.value_or(0);
  if (uidnext == 0 || uidnext - 1 <= cp->last_legacy_uid) return 0;
  if (st.uidvalidity && *st.uidvalidity != cp->legacy_uidvalidity) return messages;
  return std::min(messages, uidnext - 1 - cp->last_legacy_uid);
}

// One selectable folder for copy_folder: its place in the report, its mapping,
// the HIGHESTMODSEQ its legacy STATUS gave.
struct folder_job {
  std::size_t report_index;
  const folder_mapping* mapping;
  std::optional<std::uint64_t> legacy_modseq;
};

bool is_inbox(std::string_view legacy_name) { return imap::iequals(legacy_name, "INBOX"); }

// What the workers of one run share. One thread: no locks.
struct copy_run {
  const user_sync_options& opts;
  const sync_identity& who;  // the names the servers get; who.key in the state store
  tls_contexts& tls;
  state_store& state;
  sync_progress* progress;
  user_sync_report& rep;
  std::vector<folder_job> jobs;
  std::size_t next = 0;  // the next job to take
};

// Takes folders off the shared list until none is left or its connection breaks.
boost::asio::awaitable<void> copy_worker(copy_run& run, session& legacy, session& fresh) {
  while (run.next < run.jobs.size()) {
    const folder_job& j = run.jobs[run.next++];
    const folder_mapping& m = *j.mapping;
    folder_report& fr = run.rep.folders[j.report_index];
    ++run.rep.folders_examined;
    copy_options co = run.opts.copy;
    co.legacy_modseq = j.legacy_modseq;
    if (is_inbox(m.legacy_name) && run.opts.recent_first_days > 0)
      co.recent_since = static_cast<std::int64_t>(std::time(nullptr)) -
                        static_cast<std::int64_t>(run.opts.recent_first_days) * 86400;
    // The STATUS estimate stands in the progress total until the scan knows better.
    bool scanned = false;
    sync_progress* progress = run.progress;
    const std::uint64_t estimate = fr.to_copy;
    if (progress) {
      co.on_scanned = [&scanned, progress, estimate](std::uint64_t n, std::uint64_t bytes) {
        scanned = true;
        progress->messages_total += n;
        progress->messages_total -= estimate;
        progress->bytes_total += bytes;
      };
      co.on_copied = [progress](std::uint64_t n, std::uint64_t bytes) {
        progress->messages_copied += n;
        progress->bytes_copied += bytes;
      };
      co.on_dropped = [progress](std::uint64_t n, std::uint64_t bytes) {
        progress->messages_total -= n;
        progress->bytes_total -= bytes;
      };
    }
    folder_copy_report cr;
    auto ec = co_await copy_folder(*legacy.c, *fresh.c, run.state, run.who.key, m, co, cr);
    if (progress && !scanned) progress->messages_total -= estimate;
    fr.copied = cr.copied;
    fr.bytes = cr.bytes;
    fr.skipped = cr.skipped;
    fr.failed = cr.failed;
    fr.reconciled = cr.reconciled;
    fr.removed = cr.removed;
    fr.rematched = cr.rematched;
    fr.flags_updated = cr.flags_updated;
    // copy_folder's errors name their folder already.
    for (auto& e : cr.errors) run.rep.errors.push_back(e);
    if (ec == copy_errc::append_refused_transient) note_failure(run.rep, failure_kind::quota);
    if (ec) {
      fr.error = ec.message();
      fr.error_is_connection = ec.category() != copy_category() &&
                               ec != make_error_code(imap::errc::command_no) &&
                               ec != make_error_code(imap::errc::command_bad);
      if (cr.errors.empty()) run.rep.errors.push_back(m.legacy_name + ": " + ec.message());
    } else {
      fr.done = true;
      if (progress) ++progress->folders_done;
    }
    // A broken connection ends this worker: nothing more can be done on it.
    if (fr.error_is_connection) {
      note_failure(run.rep, failure_kind::connect);
      run.rep.errors.push_back("connection lost while copying " + m.legacy_name);
      co_return;
    }
  }
}

// Opens one more pair of connections for a worker and runs it. A pair that
// cannot be opened (the legacy server's per-user connection limit, say) only
// means fewer folders at once: a note, not an error.
boost::asio::awaitable<void> extra_worker(copy_run& run, boost::asio::any_io_executor ex,
                                          std::string_view password) {
  session legacy, fresh;
  legacy.stopper = fresh.stopper = run.opts.stopper.get();
  user_sync_report scratch;
  if (run.next >= run.jobs.size()) co_return;  // the first pair took everything already
  // Two steps, not `co_await a && co_await b` (GCC 12, see imap/client/README.md).
  bool opened = co_await open(legacy, ex, run.opts.legacy, run.tls.legacy, "legacy", run.who.legacy,
                              password, scratch);
  if (opened)
    opened = co_await open(fresh, ex, run.opts.fresh, run.tls.fresh, "new", run.who.fresh, password,
                           scratch);
  if (opened) {
    co_await copy_worker(run, legacy, fresh);
  } else if (!scratch.errors.empty()) {
    run.rep.problems.push_back("one connection pair fewer: " + scratch.errors.front());
  }
  if (legacy.logged_in) co_await legacy.c->logout();
  if (fresh.logged_in) co_await fresh.c->logout();
}

// A worker's end: wrapped, as a bare exception_ptr would be rethrown by the
// awaitable receiving it.
struct worker_end {
  std::exception_ptr failure;
};
using worker_ends = boost::asio::experimental::channel<void(boost::system::error_code, worker_end)>;

// Copies the folders of `jobs` over up to opts.connections pairs of
// connections (the first pair is the run's own), INBOX first, then the
// largest first so one big folder does not end the run alone.
boost::asio::awaitable<void> copy_folders(boost::asio::any_io_executor ex,
                                          const user_sync_options& opts, const sync_identity& who,
                                          std::string_view password,
                                          state_store& state, tls_contexts& tls,
                                          session& legacy, session& fresh,
                                          std::vector<folder_job> jobs, sync_progress* progress,
                                          user_sync_report& rep) {
  std::stable_sort(jobs.begin(), jobs.end(), [&](const folder_job& a, const folder_job& b) {
    const bool ai = is_inbox(a.mapping->legacy_name), bi = is_inbox(b.mapping->legacy_name);
    if (ai != bi) return ai;
    return rep.folders[a.report_index].to_copy > rep.folders[b.report_index].to_copy;
  });
  // A small mailbox is copied before another pair of connections would be
  // logged in: more pairs only when there is enough to copy. (Each pair is two
  // more logins, on servers busy with users' own logins in a storm.)
  std::uint64_t to_copy = 0;
  for (auto& j : jobs) to_copy += rep.folders[j.report_index].to_copy;
  const std::size_t wanted = to_copy >= opts.parallel_min_messages ? opts.connections : 1;
  copy_run run{opts, who, tls, state, progress, rep, std::move(jobs)};
  std::size_t workers = std::max<std::size_t>(1, std::min<std::size_t>(wanted, run.jobs.size()));
  std::uint32_t granted = 0;  // extra pairs the scheduler allowed (its legacy cap)
  if (workers > 1 && opts.acquire_connections) {
    granted = opts.acquire_connections(static_cast<std::uint32_t>(workers - 1));
    workers = 1 + granted;
  }
  // Each worker reports its end (and an exception, the state store's) on a
  // channel with room for all of them; the run waits for every report.
  worker_ends ends(ex, workers);
  auto finished = [&ends](std::exception_ptr e) {
    ends.try_send(boost::system::error_code{}, worker_end{e});
  };
  boost::asio::co_spawn(ex, copy_worker(run, legacy, fresh), finished);
  for (std::size_t i = 1; i < workers; ++i)
    boost::asio::co_spawn(ex, extra_worker(run, ex, password), finished);
  std::exception_ptr failure;
  for (std::size_t i = 0; i < workers; ++i) {
    boost::system::error_code ignored;
    auto end = co_await ends.async_receive(
        boost::asio::redirect_error(boost::asio::use_awaitable, ignored));
    if (end.failure && !failure) failure = end.failure;
  }
  if (granted > 0 && opts.release_connections) opts.release_connections(granted);
  if (failure) std::rethrow_exception(failure);  // the state store failed
  if (run.next < run.jobs.size())
    rep.errors.push_back(std::to_string(run.jobs.size() - run.next) +
                         " folders not copied: every connection was lost");
}


}  // namespace

void run_stopper::stop() {
  stopped_ = true;
  // close() cancels what each connection waits for; the run unwinds from there.
  for (imap::client* c : std::vector<imap::client*>(open_)) c->close();
}

const char* to_string(sync_outcome o) {
  switch (o) {
    case sync_outcome::ok: return "ok";
    case sync_outcome::login_failed: return "login_failed";
    case sync_outcome::finished_with_errors: return "finished_with_errors";
    case sync_outcome::failed: return "failed";
    case sync_outcome::interrupted: return "interrupted";
  }
  return "failed";
}

std::string user_key(const user_sync_options& opts, std::string_view user) {
  std::string key(user);
  if (opts.fold_user_case)
    for (char& c : key)
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return key;
}

std::string describe_run(const user_sync_report& r) {
  std::string line = "user=" + log_value(r.user) + " result=" + to_string(r.outcome) +
                     (r.failure != failure_kind::none
                          ? " failure=" + std::string(to_string(r.failure))
                          : std::string()) +
                     (r.dry_run ? " dry_run=yes" : "") +
                     " folders=" + std::to_string(r.folders_copied) + "/" +
                     std::to_string(r.folders_planned) +
                     " copied=" + std::to_string(r.messages_copied) +
                     " bytes=" + std::to_string(r.bytes) +
                     " failed=" + std::to_string(r.messages_failed);
  // Only when it happened: a crash's leftovers found, a late batch's second copies removed.
  if (r.messages_reconciled > 0) line += " reconciled=" + std::to_string(r.messages_reconciled);
  if (r.messages_removed > 0) line += " removed=" + std::to_string(r.messages_removed);
  char duration[32];
  std::snprintf(duration, sizeof duration, " duration=%.3fs", r.duration.count() / 1000.0);
  line += duration;
  if (!r.errors.empty()) line += " error=" + log_value(r.errors.front());
  return line;
}

namespace {

// One run's work between begin_run and finish_run: log in on both servers,
// plan, create, subscribe, copy, log out. Fills `rep`; a state store failure
// propagates (sync_user records it).
boost::asio::awaitable<void> run_body(boost::asio::any_io_executor ex,
                                      const user_sync_options& opts, const sync_identity& who,
                                      std::string_view password,
                                      state_store& state, bool dry_run, sync_progress* progress,
                                      user_sync_report& rep) {
  session legacy, fresh;
  legacy.stopper = fresh.stopper = opts.stopper.get();
  tls_contexts tls;
  const std::string& key = who.key;
  bool ok = co_await open(legacy, ex, opts.legacy, tls.legacy, "legacy", who.legacy, password, rep);
  if (ok) ok = co_await open(fresh, ex, opts.fresh, tls.fresh, "new", who.fresh, password, rep);

  folder_plan plan;
  if (ok) {
    auto lns = co_await read_namespace(*legacy.c);
    auto nns = co_await read_namespace(*fresh.c);
    std::map<std::string, imap::status_data> legacy_statuses;  // from LIST-STATUS
    auto lboxes = co_await read_mailboxes(*legacy.c, &legacy_statuses);
    auto nboxes = co_await read_mailboxes(*fresh.c);
    if (!lns || !nns || !lboxes || !nboxes) {
      rep.outcome = sync_outcome::failed;
      note_failure(rep, failure_kind::protocol);
      rep.errors.push_back("could not read NAMESPACE/LIST/LSUB on " +
                           std::string(!lns || !lboxes ? "the legacy server " + where(opts.legacy)
                                                       : "the new server " + where(opts.fresh)));
      ok = false;
    } else {
      try {
        plan = plan_folders(*lboxes, *lns, *nboxes, *nns, opts.rules);
      } catch (const std::exception& e) {
        rep.outcome = sync_outcome::failed;
        note_failure(rep, failure_kind::protocol);
        rep.errors.push_back(std::string("folder plan: ") + e.what());
        ok = false;
      }
      if (ok) {
        std::set<std::string> existing;
        for (auto& m : *nboxes)
          if (std::find(m.attributes.begin(), m.attributes.end(), "\\NonExistent") ==
              m.attributes.end())
            existing.insert(m.name);
        std::set<std::string> subscribed_new;
        for (auto& m : *nboxes)
          if (m.subscribed) subscribed_new.insert(m.name);
        rep.folders_planned = plan.folders.size();
        rep.excluded = plan.excluded;
        rep.problems = plan.problems;
        for (auto& s : plan.subscribe_only) rep.subscribe_only.push_back(s.new_name);
        std::set<std::string> created;
        std::vector<folder_job> jobs;
        // Read once for the no-change test: nothing writes a checkpoint while planning.
        std::map<std::string, folder_state> checkpoints;
        for (auto& f : state.folders(key)) checkpoints.emplace(f.legacy_name, f);
        // A batch an earlier run left in flight may still land: never skipped.
        const std::set<std::string> journaled = state.journaled_folders(key);
        const bool condstore = legacy.c->capabilities().has("CONDSTORE");
        for (auto& m : plan.folders) {
          folder_report fr;
          fr.legacy_name = m.legacy_name;
          fr.new_name = m.new_name;
          fr.use = to_string(m.use);
          fr.selectable = m.selectable;
          fr.subscribe = m.subscribe;
          fr.note = m.note;
          // Legacy STATUS, and the no-change test (check_folder).
          std::optional<std::uint64_t> legacy_modseq;
          bool unchanged = false;
          if (m.selectable) {
            // The folder's legacy STATUS: from the LIST (LIST-STATUS), else asked for.
            std::optional<imap::status_data> st;
            if (auto it = legacy_statuses.find(m.legacy_name); it != legacy_statuses.end()) {
              st = it->second;
            } else {
              ++rep.legacy_status_commands;
              command_result r;
              auto ec = co_await legacy.c->mailbox_command(
                  "STATUS", m.legacy_name, r,
                  condstore ? "(MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)" : "(MESSAGES UIDNEXT UIDVALIDITY)");
              if (!ec && r.status == status::ok)
                for (auto& u : r.untagged)
                  if (auto d = imap::decode_status(u)) st = std::move(*d);  // the last one counts
            }
            std::optional<folder_state> cp;
            if (auto it = checkpoints.find(m.legacy_name); it != checkpoints.end()) cp = it->second;
            if (st) {
              fr.legacy_messages = st->messages.value_or(0);
              fr.to_copy = approx_to_copy(*st, cp);
              if (condstore) legacy_modseq = st->highestmodseq;
            }
            const folder_check check =
                check_folder(st, cp, condstore, m, journaled.contains(m.legacy_name));
            fr.check = std::string(to_string(check));
            unchanged = check == folder_check::unchanged;
          }
          if (dry_run) {
            rep.folders.push_back(std::move(fr));
            continue;
          }
          // Create (also \Noselect parents and empty folders), then subscribe.
          if (!existing.contains(m.new_name) && !created.contains(m.new_name)) {
            command_result r;
            auto ec = co_await fresh.c->mailbox_command("CREATE", m.new_name, r);
            if (ec) {
              fr.error = "CREATE " + m.new_name + ": " + ec.message();
              fr.error_is_connection = true;
            } else if (r.status != status::ok && !(r.code && r.code->name == "ALREADYEXISTS")) {
              fr.error = "CREATE " + m.new_name + " refused: " + r.text;
            } else {
              created.insert(m.new_name);
            }
          }
          if (m.subscribe && fr.error.empty() && !subscribed_new.contains(m.new_name)) {
            command_result r;
            auto ec = co_await fresh.c->mailbox_command("SUBSCRIBE", m.new_name, r);
            if (!ec && r.status == status::ok) subscribed_new.insert(m.new_name);
            else rep.errors.push_back("SUBSCRIBE " + m.new_name + " refused" +
                                      (ec ? ": " + ec.message() : ": " + r.text));
          }
          const bool broken = !fr.error.empty() && fr.error_is_connection;
          if (fr.error.empty() && m.selectable && !unchanged) {
            jobs.push_back({rep.folders.size(), &m, legacy_modseq});
          } else if (fr.error.empty()) {
            fr.done = true;  // a \Noselect parent, or nothing new and no flag changed on legacy
          } else {
            rep.errors.push_back(m.legacy_name + ": " + fr.error);
          }
          rep.folders.push_back(std::move(fr));
          // A broken connection ends the planning: nothing more can be done on it.
          if (broken) {
            note_failure(rep, failure_kind::connect);
            rep.errors.push_back("run stopped after " + m.legacy_name + ": connection lost");
            jobs.clear();
            break;
          }
        }
        if (progress) {
          progress->folders_total = static_cast<std::uint32_t>(rep.folders.size());
          std::uint32_t done = 0;
          for (auto& fr : rep.folders) done += fr.done ? 1 : 0;
          progress->folders_done = done;
          for (auto& j : jobs) progress->messages_total += rep.folders[j.report_index].to_copy;
        }
        if (!dry_run && !jobs.empty())
          co_await copy_folders(ex, opts, who, password, state, tls, legacy, fresh,
                                std::move(jobs), progress, rep);
        for (auto& fr : rep.folders) {
          if (fr.done) ++rep.folders_copied;
          rep.messages_copied += fr.copied;
          rep.bytes += fr.bytes;
          rep.messages_skipped += fr.skipped;
          rep.messages_failed += fr.failed;
          rep.messages_reconciled += fr.reconciled;
          rep.messages_removed += fr.removed;
        }
        if (!dry_run)
          for (auto& s : plan.subscribe_only) {
            if (subscribed_new.contains(s.new_name)) continue;
            command_result r;
            auto ec = co_await fresh.c->mailbox_command("SUBSCRIBE", s.new_name, r);
            // Many servers (Dovecot) refuse to subscribe a name that does not exist:
            // a note for the report, not an error of the run.
            if (ec) rep.errors.push_back("SUBSCRIBE " + s.new_name + ": " + ec.message());
            else if (r.status != status::ok)
              rep.problems.push_back("subscription to the missing folder " + s.new_name +
                                     " not kept: the new server refused it (" + r.text + ")");
          }
        if (!rep.errors.empty() || rep.messages_failed > 0) {
          rep.outcome = sync_outcome::finished_with_errors;
          note_failure(rep, failure_kind::message_refused);
        }
      }
    }
  }
  if (legacy.logged_in) co_await legacy.c->logout();
  if (fresh.logged_in) co_await fresh.c->logout();
}

}  // namespace

sync_identity same_names(const user_sync_options& opts, std::string_view user) {
  return {user_key(opts, user), {std::string(user), std::string(user)},
          {std::string(user), std::string(user)}};
}

boost::asio::awaitable<user_sync_report> sync_user(boost::asio::any_io_executor ex,
                                                   const user_sync_options& opts,
                                                   std::string_view user,
                                                   std::string_view password, state_store& state,
                                                   bool dry_run, sync_progress* progress) {
  const sync_identity who = same_names(opts, user);
  user_sync_report rep = co_await sync_user(ex, opts, who, password, state, dry_run, progress);
  rep.user = std::string(user);  // as typed, for the caller's lines
  co_return rep;
}

boost::asio::awaitable<user_sync_report> sync_user(boost::asio::any_io_executor ex,
                                                   const user_sync_options& opts,
                                                   const sync_identity& who,
                                                   std::string_view password, state_store& state,
                                                   bool dry_run, sync_progress* progress) {
  user_sync_report rep;
  rep.user = who.key;
  rep.dry_run = dry_run;
  auto t0 = std::chrono::steady_clock::now();
  const std::string& key = who.key;
  std::int64_t run_id = 0;
  if (!dry_run) {
    try {
      run_id = state.begin_run(key, static_cast<std::int64_t>(std::time(nullptr)), 0,
                               opts.started_by);
    } catch (const run_busy& e) {
      // One migration per user, also across processes (`suction sync` beside
      // the daemon): try again later.
      rep.outcome = sync_outcome::failed;
      note_failure(rep, failure_kind::busy);
      rep.errors.push_back(e.what());
      co_return rep;
    }
  }

  // The bytes left at the end come from the progress counters: the caller's,
  // or the run's own.
  sync_progress own_progress;
  if (!progress) progress = &own_progress;
  std::exception_ptr failure;  // the state store (or anything) threw: recorded, then thrown on
  try {
    co_await run_body(ex, opts, who, password, state, dry_run, progress, rep);
  } catch (...) {
    failure = std::current_exception();
  }
  if (failure) {
    rep.outcome = sync_outcome::failed;
    try {
      std::rethrow_exception(failure);
    } catch (const lease_lost& e) {
      // Another node took the user over (this one was silent past its
      // lease): tried again later, when that node's run is over.
      note_failure(rep, failure_kind::busy);
      rep.errors.insert(rep.errors.begin(), e.what());
    } catch (const state_error& e) {
      note_failure(rep, failure_kind::state_store);
      rep.errors.insert(rep.errors.begin(), std::string("state store: ") + e.what());
    } catch (const std::exception& e) {
      rep.errors.insert(rep.errors.begin(), std::string("internal error: ") + e.what());
    } catch (...) {
      rep.errors.insert(rep.errors.begin(), "internal error");
    }
  }
  if (opts.stopper && opts.stopper->stopped()) {
    // Whatever else went wrong followed from the stop (connections closed).
    rep.outcome = sync_outcome::interrupted;
    note_failure(rep, failure_kind::stopped);
    rep.errors.insert(rep.errors.begin(), "stopped: suction is shutting down; the run resumes at the next start");
  }
  rep.duration = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - t0);
  if (!dry_run) {
    run_record rr;
    rr.id = run_id;
    rr.user = key;
    rr.finished_at = static_cast<std::int64_t>(std::time(nullptr));
    rr.result = rep.outcome == sync_outcome::ok            ? run_result::done
                : rep.outcome == sync_outcome::interrupted ? run_result::interrupted
                                                           : run_result::failed;
    rr.messages_copied = rep.messages_copied;
    rr.bytes_copied = rep.bytes;
    rr.messages_failed = rep.messages_failed;
    if (!rep.errors.empty()) rr.error = rep.errors.front();
    // Known only when the run got as far as scanning (a run that could not
    // log in knows nothing); folders not scanned yet are not counted.
    const std::uint64_t total = progress->bytes_total.load(), copied = progress->bytes_copied.load();
    if (rep.outcome == sync_outcome::ok) rr.bytes_left = 0;
    else if (total > 0) rr.bytes_left = static_cast<std::int64_t>(total > copied ? total - copied : 0);
    // Also after a failure of the store, so the run is not left "running"
    // under this live process (begin_run would refuse the user as busy).
    try {
      state.finish_run(rr);
    } catch (...) {
      if (!failure) throw;
    }
  }
  if (failure) std::rethrow_exception(failure);
  co_return rep;
}

}  // namespace suction::sync
