#include "sync/folder_copy.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <ctime>
#include <map>
#include <set>
#include <memory>
#include <span>
#include <string>
#include <exception>
#include <utility>

#include "imap/date.hpp"
#include "imap/response.hpp"
#include "sync/flags_merge.hpp"
#include "sync/late_copies.hpp"
#include "imap/sequence_set.hpp"
#include "imap/serialize.hpp"

namespace suction::sync {

namespace {

using imap::awaitable;

class copy_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "suction.sync.copy"; }
  std::string message(int ev) const override {
    switch (static_cast<copy_errc>(ev)) {
      case copy_errc::ok: return "success";
      case copy_errc::legacy_uidvalidity_changed: return "legacy UIDVALIDITY changed since the last run";
      case copy_errc::new_uidvalidity_changed: return "new folder's UIDVALIDITY changed since the last run";
      case copy_errc::legacy_examine_failed: return "EXAMINE on legacy refused";
      case copy_errc::new_select_failed: return "SELECT of the new folder refused";
      case copy_errc::fetch_failed: return "UID FETCH on legacy refused";
      case copy_errc::append_refused_transient: return "APPEND refused for a reason of the account";
    }
    return "unknown copy error";
  }
};

using imap::iequals;

// Flags as they are copied: all but \Recent (the server sets that itself).
std::vector<std::string> without_recent(const std::vector<std::string>& flags) {
  std::vector<std::string> out;
  for (auto& f : flags)
    if (!iequals(f, "\\Recent")) out.push_back(f);
  return out;
}

// One message of a batch, buffered.
struct message {
  std::uint32_t uid = 0;
  std::vector<std::string> flags;  // without \Recent
  std::string internaldate;
  std::string body;
  bool have_body = false;
};

std::string flags_text(const std::vector<std::string>& flags) {
  std::vector<std::string> sorted = flags;
  std::sort(sorted.begin(), sorted.end());
  std::string out;
  for (auto& f : sorted) {
    if (!out.empty()) out += ' ';
    out += f;
  }
  return out;
}

// The bodies, flags and dates of one batch's UID FETCH, by sequence number.
class batch_collector final : public imap::response_handler {
 public:
  std::map<std::uint32_t, message> by_seq;
  awaitable<void> on_literal_begin(const imap::literal_info& info) override {
    current_ = &by_seq[info.message_number.value_or(0)];
    current_->body.clear();
    current_->body.reserve(info.size);
    current_->have_body = true;
    co_return;
  }
  awaitable<void> on_literal_data(std::string_view chunk) override {
    if (current_) current_->body.append(chunk);
    co_return;
  }
  awaitable<void> on_literal_end() override {
    current_ = nullptr;
    co_return;
  }
  awaitable<void> on_response(imap::response& r) override {
    auto f = imap::decode_fetch(r);
    if (!f) co_return;
    auto& m = by_seq[f->seq];
    if (f->uid) m.uid = *f->uid;
    if (f->flags) m.flags = without_recent(*f->flags);
    if (f->internaldate) m.internaldate = *f->internaldate;
    if (auto* s = f->section("BODY[]"); s && s->content && !s->content->streamed) {
      m.body = s->content->text;
      m.have_body = true;
    }
    co_return;
  }

 private:
  message* current_ = nullptr;
};


// APPEND (one message) or MULTIAPPEND of msgs, bodies from memory.
awaitable<std::error_code> append_messages(imap::client& c, std::string_view mailbox,
                                           std::span<message* const> msgs,
                                           imap::command_result& r) {
  std::vector<imap::string_source> sources;
  sources.reserve(msgs.size());  // items point into it
  std::vector<imap::append_item> items;
  items.reserve(msgs.size());
  for (message* m : msgs) {
    sources.emplace_back(m->body);
    imap::append_item it;
    it.flags = m->flags;
    it.internaldate = m->internaldate;
    it.size = m->body.size();
    it.body = &sources.back();
    items.push_back(std::move(it));
  }
  std::span<imap::append_item> span(items);
  co_return co_await c.append(mailbox, span, r);
}

// A refusal about the account or the server, not about the message.
bool transient_refusal(const imap::command_result& r) {
  if (!r.code) return false;
  const auto& n = r.code->name;
  return n == "OVERQUOTA" || n == "UNAVAILABLE" || n == "INUSE" || n == "SERVERBUG";
}


// --- One large message streamed from legacy's FETCH literal into the APPEND
// literal: at most a read buffer's worth of bytes is held.

namespace asio = boost::asio;
using chunk_channel = asio::experimental::channel<void(boost::system::error_code, std::string)>;
using done_channel = asio::experimental::channel<void(boost::system::error_code)>;

// Sends an empty string when the BODY[] literal begins (its size is then in
// `size`), then its bytes in non-empty chunks. Once the receiver has gone (the
// channel closed or cancelled), the rest is read and dropped.
class stream_handler final : public imap::response_handler {
 public:
  explicit stream_handler(chunk_channel& ch) : ch_(ch) {}
  std::optional<std::uint64_t> size;

  awaitable<void> on_literal_begin(const imap::literal_info& info) override {
    if (size) co_return;  // only the first literal (there is only BODY[])
    size = info.size;
    in_body_ = true;
    co_await send(std::string());
  }
  awaitable<void> on_literal_data(std::string_view chunk) override {
    if (!in_body_ || chunk.empty()) co_return;
    co_await send(std::string(chunk));
  }
  awaitable<void> on_literal_end() override {
    in_body_ = false;
    co_return;
  }
  awaitable<void> on_response(imap::response& r) override {
    auto f = imap::decode_fetch(r);
    if (!f || size) co_return;
    // Small enough to arrive inline: hand it over whole.
    if (auto* s = f->section("BODY[]"); s && s->content && !s->content->streamed) {
      size = s->content->text.size();
      co_await send(std::string());
      if (!s->content->text.empty()) co_await send(s->content->text);
    }
  }

 private:
  awaitable<void> send(std::string chunk) {
    if (gone_) co_return;
    boost::system::error_code ec;
    co_await ch_.async_send(boost::system::error_code{}, std::move(chunk),
                            asio::redirect_error(asio::use_awaitable, ec));
    if (ec) gone_ = true;
  }
  chunk_channel& ch_;
  bool in_body_ = false;
  bool gone_ = false;
};

// The APPEND's literal_source: exactly `size` bytes from the channel; an early
// end (the FETCH failed) gives an empty view, which fails the APPEND's connection.
class channel_source final : public imap::literal_source {
 public:
  channel_source(chunk_channel& ch, std::uint64_t size) : ch_(ch), size_(size) {}
  awaitable<std::string_view> next() override {
    if (received_ >= size_) co_return std::string_view();
    boost::system::error_code ec;
    current_ = co_await ch_.async_receive(asio::redirect_error(asio::use_awaitable, ec));
    if (ec || current_.empty()) co_return std::string_view();
    received_ += current_.size();
    co_return std::string_view(current_);
  }

