#include "imap/client/client.hpp"

#include "imap/client/secure_wipe.hpp"
#include "imap/client/stream.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <openssl/ssl.h>

#include <list>

#include "imap/base64.hpp"
#include "imap/response.hpp"
#include "imap/serialize.hpp"

namespace suction::imap {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using bsys_error = boost::system::error_code;
using clock = std::chrono::steady_clock;

awaitable<void> response_handler::on_response(response&) { co_return; }
awaitable<void> response_handler::on_literal_begin(const literal_info&) { co_return; }
awaitable<void> response_handler::on_literal_data(std::string_view) { co_return; }
awaitable<void> response_handler::on_literal_end() { co_return; }

awaitable<std::string_view> string_source::next() {
  co_return std::exchange(data_, std::string_view{});  // the data once, then the end
}

std::string display(const endpoint& e) { return e.host + ":" + std::to_string(e.port); }

bool login_tempfail(const command_result& answer) {
  if (answer.code)
    for (std::string_view c : {"UNAVAILABLE", "SERVERBUG", "LIMIT", "INUSE"})
      if (iequals(answer.code->name, c)) return true;
  static constexpr std::string_view kCourier = "maximum connection count exceeded";
  const std::string& t = answer.text;
  for (std::size_t i = 0; i + kCourier.size() <= t.size(); ++i)
    if (iequals(std::string_view(t).substr(i, kCourier.size()), kCourier)) return true;
  return false;
}

std::error_code status_error(const command_result& r) {
  switch (r.status) {
    case status::ok: return {};
    case status::no: return errc::command_no;
    case status::bad: return errc::command_bad;
    default: return errc::protocol_violation;
  }
}

std::shared_ptr<asio::ssl::context> make_client_tls_context(const tls_settings& s,
                                                            std::error_code& ec) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_compression);
  bsys_error bec;
  if (s.ca_file.empty()) ctx->set_default_verify_paths(bec);
  else ctx->load_verify_file(s.ca_file, bec);
  if (bec) {
    ec = bec;
    return nullptr;
  }
  ctx->set_verify_mode(s.verify ? asio::ssl::verify_peer : asio::ssl::verify_none);
  ec.clear();
  return ctx;
}

namespace {

struct pending_command {
  std::string tag;
  response_handler* handler = nullptr;
  bool done = false;
  command_result result;
  std::vector<std::string> streamed;  // literals collected when there is no handler
};

// Streamed literals collected without a handler go back into their values.
void fill_streamed(std::vector<value>& values, std::vector<std::string>& streamed,
                   std::size_t& next) {
  for (auto& v : values) {
    if (v.streamed && next < streamed.size()) {
      v.text = std::move(streamed[next++]);
      v.streamed = false;
    }
    if (v.is_list()) fill_streamed(v.items, streamed, next);
  }
}

// GCC 12 miscompiles braced initializer lists as coroutine arguments.
std::vector<std::string> one_part(std::string s) {
  std::vector<std::string> v;
  v.push_back(std::move(s));
  return v;
}

}  // namespace

struct client::impl : std::enable_shared_from_this<impl> {
  impl(asio::any_io_executor ex, client_options o)
      : stream(std::make_unique<tls_stream>(tcp::socket(ex))),
        timer(ex),
        opts(o),
        parser(o.limits),
        buf(o.read_buffer_size) {}

  std::unique_ptr<tls_stream> stream;  // null once detached
  std::shared_ptr<asio::ssl::context> tls_ctx;
  asio::steady_timer timer;
  client_options opts;
  response_parser parser;
  std::vector<char> buf;
  std::size_t begin = 0, end = 0;

  std::list<pending_command> pending;  // in the order they were sent
  std::string held;                    // send_with_next's, not written yet
  capability_set caps;
  response greeting;
  bool greeting_seen = false;
  bool continuation = false;
  bool bye = false;
  std::error_code fatal;  // once set, the connection is unusable
  std::uint32_t tag_counter = 0;

