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
#include "sync/folder_brain.hpp"
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

std::int64_t unix_now() { return static_cast<std::int64_t>(std::time(nullptr)); }

// The flag step (issue 4 item 5, "the user's work wins"), before new mail is
// copied: for every copied message, per flag, merge_flags(base = flags last
// agreed, legacy = legacy's flags now, fresh = the new copy's flags now), as
// planned by plan_flag_changes (folder_brain.hpp). Legacy is only read (FETCH
// FLAGS on the EXAMINEd folder); the changes go to the new server as UID STORE
// +FLAGS.SILENT / -FLAGS.SILENT, one command per identical change; the store
// then holds legacy's flags as the new "last agreed". A copy the user deleted
// (its new UID is gone) or moved is not touched, and never copied again either
// (only UIDs above the checkpoint are). Copies recorded without a new UID (no
// UIDPLUS) cannot be addressed: skipped. With CONDSTORE (RFC 7162) and the
// HIGHESTMODSEQ of the last complete run, legacy names only the messages whose
// flags changed since (CHANGEDSINCE); without, every copied message is looked at.
awaitable<std::error_code> sync_flags(imap::client& legacy, imap::client& fresh,
                                      state_store& state, std::string_view user,
                                      const folder_mapping& mapping, const folder_state& st,
                                      folder_copy_report& report, imap::command_result& r) {
  std::vector<message_record> recs = state.messages(user, mapping.legacy_name);
  std::erase_if(recs, [](const message_record& m) { return m.new_uid == 0; });
  if (recs.empty()) co_return std::error_code{};
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
  const flag_plan plan = plan_flag_changes(recs, legacy_flags, flags_by_uid(r));
  for (auto& store : plan.stores) {
    const std::string set = imap::format_sequence_set(store.new_uids);
    bool ok = true;
    for (int add = 1; add >= 0 && ok; --add) {
      const std::string& what = add ? store.add : store.remove;
      if (what.empty()) continue;
      cmd = "UID STORE " + set + (add ? " +FLAGS.SILENT (" : " -FLAGS.SILENT (") + what + ")";
      if (auto ec = co_await fresh.simple(cmd, r)) co_return ec;
      if (r.status != imap::status::ok) {
        report.errors.push_back(mapping.legacy_name + ": new server " + cmd + ": " + r.text);
        ok = false;
      }
    }
    if (!ok) continue;  // not agreed: the next run tries again
    state.update_flags(user, mapping.legacy_name, store.agreed);
    report.flags_updated += store.agreed.size();
  }
  state.update_flags(user, mapping.legacy_name, plan.agreed_only);
  co_return std::error_code{};
}

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
  // Copies this engine recorded are known, whatever the range (a run killed
  // during a gap step left its own batch above the gap).
  const auto known = state.recorded_new_above(user, folder, above);
  std::erase_if(fresh_sigs, [&](const signed_message& m) { return known.contains(m.uid); });
  if (fresh_sigs.empty()) co_return std::error_code{};
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

// The transport of one folder's copy: it talks to both servers, feeds the
// answers to the folder's brain and writes what the brain decides. Stages as
// in folder_brain.hpp; each returns the error that stops the folder, if any.
class folder_transport {
 public:
  folder_transport(imap::client& legacy, imap::client& fresh, state_store& state,
                   std::string_view user, const folder_mapping& mapping, const copy_options& opts,
                   folder_copy_report& report)
      : legacy_(legacy), fresh_(fresh), state_(state), user_(user), mapping_(mapping),
        opts_(opts), report_(report) {}

  awaitable<std::error_code> run() {
    if (auto ec = co_await open_stage()) co_return ec;
    if (brain_->wants_flag_step())
      if (auto ec = co_await sync_flags(legacy_, fresh_, state_, user_, mapping_,
                                        brain_->checkpoint(), report_, r_))
        co_return ec;
    if (!brain_->wants_scan()) co_return std::error_code{};
    if (auto ec = co_await scan_stage()) co_return ec;
    if (auto ec = co_await reconcile_stage()) co_return ec;
    auto ec = co_await copy_stage();
    // A fetch still running holds the legacy client: let it end first.
    if (ahead_) co_await ahead_->wait();
    co_return ec;
  }

