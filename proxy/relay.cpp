#include "proxy/relay.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <utility>
#include <vector>

#include "imap/client/stream.hpp"

namespace suction::proxy {

namespace asio = boost::asio;
using namespace boost::asio::experimental::awaitable_operators;

namespace {
// Commands and most answers fit the small read that waits in each direction
// (an async_read_some, which Asio may try at once and which needs no
// epoll_ctl, unlike a readiness wait). A full small read means a burst is
// streaming: it moves in reads that start at kFirstRead and double, so a
// 10 MB FETCH moves in few large writes and the buffers are gone when it ends.
constexpr std::size_t kIdleRead = 512;
constexpr std::size_t kFirstRead = 16 * 1024;
constexpr std::size_t kLargestRead = 256 * 1024;
}  // namespace

relay::relay(imap::tls_stream& client, imap::tls_stream& backend) : client_(client), backend_(backend) {}

void relay::end(std::string reason) {
  if (result_.end.empty()) result_.end = std::move(reason);
  client_.close();
  backend_.close();
}

void relay::stop(std::string reason) { end(std::move(reason)); }

namespace {

asio::awaitable<void> write_chunk(imap::tls_stream& to, const std::vector<char>& buf, std::size_t n,
                                  boost::system::error_code& ec) {
  co_await to.write_all(asio::buffer(buf.data(), n), ec);
}

asio::awaitable<void> read_chunk(imap::tls_stream& from, std::vector<char>& buf, std::size_t& n,
                                 boost::system::error_code& ec) {
  n = co_await from.read_some(asio::buffer(buf), ec);
}

}  // namespace

asio::awaitable<void> relay::pump(imap::tls_stream& from, imap::tls_stream& to, std::string first,
                                  std::uint64_t& counter, const char* from_name) {
  boost::system::error_code ec;
  if (!first.empty()) {
    co_await to.write_all(asio::buffer(first), ec);
    if (ec) co_return end(std::string(from_name) + " relay write failed");
    counter += first.size();
    std::string().swap(first);
  }
  std::array<char, kIdleRead> small;
  for (;;) {
    // Plaintext sides straight on the sockets: one coroutine frame less per
    // operation than through tls_stream, on the path every command takes.
    auto token = asio::redirect_error(asio::use_awaitable, ec);
    std::size_t n = from.tls_active() ? co_await from.read_some(asio::buffer(small), ec)
                                      : co_await from.socket().async_read_some(asio::buffer(small), token);
    if (ec) break;
    last_activity_ = std::chrono::steady_clock::now();
    if (to.tls_active()) co_await to.write_all(asio::buffer(small.data(), n), ec);
    else co_await asio::async_write(to.socket(), asio::buffer(small.data(), n), token);
    if (ec) break;
    counter += n;
    if (n < small.size()) continue;  // a command or an answer: wait for the next
    if (!co_await copy_burst(from, to, counter, ec)) break;
  }
  if (&from == &client_ && is_clean_eof(ec)) co_return half_close();
  end(std::string(from_name) + " closed");
}

// The rest of a burst through user space (one side speaks TLS): the next
// chunk is read while this one is written, in growing chunks, so neither side
// waits on the other, until a read comes back short. A TLS read returns at
// most one record (16 KiB): growing would only pin memory there.
asio::awaitable<bool> relay::copy_burst(imap::tls_stream& from, imap::tls_stream& to, std::uint64_t& counter,
                                        boost::system::error_code& ec) {
  const std::size_t largest = from.tls_active() ? kFirstRead : kLargestRead;
  std::size_t size = kFirstRead;
  std::vector<char> buf(size), next;
  std::size_t n = co_await from.read_some(asio::buffer(buf), ec);
  if (ec) co_return false;
  last_activity_ = std::chrono::steady_clock::now();
  while (n == buf.size()) {
    if (size < largest) size *= 2;
    next.resize(size);
    boost::system::error_code wec, rec;
    std::size_t m = 0;
    co_await (write_chunk(to, buf, n, wec) && read_chunk(from, next, m, rec));
    if (wec || rec) {
      ec = wec ? wec : rec;
      if (!wec) counter += n;
      co_return false;
    }
    counter += n;
    last_activity_ = std::chrono::steady_clock::now();
    std::swap(buf, next);
    n = m;
  }
  co_await to.write_all(asio::buffer(buf.data(), n), ec);
  if (ec) co_return false;
  counter += n;
  co_return true;
}

bool relay::is_clean_eof(const boost::system::error_code& ec) {
  return ec == asio::error::eof || ec == asio::ssl::error::stream_truncated;
}

// The client sent its last bytes and a FIN (e.g. "a LOGOUT" then
// shutdown(SHUT_WR)): pass the FIN on and keep relaying the backend's answers
// until it closes, as a direct connection would. A TLS backend gets a TCP FIN
// without close_notify, which servers read as the end of input all the same.
void relay::half_close() {
  if (result_.end.empty()) result_.end = "client closed";
  boost::system::error_code ignored;
  backend_.socket().shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
}

asio::awaitable<relay_result> relay::run(std::string to_backend_first, std::string to_client_first) {
  last_activity_ = std::chrono::steady_clock::now();
  co_await (pump(client_, backend_, std::move(to_backend_first), result_.to_backend, "client") &&
            pump(backend_, client_, std::move(to_client_first), result_.to_client, "backend"));
  co_return result_;
}

}  // namespace suction::proxy