  // --- deadline: a watchdog that closes the socket when nothing moved for `timeout`
  bool armed = false;
  std::chrono::milliseconds timeout{0};
  clock::time_point progress;
  bool timed_out = false;

  void arm(std::chrono::milliseconds t) {
    timeout = t;
    progress = clock::now();
    armed = true;
    schedule(progress + t);
  }
  void schedule(clock::time_point when) {
    timer.expires_at(when);
    timer.async_wait([w = weak_from_this()](bsys_error ec) {
      if (ec) return;
      if (auto self = w.lock()) self->on_deadline();
    });
  }
  void on_deadline() {
    if (!armed) return;
    auto due = progress + timeout;
    if (clock::now() < due) return schedule(due);
    timed_out = true;
    if (stream) stream->close();
  }
  void disarm() {
    armed = false;
    timer.cancel();
  }
  void touch() { progress = clock::now(); }

  std::error_code fail(std::error_code ec) {
    if (!fatal) fatal = ec;
    if (stream) stream->close();
    return fatal;
  }

  std::error_code io_error(const bsys_error& ec) {
    if (timed_out) return errc::timeout;
    if (bye) return errc::server_bye;
    if (ec == asio::error::eof || ec == asio::error::connection_reset ||
        ec == asio::error::broken_pipe || ec == asio::ssl::error::stream_truncated)
      return errc::connection_closed;
    return ec;
  }

  awaitable<std::error_code> write_all(std::string_view data) {
    if (fatal) co_return fatal;
    bsys_error ec;
    if (!held.empty()) {
      // A command held back (send_with_next) goes out in the same write,
      // joined in place: no temporary keeps a copy of the command behind it,
      // which may carry credentials.
      held.append(data);
      co_await stream->write_all(asio::buffer(held), ec);
      secure_wipe(held);
      held.clear();
    } else {
      co_await stream->write_all(asio::buffer(data), ec);
    }
    if (ec) co_return fail(io_error(ec));
    touch();
    co_return std::error_code{};
  }

  pending_command* current() {
    for (auto& p : pending)
      if (!p.done) return &p;
    return nullptr;
  }

  void note_capabilities(const response& r) {
    if (auto c = decode_capability(r)) caps = std::move(*c);
  }

  awaitable<std::error_code> dispatch(response& r) {
    if (r.kind == response_kind::continuation) {
      continuation = true;
      co_return std::error_code{};
    }
    if (!greeting_seen) {
      greeting_seen = true;
      if (r.kind != response_kind::untagged) co_return fail(errc::bad_greeting);
      note_capabilities(r);
      greeting = std::move(r);
      co_return std::error_code{};
    }
    if (r.kind == response_kind::tagged) {
      for (auto& p : pending) {
        if (p.tag == r.tag && !p.done) {
          p.done = true;
          p.result.status = r.status;
          p.result.code = std::move(r.code);
          p.result.text = std::move(r.text);
          co_return std::error_code{};
        }
      }
      co_return fail(errc::protocol_violation);  // a tag we never sent
    }
    if (r.status == status::bye) bye = true;
    note_capabilities(r);
    pending_command* p = current();
    if (!p) co_return std::error_code{};  // unsolicited (EXISTS, EXPUNGE ...)
    if (p->handler) {
      co_await p->handler->on_response(r);
    } else {
      if (!p->streamed.empty()) {  // the response's literals that came streamed
        std::size_t next = 0;
        fill_streamed(r.data, p->streamed, next);
        p->streamed.clear();
      }
      p->result.untagged.push_back(std::move(r));
    }
    co_return std::error_code{};
  }

