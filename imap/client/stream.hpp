// A TCP connection that may switch to TLS (implicit TLS or STARTTLS), shared
// by the IMAP client and the proxy. Pulls in Asio and OpenSSL: include it only
// from .cpp files.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <optional>
#include <string>

namespace suction::imap {

class tls_stream {
 public:
  using tcp = boost::asio::ip::tcp;
  using error = boost::system::error_code;

  explicit tls_stream(tcp::socket s) : socket_(std::move(s)) {}
  tls_stream(const tls_stream&) = delete;  // the TLS layer refers to socket_
  tls_stream& operator=(const tls_stream&) = delete;

  tcp::socket& socket() { return socket_; }
  bool tls_active() const { return tls_.has_value(); }

  // Client side: verifies the peer against `verify_host` when the context
  // asks for verification, and sends SNI for names (not for IP addresses).
  boost::asio::awaitable<error> client_handshake(boost::asio::ssl::context& ctx,
                                                 const std::string& verify_host);
  boost::asio::awaitable<error> server_handshake(boost::asio::ssl::context& ctx);

  template <class Buffer>
  boost::asio::awaitable<std::size_t> read_some(const Buffer& b, error& ec) {
    auto token = boost::asio::redirect_error(boost::asio::use_awaitable, ec);
    if (tls_) co_return co_await tls_->async_read_some(b, token);
    co_return co_await socket_.async_read_some(b, token);
  }

  template <class Buffer>
  boost::asio::awaitable<void> write_all(const Buffer& b, error& ec) {
    auto token = boost::asio::redirect_error(boost::asio::use_awaitable, ec);
    if (tls_) co_await boost::asio::async_write(*tls_, b, token);
    else co_await boost::asio::async_write(socket_, b, token);
  }

  // Plaintext: waits until the socket is readable, holding no buffer. With TLS
  // decrypted bytes may already sit in OpenSSL, so it returns at once.
  boost::asio::awaitable<void> wait_readable(error& ec);

  // TLS close_notify (bounded by the caller's deadline); nothing for plaintext.
  boost::asio::awaitable<void> shutdown();
  void close();

 private:
  tcp::socket socket_;
  std::optional<boost::asio::ssl::stream<tcp::socket&>> tls_;
};

}  // namespace suction::imap
