#include "proxy/provision.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "imap/client/secure_wipe.hpp"
#include "imap/log_value.hpp"

extern char** environ;

namespace suction::proxy {

namespace {

constexpr std::size_t kMaxStderr = 4096;

void scrub(std::string& text, std::string_view secret) {
  if (secret.empty()) return;
  for (std::size_t at = text.find(secret); at != std::string::npos; at = text.find(secret, at))
    text.replace(at, secret.size(), "***");
}

}  // namespace

provision_result run_provision(const std::vector<std::string>& argv,
                               std::chrono::milliseconds timeout, std::string_view login,
                               std::string_view new_name, std::string_view password) {
  provision_result out;
  int in[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0) {
    out.error = std::strerror(errno);
    return out;
  }
  if (::pipe2(err, O_CLOEXEC) != 0) {
    out.error = std::strerror(errno);
    ::close(in[0]);
    ::close(in[1]);
    return out;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  std::vector<std::string> args = argv;
  args.emplace_back(login);
  args.emplace_back(new_name);
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, cargs[0], &fa, nullptr, cargs.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(in[0]);
  ::close(err[1]);
  if (rc != 0) {
    out.error = std::strerror(rc);
    ::close(in[1]);
    ::close(err[0]);
    return out;
  }
  // The password, one line; a command that does not read it gets EPIPE
  // (the daemon ignores SIGPIPE), ignored.
  std::string line = std::string(password) + "\n";
  for (std::size_t off = 0; off < line.size();) {
    ssize_t n = ::write(in[1], line.data() + off, line.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += static_cast<std::size_t>(n);
  }
  imap::secure_wipe(line);
  ::close(in[1]);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[1024];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      ::kill(pid, SIGKILL);
      out.timed_out = true;
      break;
    }
    pollfd p{err[0], POLLIN, 0};
    const int pr = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    ssize_t n = ::read(err[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // stderr closed: the command is ending
    if (out.stderr_text.size() < kMaxStderr)
      out.stderr_text.append(buf, std::min<std::size_t>(static_cast<std::size_t>(n),
                                                        kMaxStderr - out.stderr_text.size()));
  }
  ::close(err[0]);
  int status = 0;
  // After the pipe closed the command exits; a timeout killed it. Bounded either way.
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!out.timed_out) out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  scrub(out.stderr_text, password);
  return out;
}

void provisioner::maybe_run(const std::string& user, const std::string& new_name,
                            const std::string& password, const std::string& client) {
  {
    std::lock_guard lock(m_);
    if (done_.contains(new_name) || running_.contains(new_name)) return;
    if (running_.size() >= kMaxRunning) {
      spdlog::warn("provision deferred user={} reason=\"{} already running\"", imap::log_value(user),
                   kMaxRunning);
      return;
    }
    running_.insert(new_name);
  }
  auto self = shared_from_this();
  auto pw = std::make_shared<imap::secret>(password);
  std::thread([self, user, new_name, pw, client] {
    const auto t0 = std::chrono::steady_clock::now();
    provision_result r = run_provision(self->argv_, self->timeout_, user, new_name, pw->value);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - t0)
                        .count();
    {
      std::lock_guard lock(self->m_);
      self->running_.erase(new_name);
      if (r.ok()) self->done_.insert(new_name);
    }
    const std::string result = r.ok() ? "ok"
                               : !r.error.empty() ? "not_started"
                               : r.timed_out      ? "timeout"
                                                  : "failed";
    auto log = r.ok() ? spdlog::level::info : spdlog::level::warn;
    spdlog::log(log, "provision user={} new_user={} client={} result={} exit={} duration={}ms{}{}",
                imap::log_value(user), imap::log_value(new_name), client, result, r.exit_code, ms,
                r.error.empty() ? "" : " error=" + imap::log_value(r.error),
                r.stderr_text.empty() ? "" : " stderr=" + imap::log_value(r.stderr_text));
  }).detach();
}

}  // namespace suction::proxy