  // Reads and handles exactly one parser event.
  awaitable<std::error_code> pump() {
    if (fatal) co_return fatal;
    for (;;) {
      auto r = parser.feed(std::string_view(buf.data() + begin, end - begin));
      begin += r.consumed;
      pending_command* p = current();
      switch (r.event) {
        case parse_event::need_more: {
          begin = end = 0;
          bsys_error ec;
          std::size_t n = co_await stream->read_some(asio::buffer(buf), ec);
          if (ec) co_return fail(io_error(ec));
          touch();
          end = n;
          continue;
        }
        case parse_event::literal_begin:
          if (p && p->handler) co_await p->handler->on_literal_begin(parser.literal());
          else if (p) p->streamed.emplace_back();  // unsolicited: nowhere
          co_return std::error_code{};
        case parse_event::literal_data:
          if (p && p->handler) co_await p->handler->on_literal_data(parser.chunk());
          else if (p) p->streamed.back().append(parser.chunk());
          co_return std::error_code{};
        case parse_event::literal_end:
          if (p && p->handler) co_await p->handler->on_literal_end();
          co_return std::error_code{};
        case parse_event::message:
          co_return co_await dispatch(parser.response());
        case parse_event::error:
          co_return fail(parser.error());
        case parse_event::need_continuation:
        case parse_event::line:
          co_return fail(errc::protocol_violation);  // not produced by a response parser
      }
    }
  }

  // Writes a command's parts; before each part after the first, waits for
  // the "+" a synchronizing literal needs. Stops early (no error) if the
  // server completes the command instead, e.g. NO [TOOBIG].
  awaitable<std::error_code> write_parts(pending_command& pc, std::vector<std::string>& parts) {
    for (std::size_t i = 0; i < parts.size(); ++i) {
      if (i > 0) {
        auto ec = co_await await_continuation(pc);
        if (ec || pc.done) co_return ec;
      }
      continuation = false;
      auto ec = co_await write_all(parts[i]);
      secure_wipe(parts[i]);  // commands may carry credentials
      if (ec) co_return ec;
    }
    co_return std::error_code{};
  }

  awaitable<std::error_code> await_continuation(pending_command& pc) {
    while (!continuation && !pc.done) {
      auto ec = co_await pump();
      if (ec) co_return ec;
    }
    continuation = false;
    co_return std::error_code{};
  }

  awaitable<std::error_code> handshake(const std::string& host) {
    if (!tls_ctx) co_return std::make_error_code(std::errc::invalid_argument);
    bsys_error ec = co_await stream->client_handshake(*tls_ctx, host);
    if (ec) co_return fail(timed_out ? std::error_code(errc::timeout) : std::error_code(ec));
    co_return std::error_code{};
  }

  awaitable<std::error_code> read_greeting() {
    while (!greeting_seen) {
      auto ec = co_await pump();
      if (ec) co_return ec == errc::connection_closed ? errc::bad_greeting : ec;
    }
    switch (greeting.status) {
      case status::ok:
      case status::preauth: co_return std::error_code{};
      case status::bye: co_return fail(errc::server_bye);
      default: co_return fail(errc::bad_greeting);
    }
  }

  // --- operations without their own deadline; the public methods arm one.
  awaitable<std::error_code> send(std::string tag, std::vector<std::string> parts,
                                  response_handler* handler) {
    if (fatal) co_return fatal;
    auto& pc = pending.emplace_back();
    pc.tag = std::move(tag);
    pc.handler = handler;
    co_return co_await write_parts(pc, parts);
  }

  // A one-line command that goes out with the next write (one packet, one
  // syscall: ID before LOGIN).
  void send_with_next(std::string tag, std::string line) {
    auto& pc = pending.emplace_back();
    pc.tag = std::move(tag);
    held += line;
  }

  awaitable<std::error_code> wait(std::string_view tag, command_result& out) {
    auto it = pending.begin();
    while (it != pending.end() && it->tag != tag) ++it;
    if (it == pending.end()) co_return std::make_error_code(std::errc::invalid_argument);
    while (!it->done) {
      if (auto ec = co_await pump()) {
        pending.erase(it);
        co_return ec;
      }
    }
    out = std::move(it->result);
    pending.erase(it);
    co_return std::error_code{};
  }

  awaitable<std::error_code> run(std::string tag, std::vector<std::string> parts,
                                 command_result& out, response_handler* handler) {
    if (auto ec = co_await send(tag, std::move(parts), handler)) co_return ec;
    co_return co_await wait(tag, out);
  }

