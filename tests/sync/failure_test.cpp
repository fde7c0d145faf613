// Named failure kinds and the one backoff policy (sync/failure.hpp), without sockets.
#include <doctest/doctest.h>

#include "imap/errc.hpp"
#include "sync/failure.hpp"

using namespace suction;
using namespace suction::sync;

namespace {

imap::command_result no(const char* code, const char* text) {
  imap::command_result r;
  r.status = imap::status::no;
  if (code) r.code = imap::response_code{code, {}};
  r.text = text;
  return r;
}

}  // namespace

TEST_CASE("failure: a LOGIN refused for now is retried with the credentials kept, one refused for its credentials is not") {
  for (const char* code : {"UNAVAILABLE", "LIMIT", "INUSE", "SERVERBUG", "unavailable"}) {
    CAPTURE(code);
    auto k = login_refusal(no(code, "try later"));
    CHECK(k == failure_kind::unavailable);
    CHECK(policy(k).retried);
    CHECK(policy(k).keeps_credentials);
  }
  CHECK(login_refusal(no(nullptr, "Maximum connection count exceeded")) == failure_kind::unavailable);
  for (const char* code : {"AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "EXPIRED"}) {
    CAPTURE(code);
    CHECK(login_refusal(no(code, "no")) == failure_kind::credentials);
  }
  auto k = login_refusal(no(nullptr, "Login failed."));
  CHECK(k == failure_kind::credentials);
  CHECK_FALSE(policy(k).retried);
  CHECK_FALSE(policy(k).keeps_credentials);
  CHECK(policy(k).exit_code == 3);
}

TEST_CASE("failure: every kind has a name, a retry rule and an exit code in one table") {
  CHECK(to_string(failure_kind::connect) == "connect");
  CHECK(policy(failure_kind::connect).retried);
  CHECK(policy(failure_kind::tls).retried);
  CHECK(policy(failure_kind::busy).retried);
  CHECK_FALSE(policy(failure_kind::message_refused).retried);
  CHECK(policy(failure_kind::message_refused).exit_code == 4);
  CHECK(policy(failure_kind::quota).exit_code == 4);
  CHECK(policy(failure_kind::state_store).exit_code == 1);
  CHECK(policy(failure_kind::none).exit_code == 0);
  CHECK(connect_failure(imap::make_error_code(imap::errc::tls_failed)) == failure_kind::tls);
  CHECK(connect_failure(imap::make_error_code(imap::errc::bad_greeting)) == failure_kind::greeting);
  CHECK(connect_failure(imap::make_error_code(imap::errc::connect_failed)) == failure_kind::connect);
}

TEST_CASE("failure: the worse kind decides a run that had two") {
  CHECK(worse(failure_kind::message_refused, failure_kind::connect) == failure_kind::connect);
  CHECK(worse(failure_kind::connect, failure_kind::message_refused) == failure_kind::connect);
  CHECK(worse(failure_kind::unavailable, failure_kind::credentials) == failure_kind::credentials);
  CHECK(worse(failure_kind::none, failure_kind::quota) == failure_kind::quota);
}

TEST_CASE("failure: one backoff, doubling from its start up to its cap, a bounded number of tries") {
  backoff_policy daemon;  // the scheduler's
  CHECK(daemon.delay(1) == std::chrono::seconds(5));
  CHECK(daemon.delay(2) == std::chrono::seconds(10));
  CHECK(daemon.delay(4) == std::chrono::seconds(40));
  CHECK(daemon.delay(9) == std::chrono::minutes(10));
  CHECK(daemon.delay(1000) == std::chrono::minutes(10));
  CHECK(daemon.allows(9));
  CHECK_FALSE(daemon.allows(10));
  backoff_policy cli{std::chrono::seconds(1), std::chrono::seconds(60), 3};  // suction sync --retries 2
  CHECK(cli.delay(1) == std::chrono::seconds(1));
  CHECK(cli.delay(3) == std::chrono::seconds(4));
  CHECK(cli.delay(8) == std::chrono::seconds(60));
  CHECK(cli.allows(2));
  CHECK_FALSE(cli.allows(3));
}

TEST_CASE("failure: the proxy and the engine read a temporary LOGIN refusal the same way") {
  CHECK(imap::login_tempfail(no("UNAVAILABLE", "x")));
  CHECK(imap::login_tempfail(no(nullptr, "Courier: MAXIMUM CONNECTION COUNT EXCEEDED, try later")));
  CHECK_FALSE(imap::login_tempfail(no("AUTHENTICATIONFAILED", "Authentication failed.")));
  CHECK_FALSE(imap::login_tempfail(no(nullptr, "Maximum")));
}