 private:
  chunk_channel& ch_;
  std::uint64_t size_;
  std::uint64_t received_ = 0;
  std::string current_;
};

// The legacy side of a stream, run beside the APPEND. Ends the chunk channel
// with an error (for a receiver still waiting) and signals `done`.
awaitable<void> run_stream_fetch(imap::client& legacy, std::string command,
                                 stream_handler& handler, chunk_channel& ch, done_channel& done,
                                 std::error_code& ec, imap::command_result& r,
                                 std::exception_ptr& failure) {
  // Detached: an exception would be lost and `done` never sent; it is handed
  // to the waiter instead, which rethrows it.
  try {
    ec = co_await legacy.simple(command, r, &handler);
  } catch (...) {
    failure = std::current_exception();
    ec = make_error_code(std::errc::io_error);
  }
  boost::system::error_code ignored;
  if (ch.is_open())
    co_await ch.async_send(asio::error::eof, std::string(),
                           asio::redirect_error(asio::use_awaitable, ignored));
  co_await done.async_send(boost::system::error_code{},
                           asio::redirect_error(asio::use_awaitable, ignored));
}

struct stream_outcome {
  std::error_code ec;       // a connection failed (the new one is then closed)
  bool appended = false;    // the APPEND was sent whole and answered (see r)
  bool fetch_refused = false;
  bool vanished = false;    // FETCH OK without the message
  std::uint64_t size = 0;
  std::string fetch_text;
};

// UID FETCH <uid> BODY.PEEK[] on legacy streamed into APPEND on the new
// server; r receives the APPEND's answer.
awaitable<stream_outcome> stream_message(imap::client& legacy, imap::client& fresh,
                                         std::string_view mailbox, std::uint32_t uid,
                                         const std::vector<std::string>& flags,
                                         const std::string& internaldate,
                                         imap::command_result& r) {
  stream_outcome out;
  auto ex = co_await asio::this_coro::executor;
  chunk_channel ch(ex, 1);
  done_channel done(ex, 1);
  stream_handler handler(ch);
  std::error_code fetch_ec;
  std::exception_ptr fetch_failure;
  imap::command_result fr;
  std::string command = "UID FETCH " + std::to_string(uid) + " (UID BODY.PEEK[])";
  asio::co_spawn(ex,
                 run_stream_fetch(legacy, command, handler, ch, done, fetch_ec, fr, fetch_failure),
                 asio::detached);

  boost::system::error_code rec;
  std::string first = co_await ch.async_receive(asio::redirect_error(asio::use_awaitable, rec));
  std::error_code append_ec;
  bool appended = false;
  if (!rec && handler.size) {
    out.size = *handler.size;
    channel_source src(ch, out.size);
    std::vector<imap::append_item> items(1);
    items[0].flags = flags;
    items[0].internaldate = internaldate;
    items[0].size = out.size;
    items[0].body = &src;
    std::span<imap::append_item> span(items);
    append_ec = co_await fresh.append(mailbox, span, r);
    appended = true;
  }
  ch.cancel();  // a FETCH still sending (the APPEND ended early) drops the rest
  ch.close();
  boost::system::error_code ignored;
  co_await done.async_receive(asio::redirect_error(asio::use_awaitable, ignored));
  if (fetch_failure) std::rethrow_exception(fetch_failure);

  out.appended = appended && !append_ec;
  if (fetch_ec) {
    // Failed mid-literal, the APPEND failed too and closed its connection;
    // failed after it, the APPEND may have gone through (out.appended).
    out.ec = fetch_ec;
    co_return out;
  }
  if (append_ec) {
    out.ec = append_ec;
    co_return out;
  }
  if (fr.status != imap::status::ok) {
    out.fetch_refused = true;
    out.fetch_text = fr.text;
    co_return out;
  }
  if (!appended) out.vanished = true;
  co_return out;
}


// One batch's UID FETCH run beside the APPENDs of the batch before it.
struct prefetch {
  batch_collector got;
  std::error_code ec;
  imap::command_result r;
  done_channel done;
  bool finished = false;
  std::exception_ptr failure;  // thrown in the detached fetch: rethrown by wait()
  explicit prefetch(asio::any_io_executor ex) : done(ex, 1) {}
  awaitable<void> wait() {
    if (!finished) {
      boost::system::error_code ignored;
      co_await done.async_receive(asio::redirect_error(asio::use_awaitable, ignored));
      finished = true;
    }
    if (failure) std::rethrow_exception(std::exchange(failure, nullptr));
  }
};

awaitable<void> run_prefetch(imap::client& legacy, std::string command,
                             std::shared_ptr<prefetch> p) {
  try {
    p->ec = co_await legacy.simple(command, p->r, &p->got);
  } catch (...) {
    p->failure = std::current_exception();
    p->ec = make_error_code(std::errc::io_error);
  }
  boost::system::error_code ignored;
  co_await p->done.async_send(boost::system::error_code{},
                              asio::redirect_error(asio::use_awaitable, ignored));
}

// --- Content signatures (flags_merge.hpp) for re-matching without UIDs.

constexpr std::string_view kSignatureItems =
    "(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM SUBJECT)])";

struct signed_message {
  std::uint32_t uid = 0;
  std::uint64_t size = 0;
  std::int64_t when = 0;  // INTERNALDATE as an instant
  std::string signature;
  std::vector<std::string> flags;  // without \Recent
};

// One signature per message as its FETCH response arrives; the header fields
// are held only until then (a literal too large to come inline is streamed).
class signature_collector final : public imap::response_handler {
 public:
  std::vector<signed_message> out;
  awaitable<void> on_literal_begin(const imap::literal_info& info) override {
    seq_ = info.message_number.value_or(0);
    streamed_.clear();
    co_return;
  }
  awaitable<void> on_literal_data(std::string_view chunk) override {
    streamed_.append(chunk);
    co_return;
  }
  awaitable<void> on_literal_end() override { co_return; }
  awaitable<void> on_response(imap::response& r) override {
    auto f = imap::decode_fetch(r);
    if (!f || !f->uid || !f->rfc822_size || !f->internaldate) co_return;
    std::string_view headers;
    for (auto& s : f->sections)
      if (s.name.starts_with("BODY[HEADER.FIELDS") && s.content) {
        if (!s.content->streamed) headers = s.content->text;
        else if (seq_ == f->seq) headers = streamed_;
      }
    auto when = imap::parse_date_time(*f->internaldate);
    signed_message m;
    m.uid = *f->uid;
    m.size = *f->rfc822_size;
    m.when = when ? when->epoch_seconds : 0;
    m.signature = content_signature(m.size, m.when, headers);
    if (f->flags) m.flags = without_recent(*f->flags);
    out.push_back(std::move(m));
    streamed_.clear();
    seq_ = 0;
  }

