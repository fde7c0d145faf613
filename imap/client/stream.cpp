#include "imap/client/stream.hpp"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <utility>

namespace suction::imap {

namespace asio = boost::asio;

namespace {

bool is_ip_address(const std::string& host) {
  boost::system::error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

// The error of a failed OpenSSL call, the way Asio's ssl::stream names them.
boost::system::error_code ssl_error(int ssl_err) {
  if (ssl_err == SSL_ERROR_ZERO_RETURN) return asio::error::eof;
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (ssl_err == SSL_ERROR_SYSCALL && e == 0) {
    if (errno != 0) return {errno, boost::system::system_category()};
    return asio::ssl::error::stream_truncated;  // FIN without close_notify
  }
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
  if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) return asio::ssl::error::stream_truncated;
#endif
  if (e == 0) return asio::ssl::error::unspecified_system_error;
  return {static_cast<int>(e), asio::error::get_ssl_category()};
}

}  // namespace

tls_stream::tls_stream(tcp::socket s) : socket_(std::move(s)) {}

tls_stream::tls_stream(tls_stream&& o) noexcept : socket_(std::move(o.socket_)), ssl_(std::exchange(o.ssl_, nullptr)) {}

tls_stream::~tls_stream() {
  if (ssl_) SSL_free(ssl_);
}

asio::awaitable<bool> tls_stream::wait_for(int rc, error& ec) {
  const int e = SSL_get_error(ssl_, rc);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    errno = 0;
    co_await socket_.async_wait(e == SSL_ERROR_WANT_READ ? tcp::socket::wait_read : tcp::socket::wait_write,
                                asio::redirect_error(asio::use_awaitable, ec));
    co_return !ec;
  }
  ec = ssl_error(e);
  co_return false;
}

tls_stream::error tls_stream::begin_tls(ssl_ctx_st* ctx) {
  if (ssl_) SSL_free(ssl_);
  ERR_clear_error();
  ssl_ = SSL_new(ctx);
  if (!ssl_ || SSL_set_fd(ssl_, socket_.native_handle()) != 1) return ssl_error(SSL_ERROR_SSL);
  // Partial writes and a moving buffer: write_all resumes where a short
  // write stopped. Idle connections give their record buffers back.
  SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                         SSL_MODE_RELEASE_BUFFERS);
  // One read(2) per record instead of two (header, then body).
  SSL_set_read_ahead(ssl_, 1);
  error ec;
  socket_.non_blocking(true, ec);
  return ec;
}

asio::awaitable<tls_stream::error> tls_stream::run_handshake() {
  error ec;
  for (int i = 0; i < 1000; ++i) {  // a few round trips; the caller's deadline bounds the time
    ERR_clear_error();
    const int rc = SSL_do_handshake(ssl_);
    if (rc == 1) co_return error{};
    if (!co_await wait_for(rc, ec)) co_return ec;
  }
  co_return asio::error::timed_out;
}

asio::awaitable<tls_stream::error> tls_stream::client_handshake(asio::ssl::context& ctx,
                                                                const std::string& verify_host) {
  SSL_CTX* native = ctx.native_handle();
  if (auto ec = begin_tls(native)) co_return ec;
  const bool ip = is_ip_address(verify_host);
  if (SSL_CTX_get_verify_mode(native) & SSL_VERIFY_PEER) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    const int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, verify_host.c_str())
                      : X509_VERIFY_PARAM_set1_host(param, verify_host.c_str(), verify_host.size());
    if (ok != 1) co_return ssl_error(SSL_ERROR_SSL);
  }
  if (!ip) SSL_set_tlsext_host_name(ssl_, verify_host.c_str());
  SSL_set_connect_state(ssl_);
  co_return co_await run_handshake();
}

asio::awaitable<tls_stream::error> tls_stream::server_handshake(asio::ssl::context& ctx) {
  if (auto ec = begin_tls(ctx.native_handle())) co_return ec;
  SSL_set_accept_state(ssl_);
  co_return co_await run_handshake();
}

asio::awaitable<std::size_t> tls_stream::read_some(asio::mutable_buffer b, error& ec) {
  ec.clear();
  if (!ssl_) co_return co_await socket_.async_read_some(b, asio::redirect_error(asio::use_awaitable, ec));
  if (b.size() == 0) co_return 0;
  for (;;) {
    ERR_clear_error();
    std::size_t n = 0;
    const int rc = SSL_read_ex(ssl_, b.data(), b.size(), &n);
    if (rc == 1) co_return n;
    if (!co_await wait_for(rc, ec)) co_return 0;
  }
}

asio::awaitable<void> tls_stream::write_all(asio::const_buffer b, error& ec) {
  ec.clear();
  if (!ssl_) {
    co_await asio::async_write(socket_, b, asio::redirect_error(asio::use_awaitable, ec));
    co_return;
  }
  auto data = static_cast<const char*>(b.data());
  std::size_t left = b.size();
  while (left > 0) {
    ERR_clear_error();
    std::size_t n = 0;
    const int rc = SSL_write_ex(ssl_, data, left, &n);
    if (rc == 1) {
      data += n;
      left -= n;
      continue;
    }
    if (!co_await wait_for(rc, ec)) co_return;
  }
}

asio::awaitable<void> tls_stream::wait_readable(error& ec) {
  if (ssl_) co_return;
  co_await socket_.async_wait(tcp::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
}

asio::awaitable<void> tls_stream::shutdown() {
  if (!ssl_) co_return;
  error ignored;
  for (int i = 0; i < 4; ++i) {  // close_notify only: the peer's answer is not awaited
    ERR_clear_error();
    const int rc = SSL_shutdown(ssl_);
    if (rc >= 0) co_return;
    if (!co_await wait_for(rc, ignored)) co_return;
  }
}

void tls_stream::close() {
  error ignored;
  socket_.shutdown(tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
}

}  // namespace suction::imap
