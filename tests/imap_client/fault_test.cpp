// imap/client against a scripted fake server: faults a real Dovecot cannot be
// made to produce on demand (hanging up mid-literal, stalling, injecting bytes
// before a TLS handshake).
#include <doctest/doctest.h>

#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <functional>

#include "../support/run_coro.hpp"
#include "imap/client/client.hpp"

using namespace suction::imap;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using suction::test::run_coro;

namespace {

using script = std::function<awaitable<void>(tcp::socket&)>;

awaitable<void> say(tcp::socket& s, std::string text) {
  boost::system::error_code ec;
  co_await asio::async_write(s, asio::buffer(text), asio::redirect_error(asio::use_awaitable, ec));
}

awaitable<std::string> hear(tcp::socket& s) {
  asio::streambuf buf;
  boost::system::error_code ec;
  co_await asio::async_read_until(s, buf, "\r\n", asio::redirect_error(asio::use_awaitable, ec));
  std::string line(asio::buffers_begin(buf.data()), asio::buffers_end(buf.data()));
  co_return line;
}

awaitable<void> sleep_for(std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  boost::system::error_code ec;
  co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

struct outcome {
  std::error_code connect, command;
  std::chrono::milliseconds elapsed{0};
};

// Runs `server` on a loopback port and a client that connects and sends NOOP.
outcome against(script server, tls_mode mode = tls_mode::none, client_options opts = {}) {
  return run_coro<outcome>(
      [&](asio::any_io_executor ex) -> awaitable<outcome> {
        tcp::acceptor acceptor(ex, {asio::ip::make_address("127.0.0.1"), 0});
        auto port = acceptor.local_endpoint().port();
        asio::co_spawn(
            ex,
            [&acceptor, server]() -> awaitable<void> {
              tcp::socket s = co_await acceptor.async_accept(asio::use_awaitable);
              co_await server(s);
            },
            asio::detached);
        outcome o;
        auto start = std::chrono::steady_clock::now();
        client c(ex, opts);
        std::error_code err;
        auto tls = make_client_tls_context({}, err);
        // Named, not braced in the co_await: GCC 12 destroys such temporaries twice.
        endpoint ep{"127.0.0.1", port, mode};
        o.connect = co_await c.connect(ep, tls);
        if (!o.connect) {
          command_result r;
          o.command = co_await c.simple("NOOP", r);
        }
        o.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::steady_clock::now() - start);
        co_return o;
      },
      std::chrono::seconds(20));
}

const char* kGreeting = "* OK [CAPABILITY IMAP4rev1 LITERAL+ STARTTLS AUTH=PLAIN] fake\r\n";

}  // namespace

TEST_CASE("server goes away in the middle of a literal") {
  auto o = against([](tcp::socket& s) -> awaitable<void> {
    co_await say(s, kGreeting);
    co_await hear(s);
    co_await say(s, "* 1 FETCH (BODY[] {100}\r\nonly a part");
    s.close();
  });
  CHECK(!o.connect);
  CHECK(o.command == errc::connection_closed);
}

TEST_CASE("a stalled server hits the command deadline") {
  client_options opts;
  opts.command_timeout = std::chrono::milliseconds(300);
  auto o = against(
      [](tcp::socket& s) -> awaitable<void> {
        co_await say(s, kGreeting);
        co_await hear(s);
        co_await sleep_for(std::chrono::seconds(3));
      },
      tls_mode::none, opts);
  CHECK(!o.connect);
  CHECK(o.command == errc::timeout);
  CHECK(o.elapsed < std::chrono::seconds(2));
}

TEST_CASE("a server that never greets hits the connect deadline") {
  client_options opts;
  opts.connect_timeout = std::chrono::milliseconds(300);
  auto o = against(
      [](tcp::socket& s) -> awaitable<void> { co_await sleep_for(std::chrono::seconds(3)); },
      tls_mode::none, opts);
  CHECK(o.connect == errc::timeout);
  CHECK(o.elapsed < std::chrono::seconds(2));
}

TEST_CASE("bytes injected after the STARTTLS OK are refused") {
  auto o = against(
      [](tcp::socket& s) -> awaitable<void> {
        co_await say(s, kGreeting);
        co_await hear(s);  // s1 STARTTLS
        co_await say(s, "s1 OK Begin TLS negotiation now\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n");
        co_await sleep_for(std::chrono::seconds(1));
      },
      tls_mode::starttls);
  CHECK(o.connect == errc::protocol_violation);
}

TEST_CASE("STARTTLS required but not offered") {
  auto o = against(
      [](tcp::socket& s) -> awaitable<void> {
        co_await say(s, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] no tls here\r\n");
        co_await sleep_for(std::chrono::milliseconds(500));
      },
      tls_mode::starttls);
  CHECK(o.connect == errc::not_supported);
}

TEST_CASE("greetings that are not OK") {
  auto bye = against([](tcp::socket& s) -> awaitable<void> {
    co_await say(s, "* BYE too many connections\r\n");
    s.close();
  });
  CHECK(bye.connect == errc::server_bye);
  auto garbage = against([](tcp::socket& s) -> awaitable<void> {
    co_await say(s, "SSH-2.0-OpenSSH_9.2\r\n");
    s.close();
  });
  CHECK(garbage.connect);
  auto silent_close = against([](tcp::socket& s) -> awaitable<void> {
    s.close();
    co_return;
  });
  CHECK(silent_close.connect == errc::bad_greeting);
}

TEST_CASE("a response the parser cannot read ends the connection with the parser's reason") {
  auto o = against([](tcp::socket& s) -> awaitable<void> {
    co_await say(s, kGreeting);
    co_await hear(s);
    co_await say(s, "* 1 FETCH (UID 1))\r\n");
    co_await sleep_for(std::chrono::milliseconds(500));
  });
  CHECK(!o.connect);
  CHECK(o.command == errc::syntax);
}

TEST_CASE("a tagged answer to a tag never sent is a protocol violation") {
  auto o = against([](tcp::socket& s) -> awaitable<void> {
    co_await say(s, kGreeting);
    co_await hear(s);
    co_await say(s, "zz9 OK who asked?\r\n");
    co_await sleep_for(std::chrono::milliseconds(500));
  });
  CHECK(o.command == errc::protocol_violation);
}

TEST_CASE("nothing listening: connect fails at once, naming the reason") {
  auto ec = run_coro<std::error_code>([](asio::any_io_executor ex) -> awaitable<std::error_code> {
    std::uint16_t port;
    {
      tcp::acceptor a(ex, {asio::ip::make_address("127.0.0.1"), 0});
      port = a.local_endpoint().port();
    }
    client c(ex);
    endpoint ep{"127.0.0.1", port, tls_mode::none};
    co_return co_await c.connect(ep, nullptr);
  });
  CHECK(ec == std::errc::connection_refused);
}