  std::string next_tag() { return "s" + std::to_string(++tag_counter); }
  bool non_sync_literals() const { return opts.use_literal_plus && caps.has("LITERAL+"); }

  awaitable<std::error_code> refresh_capabilities() {
    std::string tag = next_tag();
    command_result r;
    if (auto ec = co_await run(tag, one_part(tag + " CAPABILITY\r\n"), r, nullptr)) co_return ec;
    co_return status_error(r);
  }

  // After a successful login the server's capabilities change: take them from
  // the OK's [CAPABILITY] code, or ask.
  awaitable<std::error_code> after_login(const command_result& r) {
    if (r.status == status::no) co_return errc::auth_failed;
    if (r.status != status::ok) co_return status_error(r);
    if (r.code && r.code->name == "CAPABILITY") {
      caps = capability_set::parse(r.code->raw_args);
      co_return std::error_code{};
    }
    co_return co_await refresh_capabilities();
  }
};

// Arms the client's watchdog for one public operation and disarms it on exit.
class deadline_scope {
 public:
  deadline_scope(client::impl& s, std::chrono::milliseconds t) : s_(s) { s_.arm(t); }
  ~deadline_scope() { s_.disarm(); }
  deadline_scope(const deadline_scope&) = delete;
  deadline_scope& operator=(const deadline_scope&) = delete;
 private:
  client::impl& s_;
};

client::client(asio::any_io_executor ex, client_options opts)
    : impl_(std::make_shared<impl>(ex, opts)) {}

client::~client() { close(); }

const capability_set& client::capabilities() const { return impl_->caps; }
const response& client::greeting() const { return impl_->greeting; }
bool client::tls_active() const { return impl_->stream && impl_->stream->tls_active(); }
std::string client::next_tag() { return impl_->next_tag(); }

awaitable<std::error_code> client::connect(endpoint ep,
                                           std::shared_ptr<asio::ssl::context> tls) {
  impl& s = *impl_;
  s.tls_ctx = std::move(tls);
  deadline_scope deadline(s, s.opts.connect_timeout);

  bsys_error bec;
  auto& socket = s.stream->socket();
  auto address = asio::ip::make_address(ep.host, bec);
  if (!bec) {
    // An address needs no resolver (which runs a thread of its own, and hides
    // the real error, e.g. "Too many open files", behind "Operation canceled").
    tcp::endpoint target(address, ep.port);
    socket.open(target.protocol(), bec);
    if (bec) co_return s.fail(bec);
    co_await socket.async_connect(target, asio::redirect_error(asio::use_awaitable, bec));
  } else {
    tcp::resolver resolver(socket.get_executor());
    bec.clear();
    auto endpoints = co_await resolver.async_resolve(ep.host, std::to_string(ep.port),
                                                     asio::redirect_error(asio::use_awaitable, bec));
    if (bec) co_return s.fail(s.timed_out ? std::error_code(errc::timeout) : std::error_code(bec));
    co_await asio::async_connect(socket, endpoints, asio::redirect_error(asio::use_awaitable, bec));
  }
  if (bec) co_return s.fail(s.timed_out ? std::error_code(errc::timeout) : std::error_code(bec));
  socket.set_option(tcp::no_delay(true), bec);

  if (ep.tls == tls_mode::implicit) {
    if (auto ec = co_await s.handshake(ep.host)) co_return ec;
  }
  if (auto ec = co_await s.read_greeting()) co_return ec;
  if (s.caps.empty()) {
    if (auto ec = co_await s.refresh_capabilities()) co_return ec;
  }
  if (ep.tls == tls_mode::starttls) {
    if (!s.caps.has("STARTTLS")) co_return s.fail(errc::not_supported);
    std::string tag = s.next_tag();
    command_result r;
    if (auto ec = co_await s.run(tag, one_part(tag + " STARTTLS\r\n"), r, nullptr)) co_return ec;
    if (r.status != status::ok) co_return s.fail(errc::tls_failed);
    // Anything the server sent after its OK and before the handshake would be
    // read as if it came over TLS: that is an injection, not a server to trust.
    if (s.begin != s.end) co_return s.fail(errc::protocol_violation);
    if (auto ec = co_await s.handshake(ep.host)) co_return ec;
    s.caps = {};  // what was said in plaintext is not to be trusted
    if (auto ec = co_await s.refresh_capabilities()) co_return ec;
  }
  co_return std::error_code{};
}