 private:
  std::uint32_t seq_ = 0;
  std::string streamed_;
};

// Signatures of the messages of `uid_set` in the mailbox selected on c, in UID
// order; with `above`, only UIDs above it (n:* also answers the highest UID).
awaitable<std::error_code> fetch_signatures(imap::client& c, const std::string& uid_set,
                                            std::uint32_t above, std::vector<signed_message>& out,
                                            imap::command_result& r) {
  signature_collector got;
  std::string command = "UID FETCH " + uid_set + " " + std::string(kSignatureItems);
  if (auto ec = co_await c.simple(command, r, &got)) co_return ec;
  if (r.status != imap::status::ok) co_return make_error_code(copy_errc::fetch_failed);
  std::erase_if(got.out, [&](const signed_message& m) { return m.uid <= above; });
  std::sort(got.out.begin(), got.out.end(), [](auto& a, auto& b) { return a.uid < b.uid; });
  got.out.erase(std::unique(got.out.begin(), got.out.end(),
                            [](auto& a, auto& b) { return a.uid == b.uid; }),
                got.out.end());
  out = std::move(got.out);
  co_return std::error_code{};
}

// An INTERNALDATE as an instant (0 when it does not parse): zones differ
// between servers, instants do not.
std::int64_t instant_of(std::string_view internaldate) {
  auto when = imap::parse_date_time(internaldate);
  return when ? when->epoch_seconds : 0;
}

std::vector<std::pair<std::uint32_t, std::string>> uid_signatures(
    const std::vector<signed_message>& v) {
  std::vector<std::pair<std::uint32_t, std::string>> out;
  out.reserve(v.size());
  for (auto& m : v) out.emplace_back(m.uid, m.signature);
  return out;
}

// UID -> flags (without \\Recent) of a UID FETCH ... (UID FLAGS) answer.
std::map<std::uint32_t, std::vector<std::string>> flags_by_uid(const imap::command_result& r) {
  std::map<std::uint32_t, std::vector<std::string>> out;
  for (auto& u : r.untagged)
    if (auto f = imap::decode_fetch(u); f && f->uid && f->flags)
      out[*f->uid] = normalize_flags(*f->flags);
  return out;
}

// See the flag step in copy_folder. Both folders are selected (legacy EXAMINEd).
awaitable<std::error_code> sync_flags(imap::client& legacy, imap::client& fresh,
                                      state_store& state, std::string_view user,
                                      const folder_mapping& mapping, const folder_state& st,
                                      folder_copy_report& report, imap::command_result& r) {
  std::vector<message_record> recs = state.messages(user, mapping.legacy_name);
  std::erase_if(recs, [](const message_record& m) { return m.new_uid == 0; });
  if (recs.empty()) co_return std::error_code{};

  // With CONDSTORE (RFC 7162) and the HIGHESTMODSEQ of the last complete run,
  // legacy names only the messages whose flags changed since: a message it
  // does not name still has the flags last agreed, and merge_flags would
  // change nothing for it. Without, every copied message is looked at.
  std::string cmd = "UID FETCH 1:" + std::to_string(st.last_legacy_uid) + " (UID FLAGS)";
  const bool changedsince = st.highest_modseq != 0 && legacy.capabilities().has("CONDSTORE");
  if (changedsince) cmd += " (CHANGEDSINCE " + std::to_string(st.highest_modseq) + ")";
  if (auto ec = co_await legacy.simple(cmd, r)) co_return ec;
  if (r.status != imap::status::ok) {
    report.errors.push_back(mapping.legacy_name + ": " + cmd + ": " + r.text);
    co_return make_error_code(copy_errc::fetch_failed);
  }
  auto legacy_flags = flags_by_uid(r);
  if (changedsince)
    std::erase_if(recs, [&](const message_record& m) { return !legacy_flags.contains(m.legacy_uid); });
  if (recs.empty()) co_return std::error_code{};
  std::vector<std::uint32_t> new_uids;
  new_uids.reserve(recs.size());
  for (auto& m : recs) new_uids.push_back(m.new_uid);
  std::sort(new_uids.begin(), new_uids.end());
  cmd = "UID FETCH " + imap::format_sequence_set(new_uids) + " (UID FLAGS)";
  if (auto ec = co_await fresh.simple(cmd, r)) co_return ec;
  if (r.status != imap::status::ok) {
    report.errors.push_back(mapping.legacy_name + ": new server " + cmd + ": " + r.text);
    co_return make_error_code(copy_errc::fetch_failed);
  }
  auto fresh_flags = flags_by_uid(r);

  // Identical changes grouped: (add, remove) -> the records.
  std::map<std::pair<std::string, std::string>, std::vector<const message_record*>> groups;
  std::vector<std::pair<std::uint32_t, std::string>> agreed_only;  // no STORE needed
  std::map<const message_record*, std::string> agreed_of;
  for (auto& m : recs) {
    auto l = legacy_flags.find(m.legacy_uid);
    auto n = fresh_flags.find(m.new_uid);
    if (l == legacy_flags.end() || n == fresh_flags.end()) continue;  // gone on one side
    std::vector<std::string> base = split_flags(m.flags);
    flag_merge fm = merge_flags(base, l->second, n->second);
    std::string agreed = join_flags(fm.agreed);
    if (fm.changes()) {
      groups[{join_flags(fm.add), join_flags(fm.remove)}].push_back(&m);
      agreed_of[&m] = std::move(agreed);
    } else if (agreed != join_flags(base)) {  // base is normalized by split_flags
      agreed_only.emplace_back(m.legacy_uid, std::move(agreed));
    }
  }
  for (auto& [change, members] : groups) {
    std::vector<std::uint32_t> uids;
    for (auto* m : members) uids.push_back(m->new_uid);
    std::sort(uids.begin(), uids.end());
    const std::string set = imap::format_sequence_set(uids);
    bool ok = true;
    for (int add = 1; add >= 0 && ok; --add) {
      const std::string& what = add ? change.first : change.second;
      if (what.empty()) continue;
      cmd = "UID STORE " + set + (add ? " +FLAGS.SILENT (" : " -FLAGS.SILENT (") + what + ")";
      if (auto ec = co_await fresh.simple(cmd, r)) co_return ec;
      if (r.status != imap::status::ok) {
        report.errors.push_back(mapping.legacy_name + ": new server " + cmd + ": " + r.text);
        ok = false;
      }
    }
    if (!ok) continue;  // not agreed: the next run tries again
    std::vector<std::pair<std::uint32_t, std::string>> agreed;
    agreed.reserve(members.size());
    for (auto* m : members) agreed.emplace_back(m->legacy_uid, std::move(agreed_of[m]));
    state.update_flags(user, mapping.legacy_name, agreed);
    report.flags_updated += members.size();
  }
  state.update_flags(user, mapping.legacy_name, agreed_only);
  co_return std::error_code{};
}