  // The finish stage: after a complete run without errors.
  void finish(std::optional<std::uint64_t> legacy_modseq) {
    if (brain_)
      if (auto w = brain_->finish(legacy_modseq)) save(*w);
  }

 private:
  // The one place a checkpoint is written.
  void save(const checkpoint_write& w) {
    if (w.forget_first) state_.forget_folder(user_, mapping_.legacy_name);
    state_.record_batch(user_, w.checkpoint, w.records, w.resolved);
  }

  std::error_code fail(copy_errc e, const std::string& what) {
    report_.errors.push_back(mapping_.legacy_name + ": " + what);
    return make_error_code(e);
  }

  // --- open (and rematch): the new folder SELECTed (CREATEd where it is not
  // there: sync_user creates every planned folder up front, so a run pays no
  // second CREATE per folder), legacy EXAMINEd: read-only, not even \Seen moves.
  awaitable<std::error_code> open_stage() {
    if (auto ec = co_await fresh_.mailbox_command("SELECT", mapping_.new_name, r_)) co_return ec;
    if (r_.status == imap::status::no) {
      if (auto ec = co_await fresh_.mailbox_command("CREATE", mapping_.new_name, r_)) co_return ec;
      if (auto ec = co_await fresh_.mailbox_command("SELECT", mapping_.new_name, r_)) co_return ec;
    }
    if (r_.status != imap::status::ok)
      co_return fail(copy_errc::new_select_failed, "SELECT " + mapping_.new_name + ": " + r_.text);
    const mailbox_view fresh = view_of(r_);
    if (auto ec = co_await legacy_.mailbox_command("EXAMINE", mapping_.legacy_name, r_)) co_return ec;
    if (r_.status != imap::status::ok)
      co_return fail(copy_errc::legacy_examine_failed, "EXAMINE: " + r_.text);
    const mailbox_view legacy = view_of(r_);

    brain_.emplace(mapping_, state_.folder(user_, mapping_.legacy_name),
                   state_.journal(user_, mapping_.legacy_name));
    auto opened = brain_->open(fresh, legacy);
    if (opened.error) co_return fail(*opened.error, opened.error_text);
    if (opened.write) save(*opened.write);
    if (!opened.rematch) co_return std::error_code{};

    // Re-match: signatures of the recorded copies and of every legacy message
    // (only signatures are held, no bodies).
    std::vector<message_record> old = state_.messages(user_, mapping_.legacy_name);
    std::vector<std::uint32_t> uids;
    for (auto& m : old)
      if (m.new_uid != 0) uids.push_back(m.new_uid);
    std::sort(uids.begin(), uids.end());
    std::vector<signed_message> fresh_sigs, legacy_sigs;
    if (!uids.empty())
      if (auto ec = co_await fetch_signatures(fresh_, imap::format_sequence_set(uids), 0,
                                              fresh_sigs, r_))
        co_return ec == copy_errc::fetch_failed
            ? fail(copy_errc::fetch_failed, "UID FETCH (new server, re-match): " + r_.text)
            : ec;
    if (legacy.exists != 0 && !fresh_sigs.empty())
      if (auto ec = co_await fetch_signatures(legacy_, "1:*", 0, legacy_sigs, r_))
        co_return ec == copy_errc::fetch_failed
            ? fail(copy_errc::fetch_failed, "UID FETCH (re-match): " + r_.text)
            : ec;
    auto w = brain_->rematch(old, uid_signatures(legacy_sigs), uid_signatures(fresh_sigs));
    report_.rematched += w.records.size();
    save(w);
    co_return std::error_code{};
  }

