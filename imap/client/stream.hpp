// A TCP connection that may switch to TLS (implicit TLS or STARTTLS), shared
// by the IMAP client and the proxy. Pulls in Asio: include it only from .cpp
// files.
//
// TLS is OpenSSL on the socket's descriptor itself (non-blocking, SSL_set_fd),
// waiting for readiness through Asio, not Asio's ssl::stream: that one keeps
// ~70 KiB of record buffers per connection for its whole life, where OpenSSL
// with SSL_MODE_RELEASE_BUFFERS holds none while a connection is idle, and
// it copies every byte once more through a BIO pair.
//
// Concurrency: at most one read (read_some, wait_readable) and one write
// (write_all) at a time, on the io_context's thread, as with any Asio stream.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <memory>
#include <string>

struct ssl_st;
struct ssl_ctx_st;

namespace boost::asio::ssl {
class context;
}

namespace suction::imap {

class tls_stream {
 public:
  using tcp = boost::asio::ip::tcp;
  using error = boost::system::error_code;

  explicit tls_stream(tcp::socket s);
  ~tls_stream();
  tls_stream(tls_stream&&) noexcept;
  tls_stream& operator=(tls_stream&&) = delete;
  tls_stream(const tls_stream&) = delete;
  tls_stream& operator=(const tls_stream&) = delete;

  tcp::socket& socket() { return socket_; }
  bool tls_active() const { return ssl_ != nullptr; }

  // Client side: verifies the peer against `verify_host` when the context
  // asks for verification, and sends SNI for names (not for IP addresses).
  boost::asio::awaitable<error> client_handshake(boost::asio::ssl::context& ctx,
                                                 const std::string& verify_host);
  boost::asio::awaitable<error> server_handshake(boost::asio::ssl::context& ctx);

  // Errors: asio::error::eof at a clean end (close_notify, or FIN in
  // plaintext), asio::ssl::error::stream_truncated for a FIN without
  // close_notify, the ssl category for TLS errors, system errors otherwise.
  boost::asio::awaitable<std::size_t> read_some(boost::asio::mutable_buffer b, error& ec);
  boost::asio::awaitable<void> write_all(boost::asio::const_buffer b, error& ec);

  // Plaintext: waits until the socket is readable, holding no buffer. With TLS
  // decrypted bytes may already sit in OpenSSL, so it returns at once.
  boost::asio::awaitable<void> wait_readable(error& ec);
  // TLS close_notify, sent without waiting for the peer's; nothing for plaintext.
  boost::asio::awaitable<void> shutdown();
  void close();

 private:
  error begin_tls(ssl_ctx_st* ctx);  // a new SSL object on the descriptor, non-blocking
  boost::asio::awaitable<error> run_handshake();
  // After an OpenSSL call returned `rc`: waits for what it wants (true: call
  // again) or sets ec (false).
  boost::asio::awaitable<bool> wait_for(int rc, error& ec);

  tcp::socket socket_;
  ssl_st* ssl_ = nullptr;  // owned; null while plaintext
};

}  // namespace suction::imap
