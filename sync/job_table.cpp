#include "sync/job_table.hpp"

#include <algorithm>
#include <cstdio>

namespace suction::sync {

namespace {


user_state from_run(run_result r) {
  switch (r) {
    case run_result::done: return user_state::done;
    case run_result::failed: return user_state::failed;
    case run_result::running:  // not after mark_interrupted; and a crash is an interruption
    case run_result::interrupted: return user_state::interrupted;
  }
  return user_state::interrupted;
}

}  // namespace

job_time job_time::now() {
  return {std::chrono::steady_clock::now(),
          std::chrono::duration_cast<std::chrono::seconds>(
              std::chrono::system_clock::now().time_since_epoch())
              .count()};
}

std::string_view to_string(user_state s) {
  switch (s) {
    case user_state::pending: return "pending";
    case user_state::running: return "running";
    case user_state::done: return "done";
    case user_state::failed: return "failed";
    case user_state::interrupted: return "interrupted";
  }
  return "pending";
}

// A job's state as its last recorded run left it.
static void apply_run(job& j, const run_record& last) {
  j.state = from_run(last.result);
  j.started_at = last.started_at;
  if (last.finished_at != 0) j.finished_at = last.finished_at;
  if (last.result == run_result::done) j.completed_at = last.finished_at;
  j.last_error = last.error;
}

void job_table::restore(const run_record& last) { apply_run(jobs_[last.user], last); }

bool job_table::known_server(std::string_view server) const {
  return server.empty() || rules_.more_legacy.contains(server);
}

std::uint32_t job_table::cap_of(std::string_view server) const {
  if (auto it = rules_.more_legacy.find(server); it != rules_.more_legacy.end()) return it->second;
  return rules_.legacy_max_connections;
}

std::uint32_t job_table::room_on(const std::string& server) const {
  auto it = legacy_in_use_.find(server);
  std::uint32_t used = it == legacy_in_use_.end() ? 0 : it->second;
  if (auto other = held_elsewhere_.find(server); other != held_elsewhere_.end()) used += other->second;
  const std::uint32_t cap = cap_of(server);
  return used < cap ? cap - used : 0;
}

std::size_t job_table::waiting_on(const std::string& server) const {
  std::size_t n = 0;
  for (const auto* q : {&queue_, &bulk_queue_})
    for (const auto& key : *q)
      if (auto it = jobs_.find(key); it != jobs_.end() && it->second.legacy_server == server) ++n;
  return n;
}

std::uint32_t job_table::legacy_in_use() const {
  std::uint32_t n = 0;
  for (const auto& [server, used] : legacy_in_use_) n += used;
  return n;
}

const job* job_table::find(std::string_view key) const {
  auto it = jobs_.find(key);
  return it == jobs_.end() ? nullptr : &it->second;
}

void job_table::queue(const std::string& key, job& j) {
  j.queued = true;
  j.state = user_state::pending;
  j.retry_at.reset();
  (j.bulk ? bulk_queue_ : queue_).push_back(key);
}

bool job_table::on_login(const sync_identity& who, std::string legacy_server, std::string client,
                         job_time now) {
  if (stopped_) return false;
  job& j = jobs_[who.key];
  const bool queued = login_queues(who, std::move(legacy_server), std::move(client), now, j);
  // credential_ttl 0: a password no job will use is not kept at all.
  if (rules_.credential_ttl.count() == 0 && !j.running && !j.queued && !j.retry_at)
    j.has_credentials = false;
  return queued;
}

bool job_table::login_queues(const sync_identity& who, std::string legacy_server, std::string client,
                             job_time now, job& j) {
  const std::string& key = who.key;
  j.has_credentials = true;
  j.credentials_until = now.mono + rules_.credential_ttl;
  j.client_address = std::move(client);
  if (j.running) return false;  // one job per user: the running one keeps its names
  j.who = who;
  j.legacy_server = std::move(legacy_server);
  if (j.queued && j.bulk) {
    // A login goes first: the bulk job moves to the logins' queue.
    std::erase(bulk_queue_, key);
    j.bulk = false;
    queue_.push_back(key);
    return true;
  }
  j.bulk = false;
  if (j.queued || j.retry_at || j.offered) return false;  // one job per user
  if (j.state == user_state::done && j.completed_at &&
      now.unix - *j.completed_at < rules_.resync_interval.count())
    return false;
  queue(key, j);
  return true;
}

std::string job_table::enqueue_bulk(const sync_identity& who, std::string legacy_server,
                                    std::string client) {
  if (stopped_) return "the daemon is stopping";
  if (!known_server(legacy_server)) return "no legacy server \"" + legacy_server + "\"";
  job& j = jobs_[who.key];
  if (j.running || j.queued) return "already queued or running";
  j.who = who;
  j.legacy_server = std::move(legacy_server);
  j.bulk = true;
  j.offered = false;
  j.client_address = std::move(client);
  queue(who.key, j);
  return "";
}

std::vector<std::string> job_table::waiting_logins() const {
  return {queue_.begin(), queue_.end()};
}

bool job_table::offer(std::string_view key) {
  auto it = jobs_.find(key);
  if (it == jobs_.end() || !it->second.queued || it->second.bulk) return false;
  std::erase(queue_, it->first);
  it->second.queued = false;
  it->second.offered = true;
  return true;
}

bool job_table::taken_back(std::string_view key) {
  auto it = jobs_.find(key);
  if (it == jobs_.end() || !it->second.offered) return false;
  job& j = it->second;
  j.offered = false;
  if (stopped_ || !j.has_credentials || j.running || j.queued) return false;
  queue(it->first, j);
  return true;
}

std::vector<std::string> job_table::offered() const {
  std::vector<std::string> out;
  for (const auto& [key, j] : jobs_)
    if (j.offered) out.push_back(key);
  return out;
}

bool job_table::settle_offered(std::string_view key, const std::optional<run_record>& last) {
  auto it = jobs_.find(key);
  if (it == jobs_.end() || !it->second.offered) return false;
  job& j = it->second;
  j.offered = false;
  if (last) apply_run(j, *last);  // else pending, as it was offered
  // credential_ttl 0: no job of this node will use the password now.
  if (rules_.credential_ttl.count() == 0 && j.has_credentials) {
    j.has_credentials = false;
    return true;
  }
  return false;
}

std::string job_table::resync(std::string_view key) {
  auto it = jobs_.find(key);
  if (it == jobs_.end()) return "unknown user " + std::string(key);
  job& j = it->second;
  if (j.running || j.queued)
    return "a migration of " + std::string(key) + " is already queued or running";
  if (j.offered)
    return "a migration of " + std::string(key) + " waits in the cluster's queue (handed over at login)";
  if (!j.has_credentials && !j.bulk)
    return "no credentials held for " + std::string(key) +
           ": they are kept only for credential_ttl after a login; the user must log in again";
  queue(it->first, j);
  return "";
}

std::uint32_t job_table::room_for_bulk() const {
  if (stopped_ || paused_ || draining_ || !queue_.empty()) return 0;
  const std::size_t busy = running_ + bulk_queue_.size();
  return busy < rules_.max_concurrent_users ? static_cast<std::uint32_t>(rules_.max_concurrent_users - busy)
                                            : 0;
}

std::optional<job_start> job_table::take_next(job_time now) {
  while (!stopped_ && !paused_ && !draining_ && running_ < rules_.max_concurrent_users) {
    // The first queued job whose legacy server has room, logins first.
    std::string key;
    for (auto* q : {&queue_, &bulk_queue_}) {
      auto it = std::ranges::find_if(*q, [&](const std::string& k) {
        return room_on(jobs_[k].legacy_server) > 0;
      });
      if (it == q->end()) continue;
      key = std::move(*it);
      q->erase(it);
      break;
    }
    if (key.empty()) return std::nullopt;
    job& j = jobs_[key];
    j.queued = false;
    if (!j.has_credentials && !j.bulk) {
      j.state = user_state::failed;
      j.last_error = "no credentials held any more (credential_ttl): waiting for the next login";
      failed_without_credentials.push_back(key);
      continue;
    }
    j.running = true;
    j.state = user_state::running;
    j.started_at = now.unix;
    j.finished_at.reset();
    ++running_;
    legacy_in_use_[j.legacy_server] += 1;  // the job's first pair; more through grant()
    return job_start{key, j.who, j.legacy_server, j.bulk, j.client_address};
  }
  return std::nullopt;
}

std::uint32_t job_table::grant(std::string_view key, std::uint32_t wanted) {
  auto it = jobs_.find(key);
  if (it == jobs_.end() || !it->second.running) return 0;
  job& j = it->second;
  const std::uint32_t free_slots =
      running_ < rules_.max_concurrent_users ? rules_.max_concurrent_users - running_ : 0;
  const std::uint32_t kept = static_cast<std::uint32_t>(
      std::min<std::size_t>(paused_ || draining_ ? 0 : waiting_on(j.legacy_server), free_slots));
  const std::uint32_t room = room_on(j.legacy_server);
  const std::uint32_t g = std::min(wanted, room > kept ? room - kept : 0);
  legacy_in_use_[j.legacy_server] += g;
  j.extra_connections += g;
  return g;
}

void job_table::release(std::string_view key, std::uint32_t n) {
  auto it = jobs_.find(key);
  if (it == jobs_.end()) return;
  job& j = it->second;
  n = std::min(n, j.extra_connections);
  j.extra_connections -= n;
  legacy_in_use_[j.legacy_server] -= n;
}

job_end job_table::finished(std::string_view key, bool ok, failure_kind failure, std::string error,
                            job_time now) {
  job_end end;
  auto it = jobs_.find(key);
  if (it == jobs_.end() || !it->second.running) return end;
  job& j = it->second;
  j.running = false;
  --running_;
  legacy_in_use_[j.legacy_server] -= 1 + j.extra_connections;
  j.extra_connections = 0;
  j.finished_at = now.unix;
  j.last_error = std::move(error);
  if (ok) {
    j.state = user_state::done;
    j.completed_at = j.finished_at;
    j.attempts = 0;
  } else if (failure == failure_kind::stopped) {
    j.state = user_state::interrupted;  // resumes at the next start
  } else if (policy(failure).retried) {
    ++j.attempts;
    if (stopped_) {
      j.state = user_state::interrupted;
    } else if (!rules_.retry.allows(j.attempts)) {
      j.state = user_state::failed;
      end.note = " retry=no (" + std::to_string(j.attempts) + " attempts)";
    } else if (!j.has_credentials && !j.bulk) {
      j.state = user_state::failed;
      end.note = " retry=no (no credentials held)";
    } else {
      const auto delay = rules_.retry.delay(j.attempts);
      j.state = user_state::pending;
      j.retry_at = now.unix + std::chrono::ceil<std::chrono::seconds>(delay).count();
      end.retry_in = delay;
      end.generation = ++j.retry_generation;
      char buf[48];
      std::snprintf(buf, sizeof buf, " retry_in=%.1fs", delay.count() / 1000.0);
      end.note = buf;
    }
  } else {
    // Not retried (failure.hpp): refused credentials are dropped; refused
    // messages are reported and were accounted for.
    j.state = user_state::failed;
    j.attempts = 0;
    if (!policy(failure).keeps_credentials) end.drop_credentials = true;
  }
  if (rules_.credential_ttl.count() == 0 && !j.retry_at) end.drop_credentials = true;
  if (end.drop_credentials) j.has_credentials = false;
  end.state = j.state;
  return end;
}

bool job_table::retry_due(std::string_view key, std::uint64_t generation) {
  auto it = jobs_.find(key);
  // Not when another run came in between (a login or a resync) and set its own.
  if (stopped_ || it == jobs_.end() || !it->second.retry_at || it->second.running ||
      it->second.queued || it->second.retry_generation != generation)
    return false;
  queue(it->first, it->second);
  return true;
}

std::vector<std::string> job_table::expired_credentials(job_time now) {
  std::vector<std::string> out;
  if (rules_.credential_ttl.count() == 0) return out;
  for (auto& [key, j] : jobs_)
    // Not while queued: the job is about to use them (a storm's queue can be
    // longer than a short credential_ttl).
    if (j.has_credentials && !j.running && !j.queued && now.mono >= j.credentials_until) {
      j.has_credentials = false;
      out.push_back(key);
    }
  return out;
}

std::optional<std::chrono::steady_clock::time_point> job_table::next_credential_expiry() const {
  std::optional<std::chrono::steady_clock::time_point> next;
  if (rules_.credential_ttl.count() == 0) return next;
  for (const auto& [key, j] : jobs_)
    if (j.has_credentials && (!next || j.credentials_until < *next)) next = j.credentials_until;
  return next;
}

void job_table::stop() {
  stopped_ = true;
  for (auto& [key, j] : jobs_) {
    j.has_credentials = false;
    if (j.running) j.state = user_state::interrupted;
    j.queued = false;
    j.offered = false;  // the cluster's queue keeps its row, for another node
    j.retry_at.reset();
  }
  queue_.clear();
  bulk_queue_.clear();
}

}  // namespace suction::sync