  // --- scan: what is new on legacy, with sizes (no bodies yet).
  awaitable<std::error_code> scan_stage() {
    std::vector<pending_message> todo;
    const std::uint32_t above = brain_->checkpoint().last_legacy_uid;
    if (brain_->legacy_news()) {
      std::string scan = "UID FETCH " + std::to_string(above + 1) +
                         ":* (UID RFC822.SIZE FLAGS INTERNALDATE)";
      if (auto ec = co_await legacy_.simple(scan, r_)) co_return ec;
      if (r_.status != imap::status::ok)
        co_return fail(copy_errc::fetch_failed, scan + ": " + r_.text);
      for (auto& u : r_.untagged)
        if (auto f = imap::decode_fetch(u); f && f->uid && *f->uid > above) {
          pending_message p{*f->uid, f->rfc822_size.value_or(0), {}, f->internaldate.value_or(""), 0};
          p.when = instant_of(p.internaldate);
          if (f->flags) p.flags = without_recent(*f->flags);
          todo.push_back(std::move(p));
        }
    }
    // Pending UIDs already in the message map (above the checkpoint): one query.
    std::set<std::uint32_t> recorded;
    if (brain_->had_state() && !todo.empty())
      recorded = state_.recorded_above(user_, mapping_.legacy_name, above);
    brain_->scanned(std::move(todo), std::move(recorded));
    co_return std::error_code{};
  }

  // --- reconcile (issue 4 item 6, late_copies.hpp): when the new folder has
  // UIDs above last_new_uid (its UIDNEXT says so, cheaply) and there is
  // something they could be, the late-copies step pairs, removes our second
  // copies and leaves the user's own alone; last_new_uid moves past them all.
  awaitable<std::error_code> reconcile_stage() {
    if (auto set = brain_->reconcile_set()) {
      late_outcome lo;
      if (auto ec = co_await check_late_copies(
              legacy_, fresh_, state_, user_, mapping_.legacy_name, *set,
              brain_->checkpoint().last_new_uid, brain_->pending_shapes(), brain_->recorded(),
              brain_->journal(), lo, report_, r_))
        co_return ec;
      auto w = brain_->reconciled(lo);
      if (lo.highest_unknown != 0 || !lo.records.empty()) save(w);
      report_.reconciled += lo.records.size();
    }
    // Entries not found by now and old enough will never land.
    if (auto old = brain_->expire_journal(unix_now()); !old.empty()) state_.drop_journal(old);
    if (auto w = brain_->skip_recorded()) save(*w);
    co_return std::error_code{};
  }

  // --- copy
  awaitable<std::error_code> copy_stage() {
    const auto units =
        brain_->plan_units(opts_.batch_messages, opts_.batch_bytes, opts_.recent_since);
    if (opts_.on_scanned) {
      std::uint64_t bytes = 0;
      for (auto& p : brain_->todo()) bytes += p.size;
      opts_.on_scanned(brain_->todo().size(), bytes);
    }
    multiappend_ = fresh_.capabilities().has("MULTIAPPEND");
    for (std::size_t ui = 0; ui < units.size(); ++ui) {
      const copy_unit* next = ui + 1 < units.size() ? &units[ui + 1] : nullptr;
      auto ec = units[ui].streamed ? co_await copy_streamed(units[ui].uids.front())
                                   : co_await copy_batch(units[ui], next);
      if (ec) co_return ec;
    }
    co_return std::error_code{};
  }

  std::int64_t journal_sent(std::span<const std::uint32_t> uids) {
    return state_.journal_batch(user_, mapping_.legacy_name, uids, brain_->uidnext_seen(),
                                unix_now());
  }
  void journal_refused(std::int64_t id) {
    const std::int64_t one[1] = {id};
    state_.drop_journal(one);
  }

  // Settled without being copied (refused, gone from legacy): out of the
  // progress totals, so a finished folder shows 100 %.
  void dropped(std::span<const std::uint32_t> uids, std::span<const sent_message> copied) {
    if (!opts_.on_dropped) return;
    std::uint64_t n = 0, bytes = 0;
    for (auto u : uids)
      if (std::none_of(copied.begin(), copied.end(), [u](const sent_message& m) { return m.uid == u; }))
        if (auto* p = brain_->pending(u)) {
          ++n;
          bytes += p->size;
        }
    if (n > 0) opts_.on_dropped(n, bytes);
  }