// A legacy message above the checkpoint, from the scan (no body yet).
struct pending {
  std::uint32_t uid;
  std::uint64_t size;
  std::vector<std::string> flags;  // for streamed messages
  std::string internaldate;
  std::int64_t when = 0;  // internaldate as an instant (instant_of)
};

// What picks reconciliation candidates without a fetch: size and INTERNALDATE.
struct shape {
  std::uint32_t uid;
  std::uint64_t size;
  std::int64_t when;
};

std::int64_t unix_now() { return static_cast<std::int64_t>(std::time(nullptr)); }

struct late_outcome {
  std::vector<message_record> records;  // copies found: legacy -> new, to record
  std::vector<std::int64_t> resolved;   // journal entries whose batch was found
  std::uint32_t highest_unknown = 0;    // the highest unknown new UID looked at
};

// UID STORE +FLAGS.SILENT (\Deleted) and UID EXPUNGE (UIDPLUS) of exactly `uids`:
// nothing else the user marked \Deleted goes. False, with the reason in the
// report, when the server lacks UIDPLUS or refuses.
awaitable<std::error_code> remove_copies(imap::client& fresh, const std::string& folder,
                                         const std::vector<std::uint32_t>& uids, bool& removed,
                                         folder_copy_report& report, imap::command_result& r) {
  removed = false;
  const std::string set = imap::format_sequence_set(uids);
  if (!fresh.capabilities().has("UIDPLUS")) {
    report.errors.push_back(folder + ": " + std::to_string(uids.size()) +
                            " second copies left at new UIDs " + set +
                            ": the new server lacks UIDPLUS (UID EXPUNGE)");
    co_return std::error_code{};
  }
  for (const std::string& cmd : {"UID STORE " + set + " +FLAGS.SILENT (\\Deleted)", "UID EXPUNGE " + set}) {
    if (auto ec = co_await fresh.simple(cmd, r)) co_return ec;
    if (r.status != imap::status::ok) {
      report.errors.push_back(folder + ": removing second copies: " + cmd + ": " + r.text);
      co_return std::error_code{};
    }
  }
  removed = true;
  co_return std::error_code{};
}

// The late-copies step (late_copies.hpp) over `uid_set`, new UIDs the store
// does not know (all above `above`): their signatures, those of the candidates
// (pending messages of a matching shape not recorded yet, and every journaled
// one), resolve_late_copies, then our second copies removed. Records nothing:
// the caller does, with its checkpoint.
awaitable<std::error_code> check_late_copies(imap::client& legacy, imap::client& fresh,
                                             const state_store& state, std::string_view user,
                                             const std::string& folder, const std::string& uid_set,
                                             std::uint32_t above, std::span<const shape> pending,
                                             const std::set<std::uint32_t>& recorded,
                                             std::span<const journal_entry> journal,
                                             late_outcome& out, folder_copy_report& report,
                                             imap::command_result& r) {
  auto fetch_failed = [&](const char* what) {
    report.errors.push_back(folder + ": UID FETCH (" + what + "): " + r.text);
    return make_error_code(copy_errc::fetch_failed);
  };
  std::vector<signed_message> fresh_sigs, legacy_sigs;
  if (auto ec = co_await fetch_signatures(fresh, uid_set, above, fresh_sigs, r))
    co_return ec == copy_errc::fetch_failed ? fetch_failed("new server, reconcile") : ec;
  if (fresh_sigs.empty()) co_return std::error_code{};
  out.highest_unknown = fresh_sigs.back().uid;
  std::set<std::pair<std::uint64_t, std::int64_t>> shapes;  // (size, instant)
  for (auto& m : fresh_sigs) shapes.emplace(m.size, m.when);
  // Not those recorded above the checkpoint (INBOX's recent mail): an exact
  // duplicate of one of them must pair with its own unrecorded copy.
  std::set<std::uint32_t> uids, in_todo;
  for (auto& p : pending) {
    in_todo.insert(p.uid);
    if (shapes.contains({p.size, p.when}) && !recorded.contains(p.uid)) uids.insert(p.uid);
  }
  for (auto& e : journal) uids.insert(e.legacy_uids.begin(), e.legacy_uids.end());
  if (!uids.empty()) {
    if (auto ec = co_await fetch_signatures(
            legacy, imap::format_sequence_set(std::vector<std::uint32_t>(uids.begin(), uids.end())),
            0, legacy_sigs, r))
      co_return ec == copy_errc::fetch_failed ? fetch_failed("reconcile") : ec;
  }
  std::vector<unknown_copy> unknown;
  for (auto& m : fresh_sigs) unknown.push_back({m.uid, m.signature});
  std::vector<legacy_candidate> candidates;
  std::map<std::uint32_t, const signed_message*> legacy_by_uid;
  for (auto& m : legacy_sigs) {
    legacy_by_uid[m.uid] = &m;
    // Pending ones know from the scan; a journaled one outside it (settled
    // below the checkpoint, or the scan did not run) from the message map.
    const bool rec = recorded.contains(m.uid) ||
                     (!in_todo.contains(m.uid) && state.message(user, folder, m.uid).has_value());
    candidates.push_back({m.uid, m.signature, rec});
  }
  late_copies_plan plan = resolve_late_copies(unknown, candidates, journal);
  if (!plan.remove.empty()) {
    bool removed = false;
    if (auto ec = co_await remove_copies(fresh, folder, plan.remove, removed, report, r)) co_return ec;
    if (removed) report.removed += plan.remove.size();
    else plan.resolved.clear();  // still there: the next run tries again
  }
  for (auto& [lu, nu] : plan.record)
    out.records.push_back({lu, nu, flags_text(legacy_by_uid[lu]->flags)});
  out.resolved = std::move(plan.resolved);
  co_return std::error_code{};
}

}  // namespace

const std::error_category& copy_category() noexcept {
  static const copy_category_impl c;
  return c;
}

