#include "proxy/relay.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <vector>

#include "imap/client/stream.hpp"

namespace suction::proxy {

namespace asio = boost::asio;
using namespace boost::asio::experimental::awaitable_operators;

namespace {
// Reads start small and double while data streams (a full read means more is
// waiting), so a 10 MB FETCH moves in few large writes and an idle session
// holds no buffer at all.
constexpr std::size_t kFirstRead = 16 * 1024;
constexpr std::size_t kLargestRead = 256 * 1024;
}  // namespace

relay::relay(imap::tls_stream& client, imap::tls_stream& backend, std::chrono::milliseconds idle)
    : client_(client), backend_(backend), idle_(idle) {}

void relay::end(std::string reason) {
  if (result_.end.empty()) result_.end = std::move(reason);
  client_.close();
  backend_.close();
}

void relay::stop(std::string reason) { end(std::move(reason)); }

asio::awaitable<void> relay::pump(imap::tls_stream& from, imap::tls_stream& to, std::string first,
                                  std::uint64_t& counter, const char* from_name) {
  boost::system::error_code ec;
  if (!first.empty()) {
    co_await to.write_all(asio::buffer(first), ec);
    if (ec) co_return end(std::string(from_name) + " relay write failed");
    counter += first.size();
    std::string().swap(first);
  }
  std::vector<char> buf;
  std::size_t size = kFirstRead;
  for (;;) {
    if (!from.tls_active()) {
      co_await from.wait_readable(ec);
      if (ec) break;
    }
    if (buf.size() != size) buf.resize(size);
    std::size_t n = co_await from.read_some(asio::buffer(buf), ec);
    if (ec) break;
    last_activity_ = std::chrono::steady_clock::now();
    co_await to.write_all(asio::buffer(buf.data(), n), ec);
    if (ec) break;
    counter += n;
    // A TLS read returns at most one record (16 KiB): growing would only pin
    // memory, and a TLS side cannot wait for readiness without a buffer.
    if (n == buf.size() && size < kLargestRead && !from.tls_active()) {
      size *= 2;
    } else if (!from.tls_active() && from.socket().available(ec) == 0) {
      // Nothing more waiting: hold no memory while idle.
      size = kFirstRead;
      std::vector<char>().swap(buf);
    }
  }
  end(std::string(from_name) + " closed");
}

asio::awaitable<void> relay::watchdog() {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (;;) {
    auto due = last_activity_ + idle_;
    if (std::chrono::steady_clock::now() >= due) co_return end("idle");
    timer.expires_at(due);
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;  // cancelled: the relay ended
  }
}

asio::awaitable<relay_result> relay::run(std::string to_backend_first, std::string to_client_first) {
  last_activity_ = std::chrono::steady_clock::now();
  co_await ((pump(client_, backend_, std::move(to_backend_first), result_.to_backend, "client") &&
             pump(backend_, client_, std::move(to_client_first), result_.to_client, "backend")) ||
            watchdog());
  co_return result_;
}

}  // namespace suction::proxy