  // The new server accepted `done` (r_ holds its answer): recorded, and the
  // gap step when the brain saw UIDs appear in between.
  awaitable<std::error_code> accepted(std::span<const sent_message> done,
                                      std::span<const std::uint32_t> settled, std::int64_t jid) {
    std::string appenduid;
    if (r_.code)
      if (auto a = imap::decode_appenduid(*r_.code)) appenduid = a->uids;
    auto res = brain_->appended(done, settled, appenduid, jid);
    if (!res.warning.empty()) report_.errors.push_back(res.warning);
    save(res.write);
    dropped(settled, done);
    std::uint64_t bytes = 0;
    for (auto& m : done) bytes += m.bytes;
    report_.copied += done.size();
    report_.bytes += bytes;
    if (opts_.on_copied) opts_.on_copied(done.size(), bytes);
    if (!res.gap) co_return std::error_code{};
    // UIDs that appeared between this run's appends while an earlier run's
    // batch was unaccounted for: copies found are recorded (and not sent
    // again), our second copies removed, the user's mail left alone.
    const auto [first, last] = *res.gap;
    late_outcome lo;
    if (auto ec = co_await check_late_copies(
            legacy_, fresh_, state_, user_, mapping_.legacy_name,
            std::to_string(first) + ":" + std::to_string(last), first - 1,
            brain_->pending_shapes(), brain_->recorded(), brain_->journal(), lo, report_, r_))
      co_return ec;
    save(brain_->found_late(lo));
    report_.reconciled += lo.records.size();
    co_return std::error_code{};
  }

  void refused_alone(std::uint32_t uid, std::span<const std::uint32_t> settled) {
    ++report_.failed;
    report_.errors.push_back(mapping_.legacy_name + ": legacy UID " + std::to_string(uid) +
                             " refused by the new server: " + r_.text);
    save(brain_->accounted(settled));
    dropped(settled, {});
  }

  // One message larger than batch_bytes, streamed FETCH -> APPEND.
  awaitable<std::error_code> copy_streamed(std::uint32_t uid) {
    if (brain_->found(uid)) co_return std::error_code{};  // settled by the gap step
    const pending_message& p = *brain_->pending(uid);
    const std::uint32_t one[1] = {uid};
    const std::int64_t jid = journal_sent(one);
    auto so = co_await stream_message(legacy_, fresh_, mapping_.new_name, p.uid, p.flags,
                                      p.internaldate, r_);
    if (so.appended && r_.status == imap::status::ok) {
      const sent_message m{p.uid, flags_text(p.flags), so.size};
      if (auto ec = co_await accepted({&m, 1}, one, jid)) co_return ec;
      co_return so.ec;  // the FETCH may have failed after the APPEND went through
    }
    if (so.ec) co_return so.ec;  // the APPEND may still land: its journal entry stays
    journal_refused(jid);        // nothing sent, or refused: cannot land
    if (so.fetch_refused)
      co_return fail(copy_errc::fetch_failed, "UID FETCH " + std::to_string(uid) + ": " + so.fetch_text);
    if (so.vanished) {
      ++report_.skipped;
      save(brain_->accounted(one));
      dropped(one, {});
      co_return std::error_code{};
    }
    if (classify_refusal(r_) == refusal::account)
      co_return fail(copy_errc::append_refused_transient, "APPEND: " + r_.text);
    refused_alone(uid, one);
    co_return std::error_code{};
  }

