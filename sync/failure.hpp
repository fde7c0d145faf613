// The engine's expected failures, named (the way Dovecot's login proxy names
// them: login-proxy.c's login_proxy_failure_type, imap-proxy.c's
// auth_resp_code_is_tempfail). Each kind is mapped here, in one place, to
// whether it is tried again, whether the user's credentials are kept, its
// name in logs and reports, and the exit code of `suction sync`. A run keeps
// the kind that decides what happens next (note_failure); the one backoff
// policy says when.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "imap/client/client.hpp"

namespace suction::sync {

enum class failure_kind : std::uint8_t {
  none,             // the run went through
  message_refused,  // messages, folders or subscriptions refused: reported, accounted for
  quota,            // the new server refused for a reason of the account ([OVERQUOTA])
  protocol,         // an answer the engine cannot use (NAMESPACE/LIST refused, no folder plan)
  state_store,      // the state store failed (disk full, a corrupt file)
  busy,             // another process runs this user's migration now
  connect,          // a server unreachable, or a connection lost mid-run
  tls,              // TLS setup or handshake failed
  greeting,         // no usable greeting, or the LOGIN got no answer
  unavailable,      // LOGIN refused for now: [UNAVAILABLE] [LIMIT] [INUSE] [SERVERBUG]
  credentials,      // LOGIN refused: wrong password, unknown user ([AUTHENTICATIONFAILED])
  stopped,          // the daemon is stopping: the run was cut off (recorded interrupted)
};

struct failure_policy {
  std::string_view name;   // in logs, reports and the status socket
  bool retried;            // tried again with the backoff policy
  bool keeps_credentials;  // false: the password is wiped (it is wrong)
  int exit_code;           // `suction sync`: 0 ok, 1 failed, 3 login refused, 4 with errors
};

const failure_policy& policy(failure_kind k);
inline std::string_view to_string(failure_kind k) { return policy(k).name; }

// Which failure decides a run that had both: a stop over a refused login
// over a lost connection over a quota stop over refused messages.
failure_kind worse(failure_kind a, failure_kind b);

// What a NO to LOGIN means: RFC 5530's [UNAVAILABLE], [LIMIT], [INUSE],
// [SERVERBUG] and Courier's "Maximum connection count exceeded" are temporary;
// [AUTHENTICATIONFAILED], [AUTHORIZATIONFAILED], [EXPIRED] and a plain NO are
// the credentials.
failure_kind login_refusal(const imap::command_result& r);

// What a failed connect (TCP, TLS handshake, greeting) is.
failure_kind connect_failure(std::error_code ec);

// The one backoff: initial, doubling, at most `max`; `attempts` tries in a
// row at most (the scheduler: 5 s to 10 min, 10 tries; `suction sync
// --retries`: 1 s to 60 s).
struct backoff_policy {
  std::chrono::milliseconds initial{std::chrono::seconds(5)};
  std::chrono::milliseconds max{std::chrono::minutes(10)};
  std::uint32_t attempts = 10;
  // The pause after failure number `failures` (1-based).
  std::chrono::milliseconds delay(std::uint32_t failures) const;
  // Whether failure number `failures` may be tried again.
  bool allows(std::uint32_t failures) const { return failures < attempts; }
};

}  // namespace suction::sync
