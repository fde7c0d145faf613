#include "imap/client/stream.hpp"

#include <openssl/ssl.h>

namespace suction::imap {

namespace asio = boost::asio;

namespace {
bool is_ip_address(const std::string& host) {
  boost::system::error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}
}  // namespace

asio::awaitable<tls_stream::error> tls_stream::client_handshake(asio::ssl::context& ctx,
                                                                const std::string& verify_host) {
  tls_.emplace(socket_, ctx);
  if (SSL_CTX_get_verify_mode(ctx.native_handle()) & SSL_VERIFY_PEER)
    tls_->set_verify_callback(asio::ssl::host_name_verification(verify_host));
  if (!is_ip_address(verify_host))
    SSL_set_tlsext_host_name(tls_->native_handle(), verify_host.c_str());
  error ec;
  co_await tls_->async_handshake(asio::ssl::stream_base::client,
                                 asio::redirect_error(asio::use_awaitable, ec));
  co_return ec;
}

asio::awaitable<tls_stream::error> tls_stream::server_handshake(asio::ssl::context& ctx) {
  tls_.emplace(socket_, ctx);
  error ec;
  co_await tls_->async_handshake(asio::ssl::stream_base::server,
                                 asio::redirect_error(asio::use_awaitable, ec));
  co_return ec;
}

asio::awaitable<void> tls_stream::wait_readable(error& ec) {
  if (tls_) co_return;
  co_await socket_.async_wait(tcp::socket::wait_read,
                              asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> tls_stream::shutdown() {
  if (!tls_) co_return;
  error ignored;
  co_await tls_->async_shutdown(asio::redirect_error(asio::use_awaitable, ignored));
}

void tls_stream::close() {
  error ignored;
  socket_.shutdown(tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
}

}  // namespace suction::imap