awaitable<std::error_code> client::refresh_capabilities() {
  deadline_scope deadline(*impl_, impl_->opts.command_timeout);
  co_return co_await impl_->refresh_capabilities();
}

awaitable<std::error_code> client::login(std::string_view user, std::string_view password,
                                         command_result* result) {
  impl& s = *impl_;
  if (s.caps.has("LOGINDISABLED")) co_return errc::not_supported;
  deadline_scope deadline(s, s.opts.command_timeout);
  std::string tag = s.next_tag();
  command_builder b(tag, "LOGIN", s.non_sync_literals());
  b.astring(user).astring(password);
  command_result r;
  if (auto ec = co_await s.run(tag, std::move(b).finish(), r, nullptr)) co_return ec;
  auto ec = co_await s.after_login(r);
  if (result) *result = std::move(r);
  co_return ec;
}

master_credentials::~master_credentials() { secure_wipe(password); }

awaitable<std::error_code> client::login_as(std::string_view user, const master_credentials& m,
                                            command_result* result) {
  if (!m.separator_form) co_return co_await authenticate_plain(m.user, m.password, user, result);
  std::string name = std::string(user) + m.separator + m.user;
  co_return co_await login(name, m.password, result);
}

awaitable<std::error_code> client::authenticate_plain(std::string_view user,
                                                      std::string_view password,
                                                      std::string_view authzid,
                                                      command_result* result) {
  impl& s = *impl_;
  if (!s.caps.has_auth("PLAIN")) co_return errc::not_supported;
  deadline_scope deadline(s, s.opts.command_timeout);
  std::string payload;
  payload.append(authzid).append(1, '\0').append(user).append(1, '\0').append(password);
  std::string encoded = base64_encode(payload);
  secure_wipe(payload);
  std::string tag = s.next_tag();
  std::vector<std::string> parts;
  if (s.caps.has("SASL-IR")) {
    parts.push_back(tag + " AUTHENTICATE PLAIN " + encoded + "\r\n");
  } else {
    parts.push_back(tag + " AUTHENTICATE PLAIN\r\n");
    parts.push_back(encoded + "\r\n");
  }
  secure_wipe(encoded);
  command_result r;
  if (auto ec = co_await s.run(tag, std::move(parts), r, nullptr)) co_return ec;
  auto ec = co_await s.after_login(r);
  if (result) *result = std::move(r);
  co_return ec;
}

awaitable<std::error_code> client::send(std::string tag, std::vector<std::string> parts,
                                        response_handler* handler) {
  deadline_scope deadline(*impl_, impl_->opts.command_timeout);
  co_return co_await impl_->send(std::move(tag), std::move(parts), handler);
}

void client::send_with_next(std::string tag, std::string line) {
  impl_->send_with_next(std::move(tag), std::move(line));
}

awaitable<std::error_code> client::wait(std::string_view tag, command_result& out) {
  deadline_scope deadline(*impl_, impl_->opts.command_timeout);
  co_return co_await impl_->wait(tag, out);
}

awaitable<std::error_code> client::execute(std::string tag, std::vector<std::string> parts,
                                           command_result& out, response_handler* handler) {
  deadline_scope deadline(*impl_, impl_->opts.command_timeout);
  co_return co_await impl_->run(std::move(tag), std::move(parts), out, handler);
}

awaitable<std::error_code> client::simple(std::string_view text, command_result& out,
                                          response_handler* handler) {
  std::string tag = next_tag();
  std::string line = tag + " " + std::string(text) + "\r\n";
  co_return co_await execute(std::move(tag), one_part(std::move(line)), out, handler);
}