boost::asio::awaitable<std::error_code> copy_folder(imap::client& legacy, imap::client& fresh,
                                                    state_store& state, std::string_view user,
                                                    const folder_mapping& mapping,
                                                    const copy_options& opts,
                                                    folder_copy_report& report) {
  auto fail = [&](copy_errc e, const std::string& what) {
    report.errors.push_back(mapping.legacy_name + ": " + what);
    return make_error_code(e);
  };
  imap::command_result r;

  // The new folder: SELECT it, and CREATE it first only where it is not there
  // (sync_user creates every planned folder up front: a run pays no second
  // CREATE per folder). A parent without messages is only created.
  if (!mapping.selectable) co_return co_await fresh.mailbox_command("CREATE", mapping.new_name, r);
  if (auto ec = co_await fresh.mailbox_command("SELECT", mapping.new_name, r)) co_return ec;
  if (r.status == imap::status::no) {
    if (auto ec = co_await fresh.mailbox_command("CREATE", mapping.new_name, r)) co_return ec;
    if (auto ec = co_await fresh.mailbox_command("SELECT", mapping.new_name, r)) co_return ec;
  }
  if (r.status != imap::status::ok)
    co_return fail(copy_errc::new_select_failed, "SELECT " + mapping.new_name + ": " + r.text);
  std::uint32_t new_uidvalidity = 0;
  std::uint32_t new_exists = 0;
  std::optional<std::uint32_t> new_uidnext;
  for (auto& u : r.untagged) {
    if (auto v = imap::decode_uidvalidity(u)) new_uidvalidity = *v;
    if (auto v = imap::decode_uidnext(u)) new_uidnext = *v;
    if (u.keyword == "EXISTS" && u.number) new_exists = *u.number;
  }

  // Legacy, read-only.
  if (auto ec = co_await legacy.mailbox_command("EXAMINE", mapping.legacy_name, r)) co_return ec;
  if (r.status != imap::status::ok)
    co_return fail(copy_errc::legacy_examine_failed, "EXAMINE: " + r.text);
  std::uint32_t legacy_uidvalidity = 0, exists = 0;
  std::optional<std::uint32_t> legacy_uidnext;
  for (auto& u : r.untagged) {
    if (auto v = imap::decode_uidvalidity(u)) legacy_uidvalidity = *v;
    if (auto v = imap::decode_uidnext(u)) legacy_uidnext = *v;
    if (u.keyword == "EXISTS" && u.number) exists = *u.number;
  }

  // The checkpoint.
  folder_state st;
  bool had_state = false;
  if (auto saved = state.folder(user, mapping.legacy_name)) {
    st = *saved;
    had_state = true;
    if (st.new_uidvalidity != 0 && st.new_uidvalidity != new_uidvalidity)
      co_return fail(copy_errc::new_uidvalidity_changed,
                     "new UIDVALIDITY " + std::to_string(new_uidvalidity) + " != stored " +
                         std::to_string(st.new_uidvalidity) + ": nothing copied");
    if (st.legacy_uidvalidity != legacy_uidvalidity) {
      // Re-matching after a legacy UIDVALIDITY change (issue 4 item 7): the old
      // legacy UIDs mean nothing now, but the new copies they were mapped to are
      // still there. Pair every legacy message (new UIDVALIDITY) with the new
      // copies recorded for this folder by content signature (exact duplicates
      // pair by count), then replace the folder's state with those pairs under
      // the new UIDVALIDITY. The checkpoint covers only the legacy UIDs that are
      // all matched from the bottom up; matched ones above it are skipped below
      // through their records, unmatched ones are copied normally. Only
      // signatures are held (no bodies). The new copies recorded with new UID 0
      // (no UIDPLUS) cannot be fetched: their legacy messages are copied again.
      std::vector<message_record> old = state.messages(user, mapping.legacy_name);
      std::map<std::uint32_t, std::string> agreed;  // new uid -> flags last agreed
      for (auto& m : old)
        if (m.new_uid != 0) agreed.emplace(m.new_uid, std::move(m.flags));
      old.clear();
      old.shrink_to_fit();
      std::vector<signed_message> fresh_sigs, legacy_sigs;
      if (!agreed.empty()) {
        std::vector<std::uint32_t> uids;
        uids.reserve(agreed.size());
        for (auto& [u, f] : agreed) uids.push_back(u);
        if (auto ec = co_await fetch_signatures(fresh, imap::format_sequence_set(uids), 0,
                                                fresh_sigs, r))
          co_return ec == copy_errc::fetch_failed
              ? fail(copy_errc::fetch_failed, "UID FETCH (new server, re-match): " + r.text)
              : ec;
      }
      if (exists != 0 && !fresh_sigs.empty())
        if (auto ec = co_await fetch_signatures(legacy, "1:*", 0, legacy_sigs, r))
          co_return ec == copy_errc::fetch_failed
              ? fail(copy_errc::fetch_failed, "UID FETCH (re-match): " + r.text)
              : ec;
      auto pairs = match_by_signature(uid_signatures(legacy_sigs), uid_signatures(fresh_sigs));
      std::sort(pairs.begin(), pairs.end());
      folder_state next;
      next.legacy_name = mapping.legacy_name;
      next.legacy_uidvalidity = legacy_uidvalidity;
      next.new_name = mapping.new_name;
      next.new_uidvalidity = new_uidvalidity;
      next.last_new_uid = st.last_new_uid;
      std::size_t prefix = 0;  // legacy_sigs is in UID order, pairs too
      while (prefix < pairs.size() && prefix < legacy_sigs.size() &&
             pairs[prefix].first == legacy_sigs[prefix].uid)
        ++prefix;
      if (prefix > 0) next.last_legacy_uid = pairs[prefix - 1].first;
      std::vector<message_record> recs;
      recs.reserve(pairs.size());
      for (auto& [lu, nu] : pairs) {
        recs.push_back({lu, nu, agreed[nu]});
        next.last_new_uid = std::max(next.last_new_uid, nu);
      }
      // Two transactions: a kill between them leaves no state for the folder,
      // and the next run's crash reconciliation (everything in the new folder
      // is then above last_new_uid 0) pairs the copies again.
      state.forget_folder(user, mapping.legacy_name);
      state.record_batch(user, next, recs);
      report.rematched += recs.size();
      st = next;
    } else if (st.new_uidvalidity == 0 || st.new_name != mapping.new_name) {
      st.new_uidvalidity = new_uidvalidity;
      st.new_name = mapping.new_name;
      state.save_folder(user, st);
    }
  } else {
    st.legacy_name = mapping.legacy_name;
    st.legacy_uidvalidity = legacy_uidvalidity;
    st.new_name = mapping.new_name;
    st.new_uidvalidity = new_uidvalidity;
    state.save_folder(user, st);
  }
  // The flag step (issue 4 item 5, "the user's work wins"), before new mail is
  // copied: for every message already copied (in the message map), per flag,
  // merge_flags(base = flags last agreed, legacy = legacy's flags now, fresh =
  // the new copy's flags now). Legacy is only read (FETCH FLAGS on the
  // EXAMINEd folder); the changes go to the new server as UID STORE
  // +FLAGS.SILENT / -FLAGS.SILENT, one command per identical change with a
  // sequence set of new UIDs; the store then holds legacy's flags as the new
  // "last agreed". A copy the user deleted (its new UID is gone) or moved is
  // not touched, and is never copied again either (only UIDs above the
  // checkpoint are). A message gone from legacy is left alone. Copies
  // recorded without a new UID (no UIDPLUS) cannot be addressed: skipped.
  // With CONDSTORE only the messages changed since the last complete run
  // (CHANGEDSINCE), else a FETCH FLAGS of 1:last_legacy_uid.
  if (had_state && exists != 0 && st.last_legacy_uid > 0) {
    if (auto ec = co_await sync_flags(legacy, fresh, state, user, mapping, st, report, r))
      co_return ec;
  }
  if (exists == 0) co_return std::error_code{};
  // Batches an earlier run sent without knowing their fate (late_copies.hpp):
  // until they are found or expire, the folder is looked at on every run.
  std::vector<journal_entry> journal = state.journal(user, mapping.legacy_name);
  const bool legacy_news = !(legacy_uidnext && *legacy_uidnext <= st.last_legacy_uid + 1ull);
  if (!legacy_news && journal.empty()) co_return std::error_code{};

  // What is new, with sizes (no bodies yet).
  std::vector<pending> todo;
  if (legacy_news) {
    std::string scan =
        "UID FETCH " + std::to_string(st.last_legacy_uid + 1) + ":* (UID RFC822.SIZE FLAGS INTERNALDATE)";
    if (auto ec = co_await legacy.simple(scan, r)) co_return ec;
    if (r.status != imap::status::ok) co_return fail(copy_errc::fetch_failed, scan + ": " + r.text);
    for (auto& u : r.untagged)
      if (auto f = imap::decode_fetch(u); f && f->uid && *f->uid > st.last_legacy_uid)
      {
        pending p{*f->uid, f->rfc822_size.value_or(0), {}, f->internaldate.value_or(""), 0};
        p.when = instant_of(p.internaldate);
        if (f->flags) p.flags = without_recent(*f->flags);
        todo.push_back(std::move(p));
      }
    std::sort(todo.begin(), todo.end(), [](auto& a, auto& b) { return a.uid < b.uid; });
    todo.erase(std::unique(todo.begin(), todo.end(),
                           [](auto& a, auto& b) { return a.uid == b.uid; }),
               todo.end());
  }

  // Crash reconciliation (issue 4 item 6) and late copies (late_copies.hpp).
  // A kill between an APPEND and its record_batch leaves copies on the new
  // server above last_new_uid that the store does not know, while their legacy
  // originals are still pending; a batch a dead run left in flight may land
  // there too, even after its messages were copied again. So: when the new
  // folder has UIDs above last_new_uid (its UIDNEXT says so, cheaply) and
  // there is something they could be (pending messages, a journal entry),
  // fetch their signatures and those of the candidates (pending messages of
  // the same size and INTERNALDATE, found from the scan without a fetch, and
  // the journaled ones), then record the pairs, remove our second copies and
  // leave the user's own alone; last_new_uid moves past all of them so they
  // are not looked at again.
  // Pending UIDs already in the message map (above the checkpoint): one query.
  std::set<std::uint32_t> recorded;
  if (had_state && !todo.empty())
    recorded = state.recorded_above(user, mapping.legacy_name, st.last_legacy_uid);
  std::vector<shape> shapes;
  shapes.reserve(todo.size());
  for (auto& p : todo) shapes.push_back({p.uid, p.size, p.when});
  auto resolved_in = [&](std::span<const std::int64_t> ids) {
    std::erase_if(journal, [&](const journal_entry& e) {
      return std::find(ids.begin(), ids.end(), e.id) != ids.end();
    });
  };
  if (new_exists != 0 && (!todo.empty() || !journal.empty()) &&
      (!new_uidnext || *new_uidnext > st.last_new_uid + 1ull)) {
    late_outcome lo;
    if (auto ec = co_await check_late_copies(legacy, fresh, state, user, mapping.legacy_name,
                                             std::to_string(st.last_new_uid + 1) + ":*",
                                             st.last_new_uid, shapes, recorded, journal, lo,
                                             report, r))
      co_return ec;
    for (auto& rec : lo.records) recorded.insert(rec.legacy_uid);
    // The checkpoint moves over the matched legacy UIDs that follow it without a gap.
    std::size_t prefix = 0;
    while (prefix < lo.records.size() && prefix < todo.size() &&
           lo.records[prefix].legacy_uid == todo[prefix].uid)
      ++prefix;
    if (prefix > 0) st.last_legacy_uid = lo.records[prefix - 1].legacy_uid;
    st.last_new_uid = std::max(st.last_new_uid, lo.highest_unknown);
    if (lo.highest_unknown != 0 || !lo.records.empty())
      state.record_batch(user, st, lo.records, lo.resolved);
    if (!lo.records.empty()) had_state = true;
    report.reconciled += lo.records.size();
    resolved_in(lo.resolved);
  }
  // Entries not found by now and old enough will never land.
  if (auto old = expired_entries(journal, {}, unix_now()); !old.empty()) {
    state.drop_journal(old);
    resolved_in(old);
  }
  // Skip what is already recorded above the checkpoint (matched just now, or
  // by an earlier re-match or reconciliation that could not move it over them,
  // or copied first by an interrupted recent-first run). They count as settled.
  const std::uint32_t scan_top = todo.empty() ? 0 : todo.back().uid;  // todo is in UID order here
  if (had_state && !todo.empty())
    std::erase_if(todo, [&](const pending& p) {
      return p.uid <= st.last_legacy_uid || recorded.contains(p.uid);
    });

  // The checkpoint moves over a legacy UID only when it and every pending UID
  // below it are settled (copied, refused and reported, or gone from legacy):
  // with the recent-first order below, later UIDs settle before earlier ones.
  // Those copied above the checkpoint are in the message map, which the next
  // run skips (the erase_if above).
  std::set<std::uint32_t> unsettled;
  for (auto& p : todo) unsettled.insert(p.uid);
  auto settle = [&](std::span<const std::uint32_t> uids) {
    for (auto u : uids) unsettled.erase(u);
    const std::uint32_t covered = unsettled.empty() ? scan_top : *unsettled.begin() - 1;
    st.last_legacy_uid = std::max(st.last_legacy_uid, covered);
  };
  if (todo.empty() && scan_top > st.last_legacy_uid) {
    // Everything above the checkpoint was recorded already: it moves over it,
    // so the no-change skip and the flag step cover those messages again.
    settle({});
    state.save_folder(user, st);
  }

  // Recent first (issue 4 item 9, for INBOX): the messages of the last days,
  // newest INTERNALDATE first, then the rest in UID order, so the mail a user looks for
  // first is there first.
  if (opts.recent_since != 0) {
    auto old_end = std::stable_partition(todo.begin(), todo.end(), [&](const pending& p) {
      return p.when >= opts.recent_since;
    });
    std::sort(todo.begin(), old_end, [](const pending& a, const pending& b) {
      return a.when != b.when ? a.when > b.when : a.uid > b.uid;
    });
  }
  if (opts.on_scanned) {
    std::uint64_t bytes = 0;
    for (auto& p : todo) bytes += p.size;
    opts.on_scanned(todo.size(), bytes);
  }
  // Settled without being copied (refused, gone from legacy): out of the
  // progress totals, so a finished folder shows 100 %.
  std::map<std::uint32_t, std::uint64_t> size_of;
  if (opts.on_dropped)
    for (auto& p : todo) size_of[p.uid] = p.size;
  auto dropped = [&](std::span<const std::uint32_t> uids, std::span<message* const> copied) {
    if (!opts.on_dropped) return;
    std::uint64_t n = 0, bytes = 0;
    for (auto u : uids)
      if (std::none_of(copied.begin(), copied.end(), [u](const message* m) { return m->uid == u; })) {
        ++n;
        bytes += size_of[u];
      }
    if (n > 0) opts.on_dropped(n, bytes);
  };

  const bool multiappend = fresh.capabilities().has("MULTIAPPEND");
  const std::size_t max_messages = std::max<std::size_t>(1, opts.batch_messages);

  // The new folder's next UID as this run knows it (SELECT's UIDNEXT, then
  // past each APPENDUID range): an APPENDUID range that starts above it
  // reveals UIDs that appeared in between (the user's new mail, or a dead
  // run's batch landing late: the gap step below tells them apart).
  std::optional<std::uint32_t> expected_next = new_uidnext;
  // Each batch is journaled before it is sent (late_copies.hpp); the entry
  // goes with its record_batch, or when the server refuses the batch.
  auto journal_sent = [&](std::span<const std::uint32_t> uids) {
    return state.journal_batch(user, mapping.legacy_name, uids, expected_next.value_or(0),
                               unix_now());
  };
  auto refused = [&](std::int64_t jid) {
    const std::int64_t one[1] = {jid};
    state.drop_journal(one);
  };
  // Legacy UIDs found on the new server by the gap step, so not sent again.
  std::set<std::uint32_t> found_late;
  std::optional<std::pair<std::uint32_t, std::uint32_t>> gap;  // new UIDs [first, last]

  // Records messages the new server accepted (r holds its answer) and settles
  // the legacy UIDs `settled` (the messages and those of their batch that
  // vanished from legacy); `jid` is the batch's journal entry.
  auto record = [&](std::span<message* const> done, std::span<const std::uint32_t> settled,
                    std::int64_t jid) {
    std::vector<std::uint32_t> new_uids;
    std::optional<imap::appenduid_data> appenduid;
    if (r.code) appenduid = imap::decode_appenduid(*r.code);
    if (appenduid)
      if (auto set = imap::parse_sequence_set(appenduid->uids))
        if (auto uids = imap::expand_sequence_set(*set, 0, done.size() + 1))
          new_uids = std::move(*uids);
    if (appenduid && new_uids.size() != done.size()) {
      report.errors.push_back(mapping.legacy_name + ": APPENDUID " + appenduid->uids +
                              " does not name " + std::to_string(done.size()) +
                              " UIDs; the batch is recorded without them");
      new_uids.clear();
    }
    std::vector<message_record> recs;
    recs.reserve(done.size());
    std::uint64_t bytes = 0;
    for (std::size_t i = 0; i < done.size(); ++i) {
      message_record rec;
      rec.legacy_uid = done[i]->uid;
      rec.new_uid = new_uids.empty() ? 0 : new_uids[i];
      rec.flags = flags_text(done[i]->flags);
      st.last_new_uid = std::max(st.last_new_uid, rec.new_uid);
      bytes += done[i]->body.size();
      recs.push_back(std::move(rec));
    }
    if (!new_uids.empty() && expected_next) {
      const auto [lo, hi] = std::minmax_element(new_uids.begin(), new_uids.end());
      if (*lo > *expected_next && !journal.empty()) gap.emplace(*expected_next, *lo - 1);
      expected_next = std::max(*expected_next, *hi + 1);
    }
    settle(settled);
    const std::int64_t resolved[1] = {jid};
    state.record_batch(user, st, recs, resolved);
    dropped(settled, done);
    report.copied += done.size();
    report.bytes += bytes;
    if (opts.on_copied) opts.on_copied(done.size(), bytes);
  };
  auto account_only = [&](std::span<const std::uint32_t> settled) {
    settle(settled);
    state.record_batch(user, st, std::span<const message_record>{});
    dropped(settled, {});
  };
  // The gap step: UIDs that appeared between this run's appends while an
  // earlier run's batch was unaccounted for. Copies found are recorded (and
  // not sent again), our second copies removed, the user's mail left alone.
  auto check_gap = [&]() -> awaitable<std::error_code> {
    const auto [first, last] = *std::exchange(gap, std::nullopt);
    std::vector<shape> left;
    for (auto& p : todo)
      if (unsettled.contains(p.uid)) left.push_back({p.uid, p.size, p.when});
    late_outcome lo;
    const std::string set = std::to_string(first) + ":" + std::to_string(last);
    if (auto ec = co_await check_late_copies(legacy, fresh, state, user, mapping.legacy_name, set,
                                             first - 1, left, recorded, journal, lo, report, r))
      co_return ec;
    std::vector<std::uint32_t> found;
    for (auto& rec : lo.records) {
      found.push_back(rec.legacy_uid);
      found_late.insert(rec.legacy_uid);
      recorded.insert(rec.legacy_uid);
    }
    settle(found);
    state.record_batch(user, st, lo.records, lo.resolved);
    report.reconciled += lo.records.size();
    resolved_in(lo.resolved);
    co_return std::error_code{};
  };

  // The work in order: batches (at most max_messages and batch_bytes) and, alone,
  // messages larger than batch_bytes, which are streamed.
  struct unit {
    std::size_t begin, end;
    bool streamed;
  };
  std::vector<unit> units;
  for (std::size_t next = 0; next < todo.size();) {
    if (todo[next].size > opts.batch_bytes) {
      units.push_back({next, next + 1, true});
      ++next;
      continue;
    }
    std::size_t end = next;
    std::uint64_t bytes = 0;
    while (end < todo.size() && end - next < max_messages &&
           bytes + todo[end].size <= opts.batch_bytes) {
      bytes += todo[end].size;
      ++end;
    }
    units.push_back({next, end, false});
    next = end;
  }
  auto fetch_command = [&](const unit& u) {
    std::vector<std::uint32_t> uids;
    for (std::size_t i = u.begin; i < u.end; ++i) uids.push_back(todo[i].uid);
    return "UID FETCH " + imap::format_sequence_set(uids) + " (UID FLAGS INTERNALDATE BODY.PEEK[])";
  };

  // Pipelined: while a batch is appended on the new server, the next one is
  // fetched from legacy (so up to two batches are in memory).
  auto ex = co_await boost::asio::this_coro::executor;
  std::shared_ptr<prefetch> ahead;
  std::error_code final_ec;
  for (std::size_t ui = 0; ui < units.size(); ++ui) {
    const unit& u = units[ui];
    if (u.streamed) {
      const pending& p = todo[u.begin];
      const std::uint32_t uid[1] = {p.uid};
      if (found_late.contains(p.uid)) continue;  // settled by the gap step
      const std::int64_t jid = journal_sent(uid);
      auto so = co_await stream_message(legacy, fresh, mapping.new_name, p.uid, p.flags,
                                        p.internaldate, r);
      if (!so.appended && !so.ec) refused(jid);  // nothing sent, or refused: cannot land
      if (so.appended && r.status == imap::status::ok) {
        message m;
        m.uid = p.uid;
        m.flags = p.flags;
        message* one[1] = {&m};
        record(one, uid, jid);
        report.bytes += so.size;  // record() counted the (empty) buffered body
        if (opts.on_copied) opts.on_copied(0, so.size);
      } else if (so.ec) {
      } else if (so.fetch_refused) {
        final_ec = fail(copy_errc::fetch_failed,
                        "UID FETCH " + std::to_string(p.uid) + ": " + so.fetch_text);
        goto finish;
      } else if (so.vanished) {
        ++report.skipped;
        account_only(uid);
      } else if (transient_refusal(r)) {
        final_ec = fail(copy_errc::append_refused_transient, "APPEND: " + r.text);
        goto finish;
      } else {
        ++report.failed;
        report.errors.push_back(mapping.legacy_name + ": legacy UID " + std::to_string(p.uid) +
                                " refused by the new server: " + r.text);
        account_only(uid);
      }
      if (so.ec) {
        final_ec = so.ec;
        goto finish;
      }
      if (so.appended && r.status != imap::status::ok) refused(jid);
      if (gap && (final_ec = co_await check_gap())) goto finish;
      continue;
    }

    std::shared_ptr<prefetch> cur = std::move(ahead);
    if (!cur) {
      cur = std::make_shared<prefetch>(ex);
      boost::asio::co_spawn(ex, run_prefetch(legacy, fetch_command(u), cur), boost::asio::detached);
    }
    co_await cur->wait();
    if (ui + 1 < units.size() && !units[ui + 1].streamed) {
      ahead = std::make_shared<prefetch>(ex);
      boost::asio::co_spawn(ex, run_prefetch(legacy, fetch_command(units[ui + 1]), ahead),
                            boost::asio::detached);
    }
    if (cur->ec) {
      final_ec = cur->ec;
      goto finish;
    }
    if (cur->r.status != imap::status::ok) {
      final_ec = fail(copy_errc::fetch_failed, "UID FETCH: " + cur->r.text);
      goto finish;
    }

    std::map<std::uint32_t, message*> by_uid;
    for (auto& [seq, m] : cur->got.by_seq)
      if (m.uid != 0 && m.have_body) by_uid[m.uid] = &m;
    std::vector<message*> ready;
    std::vector<std::uint32_t> unit_uids, vanished;
    for (std::size_t i = u.begin; i < u.end; ++i) {
      unit_uids.push_back(todo[i].uid);
      auto it = by_uid.find(todo[i].uid);
      if (found_late.contains(todo[i].uid)) {
        vanished.push_back(todo[i].uid);  // settled by the gap step: settles with the batch
      } else if (it == by_uid.end()) {
        ++report.skipped;  // expunged on legacy meanwhile
        vanished.push_back(todo[i].uid);
      } else {
        ready.push_back(it->second);
      }
    }
    if (ready.empty()) {
      account_only(unit_uids);
      continue;
    }

    if (multiappend && ready.size() > 1) {
      std::vector<std::uint32_t> sent;
      for (message* m : ready) sent.push_back(m->uid);
      const std::int64_t jid = journal_sent(sent);
      if ((final_ec = co_await append_messages(fresh, mapping.new_name, ready, r))) goto finish;
      if (r.status == imap::status::ok) {
        record(ready, unit_uids, jid);
        if (gap && (final_ec = co_await check_gap())) goto finish;
        continue;
      }
      refused(jid);  // a refused MULTIAPPEND stores nothing (RFC 3502)
      if (transient_refusal(r)) {
        final_ec = fail(copy_errc::append_refused_transient, "APPEND: " + r.text);
        goto finish;
      }
      // Refused as a whole: one at a time, so only the bad message is reported.
    }
    for (std::size_t j = 0; j < ready.size(); ++j) {
      message* m = ready[j];
      // The batch's vanished UIDs settle with its last message.
      std::vector<std::uint32_t> settled{m->uid};
      if (j + 1 == ready.size()) settled.insert(settled.end(), vanished.begin(), vanished.end());
      std::span<message* const> one(&ready[j], 1);
      const std::uint32_t sent[1] = {m->uid};
      const std::int64_t jid = journal_sent(sent);
      if ((final_ec = co_await append_messages(fresh, mapping.new_name, one, r))) goto finish;
      if (r.status == imap::status::ok) {
        record(one, settled, jid);
        if (gap && (final_ec = co_await check_gap())) goto finish;
        continue;
      }
      refused(jid);
      if (transient_refusal(r)) {
        final_ec = fail(copy_errc::append_refused_transient, "APPEND: " + r.text);
        goto finish;
      }
      ++report.failed;
      report.errors.push_back(mapping.legacy_name + ": legacy UID " + std::to_string(m->uid) +
                              " refused by the new server: " + r.text);
      account_only(settled);
    }
  }
finish:
  // A fetch still running holds the legacy client: let it end first.
  if (ahead) co_await ahead->wait();
  co_return final_ec;
}

}  // namespace suction::sync