  // A batch: its bodies fetched (the next batch's fetch started meanwhile),
  // MULTIAPPEND, or one APPEND at a time when the server lacks it or refused
  // the batch as a whole (so only the bad message is reported).
  awaitable<std::error_code> copy_batch(const copy_unit& u, const copy_unit* next) {
    auto ex = co_await boost::asio::this_coro::executor;
    std::shared_ptr<prefetch> cur = std::move(ahead_);
    if (!cur) {
      cur = std::make_shared<prefetch>(ex);
      boost::asio::co_spawn(ex, run_prefetch(legacy_, fetch_command(u), cur), boost::asio::detached);
    }
    co_await cur->wait();
    if (next && !next->streamed) {
      ahead_ = std::make_shared<prefetch>(ex);
      boost::asio::co_spawn(ex, run_prefetch(legacy_, fetch_command(*next), ahead_),
                            boost::asio::detached);
    }
    if (cur->ec) co_return cur->ec;
    if (cur->r.status != imap::status::ok)
      co_return fail(copy_errc::fetch_failed, "UID FETCH: " + cur->r.text);

    std::map<std::uint32_t, message*> by_uid;
    for (auto& [seq, m] : cur->got.by_seq)
      if (m.uid != 0 && m.have_body) by_uid[m.uid] = &m;
    std::vector<message*> ready;
    std::vector<std::uint32_t> gone;  // from legacy meanwhile, or found by the gap step
    for (auto uid : u.uids) {
      auto it = by_uid.find(uid);
      if (brain_->found(uid)) {
        gone.push_back(uid);
      } else if (it == by_uid.end()) {
        ++report_.skipped;  // expunged on legacy meanwhile
        gone.push_back(uid);
      } else {
        ready.push_back(it->second);
      }
    }
    if (ready.empty()) {
      save(brain_->accounted(u.uids));
      dropped(u.uids, {});
      co_return std::error_code{};
    }
    if (multiappend_ && ready.size() > 1) {
      std::vector<std::uint32_t> sent;
      for (message* m : ready) sent.push_back(m->uid);
      const std::int64_t jid = journal_sent(sent);
      if (auto ec = co_await append_messages(fresh_, mapping_.new_name, ready, r_)) co_return ec;
      if (r_.status == imap::status::ok) co_return co_await accepted(described(ready), u.uids, jid);
      journal_refused(jid);  // a refused MULTIAPPEND stores nothing (RFC 3502)
      if (classify_refusal(r_) == refusal::account)
        co_return fail(copy_errc::append_refused_transient, "APPEND: " + r_.text);
    }
    for (std::size_t j = 0; j < ready.size(); ++j) {
      message* m = ready[j];
      // The batch's gone UIDs settle with its last message.
      std::vector<std::uint32_t> settled{m->uid};
      if (j + 1 == ready.size()) settled.insert(settled.end(), gone.begin(), gone.end());
      std::span<message* const> one(&ready[j], 1);
      const std::uint32_t sent[1] = {m->uid};
      const std::int64_t jid = journal_sent(sent);
      if (auto ec = co_await append_messages(fresh_, mapping_.new_name, one, r_)) co_return ec;
      if (r_.status == imap::status::ok) {
        if (auto ec = co_await accepted(described(one), settled, jid)) co_return ec;
        continue;
      }
      journal_refused(jid);
      if (classify_refusal(r_) == refusal::account)
        co_return fail(copy_errc::append_refused_transient, "APPEND: " + r_.text);
      refused_alone(m->uid, settled);
    }
    co_return std::error_code{};
  }

  static std::vector<sent_message> described(std::span<message* const> msgs) {
    std::vector<sent_message> out;
    out.reserve(msgs.size());
    for (message* m : msgs) out.push_back({m->uid, flags_text(m->flags), m->body.size()});
    return out;
  }

  static std::string fetch_command(const copy_unit& u) {
    return "UID FETCH " + imap::format_sequence_set(u.uids) + " (UID FLAGS INTERNALDATE BODY.PEEK[])";
  }

  imap::client& legacy_;
  imap::client& fresh_;
  state_store& state_;
  std::string_view user_;
  const folder_mapping& mapping_;
  const copy_options& opts_;
  folder_copy_report& report_;
  imap::command_result r_;
  std::optional<folder_brain> brain_;
  std::shared_ptr<prefetch> ahead_;  // the next batch's fetch, running
  bool multiappend_ = false;
};

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
  // A parent without messages is only created.
  if (!mapping.selectable) {
    imap::command_result r;
    co_return co_await fresh.mailbox_command("CREATE", mapping.new_name, r);
  }
  folder_transport t(legacy, fresh, state, user, mapping, opts, report);
  auto ec = co_await t.run();
  if (!ec && report.errors.empty()) t.finish(opts.legacy_modseq);
  co_return ec;
}

}  // namespace suction::sync