awaitable<std::error_code> client::mailbox_command(std::string_view head, std::string_view mailbox_utf8,
                                                   command_result& out, std::string_view tail) {
  std::string tag = next_tag();
  command_builder b(tag, head, impl_->non_sync_literals());
  if (!b.mailbox(mailbox_utf8)) co_return errc::bad_mailbox_name;
  if (!tail.empty()) b.atom(tail);
  std::vector<std::string> parts = std::move(b).finish();
  co_return co_await execute(std::move(tag), std::move(parts), out);
}

awaitable<std::error_code> client::append(std::string_view mailbox_utf8,
                                          std::span<append_item> items, command_result& out) {
  impl& s = *impl_;
  if (items.empty()) co_return std::make_error_code(std::errc::invalid_argument);
  if (items.size() > 1 && !s.caps.has("MULTIAPPEND")) co_return errc::not_supported;
  deadline_scope deadline(s, s.opts.command_timeout);
  const bool non_sync = s.non_sync_literals();
  std::string tag = s.next_tag();
  command_builder b(tag, "APPEND", non_sync);
  if (!b.mailbox(mailbox_utf8)) co_return errc::bad_mailbox_name;

  auto& pc = s.pending.emplace_back();
  pc.tag = tag;
  for (std::size_t i = 0; i < items.size(); ++i) {
    auto& item = items[i];
    if (i > 0) b = command_builder::continuation(non_sync);
    std::string flags = "(";
    for (const auto& f : item.flags) {
      if (iequals(f, "\\Recent")) continue;
      if (flags.size() > 1) flags += ' ';
      flags += f;
    }
    flags += ')';
    b.atom(flags);
    if (!item.internaldate.empty()) b.string(item.internaldate);
    auto parts = std::move(b).finish_before_literal(item.size);
    if (auto ec = co_await s.write_parts(pc, parts)) co_return ec;
    if (!non_sync) {
      if (auto ec = co_await s.await_continuation(pc)) co_return ec;
    }
    if (pc.done) break;  // refused before the body was sent (e.g. NO [TOOBIG])
    std::uint64_t sent = 0;
    for (;;) {
      std::string_view chunk = co_await item.body->next();
      if (chunk.empty()) break;
      if (sent + chunk.size() > item.size) break;
      if (auto ec = co_await s.write_all(chunk)) co_return ec;
      sent += chunk.size();
    }
    // A source that gives a different number of bytes than announced leaves
    // the stream out of step with the server: the connection cannot go on.
    if (sent != item.size) co_return s.fail(errc::literal_source_short);
  }
  if (!pc.done) {
    if (auto ec = co_await s.write_all("\r\n")) co_return ec;
  }
  co_return co_await s.wait(tag, out);
}

awaitable<std::error_code> client::logout() {
  impl& s = *impl_;
  if (s.fatal) co_return s.fatal;
  {
    deadline_scope deadline(s, s.opts.command_timeout);
    std::string tag = s.next_tag();
    command_result r;
    auto ec = co_await s.run(tag, one_part(tag + " LOGOUT\r\n"), r, nullptr);
    if (ec && ec != errc::server_bye) {
      close();
      co_return ec;
    }
  }
  if (s.stream && s.stream->tls_active()) {
    deadline_scope deadline(s, std::chrono::seconds(2));
    co_await s.stream->shutdown();
  }
  close();
  co_return std::error_code{};
}

void client::close() {
  if (!impl_) return;
  impl_->disarm();
  if (impl_->stream) impl_->stream->close();
}

std::unique_ptr<tls_stream> client::detach(std::string& unparsed) {
  impl& s = *impl_;
  s.disarm();
  unparsed.assign(s.buf.data() + s.begin, s.end - s.begin);
  s.begin = s.end = 0;
  s.fatal = errc::connection_closed;  // this object is done; the stream lives on
  return std::move(s.stream);
}

}  // namespace suction::imap
