#include "sync/folder_brain.hpp"

#include <algorithm>

#include "imap/response.hpp"
#include "imap/sequence_set.hpp"
#include "sync/flags_merge.hpp"

namespace suction::sync {

mailbox_view view_of(const imap::command_result& r) {
  mailbox_view v;
  for (auto& u : r.untagged) {
    if (auto x = imap::decode_uidvalidity(u)) v.uidvalidity = *x;
    if (auto x = imap::decode_uidnext(u)) v.uidnext = *x;
    if (u.keyword == "EXISTS" && u.number) v.exists = *u.number;
  }
  return v;
}

refusal classify_refusal(const imap::command_result& r) {
  if (!r.code) return refusal::message;
  for (std::string_view n : {"OVERQUOTA", "UNAVAILABLE", "INUSE", "SERVERBUG"})
    if (r.code->name == n) return refusal::account;
  return refusal::message;
}

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

flag_plan plan_flag_changes(std::span<const message_record> records,
                            const std::map<std::uint32_t, std::vector<std::string>>& legacy_flags,
                            const std::map<std::uint32_t, std::vector<std::string>>& fresh_flags) {
  flag_plan plan;
  // Identical changes grouped: (add, remove) -> one STORE pair.
  std::map<std::pair<std::string, std::string>, flag_store> groups;
  for (auto& m : records) {
    auto l = legacy_flags.find(m.legacy_uid);
    auto n = fresh_flags.find(m.new_uid);
    if (l == legacy_flags.end() || n == fresh_flags.end()) continue;  // gone on one side
    std::vector<std::string> base = split_flags(m.flags);
    flag_merge fm = merge_flags(base, l->second, n->second);
    std::string agreed = join_flags(fm.agreed);
    if (fm.changes()) {
      auto key = std::make_pair(join_flags(fm.add), join_flags(fm.remove));
      flag_store& g = groups[key];
      g.add = key.first;
      g.remove = key.second;
      g.new_uids.push_back(m.new_uid);
      g.agreed.emplace_back(m.legacy_uid, std::move(agreed));
    } else if (agreed != join_flags(base)) {  // base is normalized by split_flags
      plan.agreed_only.emplace_back(m.legacy_uid, std::move(agreed));
    }
  }
  for (auto& [key, g] : groups) {
    std::sort(g.new_uids.begin(), g.new_uids.end());
    plan.stores.push_back(std::move(g));
  }
  return plan;
}

std::string_view to_string(folder_check c) {
  switch (c) {
    case folder_check::unchanged: return "unchanged";
    case folder_check::no_status: return "no_status";
    case folder_check::no_checkpoint: return "no_checkpoint";
    case folder_check::no_condstore: return "no_condstore";
    case folder_check::uidvalidity_changed: return "uidvalidity_changed";
    case folder_check::new_mail: return "new_mail";
    case folder_check::flags_changed: return "flags_changed";
    case folder_check::renamed: return "renamed";
    case folder_check::journal_open: return "journal_open";
  }
  return "unknown";
}

folder_check check_folder(const std::optional<imap::status_data>& st,
                          const std::optional<folder_state>& cp, bool condstore,
                          const folder_mapping& m, bool journaled) {
  if (!st) return folder_check::no_status;
  if (!cp) return folder_check::no_checkpoint;
  if (journaled) return folder_check::journal_open;
  if (cp->new_name != m.new_name || cp->new_uidvalidity == 0) return folder_check::renamed;
  if (!st->uidvalidity || *st->uidvalidity != cp->legacy_uidvalidity)
    return folder_check::uidvalidity_changed;
  if (!st->uidnext || *st->uidnext > cp->last_legacy_uid + 1ull) return folder_check::new_mail;
  if (!condstore || !st->highestmodseq || *st->highestmodseq == 0) return folder_check::no_condstore;
  if (cp->highest_modseq != *st->highestmodseq) return folder_check::flags_changed;
  return folder_check::unchanged;
}

folder_brain::folder_brain(folder_mapping mapping, std::optional<folder_state> saved,
                           std::vector<journal_entry> journal)
    : mapping_(std::move(mapping)), journal_(std::move(journal)) {
  if (saved) {
    st_ = *saved;
    had_state_ = true;
  }
}

checkpoint_write folder_brain::write(std::vector<message_record> records,
                                     std::vector<std::int64_t> resolved) const {
  checkpoint_write w;
  w.records = std::move(records);
  w.resolved = std::move(resolved);
  w.checkpoint = st_;
  return w;
}

folder_brain::opened folder_brain::open(const mailbox_view& fresh, const mailbox_view& legacy) {
  fresh_ = fresh;
  legacy_ = legacy;
  expected_next_ = fresh.uidnext;
  opened out;
  if (!had_state_) {
    st_.legacy_name = mapping_.legacy_name;
    st_.legacy_uidvalidity = legacy.uidvalidity;
    st_.new_name = mapping_.new_name;
    st_.new_uidvalidity = fresh.uidvalidity;
    out.write = write();
    return out;
  }
  if (st_.new_uidvalidity != 0 && st_.new_uidvalidity != fresh.uidvalidity) {
    out.error = copy_errc::new_uidvalidity_changed;
    out.error_text = "new UIDVALIDITY " + std::to_string(fresh.uidvalidity) + " != stored " +
                     std::to_string(st_.new_uidvalidity) + ": nothing copied";
    return out;
  }
  if (st_.legacy_uidvalidity != legacy.uidvalidity) {
    out.rematch = true;
  } else if (st_.new_uidvalidity == 0 || st_.new_name != mapping_.new_name) {
    st_.new_uidvalidity = fresh.uidvalidity;
    st_.new_name = mapping_.new_name;
    out.write = write();
  }
  return out;
}

// Re-matching after a legacy UIDVALIDITY change (issue 4 item 7): the old
// legacy UIDs mean nothing now, but the new copies they were mapped to are
// still there. Every legacy message (new UIDVALIDITY) pairs with the new copies
// recorded for the folder by content signature (exact duplicates by count);
// the folder's state is replaced by those pairs. The checkpoint covers only the
// legacy UIDs matched from the bottom up; matched ones above it are skipped
// through their records, unmatched ones copied normally. Copies recorded with
// new UID 0 (no UIDPLUS) cannot be fetched: their messages are copied again.
checkpoint_write folder_brain::rematch(
    std::span<const message_record> old,
    std::span<const std::pair<std::uint32_t, std::string>> legacy_sigs,
    std::span<const std::pair<std::uint32_t, std::string>> fresh_sigs) {
  std::map<std::uint32_t, std::string> agreed;  // new uid -> flags last agreed
  for (auto& m : old)
    if (m.new_uid != 0) agreed.emplace(m.new_uid, m.flags);
  auto pairs = match_by_signature({legacy_sigs.begin(), legacy_sigs.end()},
                                  {fresh_sigs.begin(), fresh_sigs.end()});
  std::sort(pairs.begin(), pairs.end());
  folder_state next;
  next.legacy_name = mapping_.legacy_name;
  next.legacy_uidvalidity = legacy_.uidvalidity;
  next.new_name = mapping_.new_name;
  next.new_uidvalidity = fresh_.uidvalidity;
  next.last_new_uid = st_.last_new_uid;
  std::size_t prefix = 0;  // legacy_sigs is in UID order, pairs too
  while (prefix < pairs.size() && prefix < legacy_sigs.size() &&
         pairs[prefix].first == legacy_sigs[prefix].first)
    ++prefix;
  if (prefix > 0) next.last_legacy_uid = pairs[prefix - 1].first;
  std::vector<message_record> recs;
  recs.reserve(pairs.size());
  for (auto& [lu, nu] : pairs) {
    recs.push_back({lu, nu, agreed[nu]});
    next.last_new_uid = std::max(next.last_new_uid, nu);
  }
  st_ = next;
  // A kill between forgetting and recording leaves no state for the folder,
  // and the next run's crash reconciliation (everything in the new folder is
  // then above last_new_uid 0) pairs the copies again.
  checkpoint_write w = write(std::move(recs));
  w.forget_first = true;
  return w;
}

bool folder_brain::wants_flag_step() const {
  return had_state_ && legacy_.exists != 0 && st_.last_legacy_uid > 0;
}

bool folder_brain::legacy_news() const {
  return !(legacy_.uidnext && *legacy_.uidnext <= st_.last_legacy_uid + 1ull);
}

bool folder_brain::wants_scan() const {
  return legacy_.exists != 0 && (legacy_news() || !journal_.empty());
}

void folder_brain::scanned(std::vector<pending_message> todo,
                           std::set<std::uint32_t> recorded_above) {
  std::erase_if(todo, [&](const pending_message& p) { return p.uid <= st_.last_legacy_uid; });
  std::sort(todo.begin(), todo.end(), [](auto& a, auto& b) { return a.uid < b.uid; });
  todo.erase(std::unique(todo.begin(), todo.end(), [](auto& a, auto& b) { return a.uid == b.uid; }),
             todo.end());
  todo_ = std::move(todo);
  recorded_ = std::move(recorded_above);
  scan_top_ = todo_.empty() ? 0 : todo_.back().uid;
}

std::optional<std::string> folder_brain::reconcile_set() const {
  if (fresh_.exists == 0 || (todo_.empty() && journal_.empty())) return std::nullopt;
  if (fresh_.uidnext && *fresh_.uidnext <= st_.last_new_uid + 1ull) return std::nullopt;
  return std::to_string(st_.last_new_uid + 1) + ":*";
}

std::vector<shape> folder_brain::pending_shapes() const {
  std::vector<shape> out;
  for (auto& p : todo_)
    if (!copying_ || unsettled_.contains(p.uid)) out.push_back({p.uid, p.size, p.when});
  return out;
}

void folder_brain::drop_resolved(std::span<const std::int64_t> ids) {
  std::erase_if(journal_, [&](const journal_entry& e) {
    return std::find(ids.begin(), ids.end(), e.id) != ids.end();
  });
}

checkpoint_write folder_brain::reconciled(const late_outcome& lo) {
  for (auto& rec : lo.records) recorded_.insert(rec.legacy_uid);
  // The checkpoint moves over the matched legacy UIDs that follow it without a gap.
  std::size_t prefix = 0;
  while (prefix < lo.records.size() && prefix < todo_.size() &&
         lo.records[prefix].legacy_uid == todo_[prefix].uid)
    ++prefix;
  if (prefix > 0) st_.last_legacy_uid = lo.records[prefix - 1].legacy_uid;
  st_.last_new_uid = std::max(st_.last_new_uid, lo.highest_unknown);
  if (!lo.records.empty()) had_state_ = true;
  drop_resolved(lo.resolved);
  return write(lo.records, lo.resolved);
}

std::vector<std::int64_t> folder_brain::expire_journal(std::int64_t now) {
  auto old = expired_entries(journal_, {}, now);
  drop_resolved(old);
  return old;
}

std::optional<checkpoint_write> folder_brain::skip_recorded() {
  // What is recorded above the checkpoint (found just now, by an earlier
  // re-match or reconciliation that could not move it over them, or copied
  // first by an interrupted recent-first run) counts as settled.
  if (had_state_)
    std::erase_if(todo_, [&](const pending_message& p) {
      return p.uid <= st_.last_legacy_uid || recorded_.contains(p.uid);
    });
  unsettled_.clear();
  for (auto& p : todo_) unsettled_.insert(p.uid);
  copying_ = true;
  if (todo_.empty() && scan_top_ > st_.last_legacy_uid) {
    // Everything above the checkpoint was recorded already: it moves over it,
    // so the no-change skip and the flag step cover those messages again.
    settle({});
    return write();
  }
  return std::nullopt;
}

const pending_message* folder_brain::pending(std::uint32_t uid) const {
  auto it = std::lower_bound(todo_.begin(), todo_.end(), uid,
                             [](const pending_message& p, std::uint32_t u) { return p.uid < u; });
  if (it != todo_.end() && it->uid == uid) return &*it;
  for (auto& p : todo_)  // after plan_units' recent-first reordering
    if (p.uid == uid) return &p;
  return nullptr;
}

std::vector<copy_unit> folder_brain::plan_units(std::size_t batch_messages,
                                                std::uint64_t batch_bytes,
                                                std::int64_t recent_since) {
  // Recent first (issue 4 item 9, for INBOX): the messages of the last days,
  // newest INTERNALDATE first, then the rest in UID order.
  if (recent_since != 0) {
    auto old_end = std::stable_partition(todo_.begin(), todo_.end(), [&](const pending_message& p) {
      return p.when >= recent_since;
    });
    std::sort(todo_.begin(), old_end, [](const pending_message& a, const pending_message& b) {
      return a.when != b.when ? a.when > b.when : a.uid > b.uid;
    });
  }
  const std::size_t max_messages = std::max<std::size_t>(1, batch_messages);
  std::vector<copy_unit> units;
  for (std::size_t next = 0; next < todo_.size();) {
    if (todo_[next].size > batch_bytes) {
      units.push_back({{todo_[next].uid}, true});
      ++next;
      continue;
    }
    copy_unit u;
    std::uint64_t bytes = 0;
    while (next < todo_.size() && u.uids.size() < max_messages &&
           bytes + todo_[next].size <= batch_bytes) {
      bytes += todo_[next].size;
      u.uids.push_back(todo_[next].uid);
      ++next;
    }
    if (u.uids.empty()) {  // cannot happen (size <= batch_bytes), but never loop forever
      u.uids.push_back(todo_[next].uid);
      ++next;
    }
    units.push_back(std::move(u));
  }
  return units;
}

void folder_brain::settle(std::span<const std::uint32_t> uids) {
  for (auto u : uids) unsettled_.erase(u);
  const std::uint32_t covered = unsettled_.empty() ? scan_top_ : *unsettled_.begin() - 1;
  st_.last_legacy_uid = std::max(st_.last_legacy_uid, covered);
}

folder_brain::appended_result folder_brain::appended(std::span<const sent_message> done,
                                                     std::span<const std::uint32_t> settled,
                                                     std::string_view appenduid,
                                                     std::int64_t journal_id) {
  appended_result out;
  std::vector<std::uint32_t> new_uids;
  if (!appenduid.empty())
    if (auto set = imap::parse_sequence_set(appenduid))
      if (auto uids = imap::expand_sequence_set(*set, 0, done.size() + 1)) new_uids = std::move(*uids);
  if (!appenduid.empty() && new_uids.size() != done.size()) {
    out.warning = mapping_.legacy_name + ": APPENDUID " + std::string(appenduid) +
                  " does not name " + std::to_string(done.size()) +
                  " UIDs; the batch is recorded without them";
    new_uids.clear();
  }
  std::vector<message_record> recs;
  recs.reserve(done.size());
  for (std::size_t i = 0; i < done.size(); ++i) {
    recs.push_back({done[i].uid, new_uids.empty() ? 0 : new_uids[i], done[i].flags});
    recorded_.insert(done[i].uid);
  }
  if (!new_uids.empty()) {
    const auto [lo, hi] = std::minmax_element(new_uids.begin(), new_uids.end());
    // UIDs that appeared between this run's appends: the user's new mail, or
    // an earlier run's batch landing late (only then worth a look). Until the
    // gap step is done, last_new_uid stays below the gap, so a run killed
    // meanwhile looks at it again (found_late moves it on).
    if (expected_next_ && *lo > *expected_next_ && !journal_.empty()) {
      out.gap.emplace(*expected_next_, *lo - 1);
      st_.last_new_uid = std::max(st_.last_new_uid, *expected_next_ - 1);
      held_new_uid_ = std::max(held_new_uid_, *hi);
    } else {
      st_.last_new_uid = std::max(st_.last_new_uid, *hi);
    }
    if (expected_next_) expected_next_ = std::max(*expected_next_, *hi + 1);
  }
  settle(settled);
  out.write = write(std::move(recs), {journal_id});
  return out;
}

checkpoint_write folder_brain::accounted(std::span<const std::uint32_t> settled) {
  settle(settled);
  return write();
}

checkpoint_write folder_brain::found_late(const late_outcome& lo) {
  std::vector<std::uint32_t> found;
  for (auto& rec : lo.records) {
    found.push_back(rec.legacy_uid);
    found_late_.insert(rec.legacy_uid);
    recorded_.insert(rec.legacy_uid);
  }
  settle(found);
  drop_resolved(lo.resolved);
  st_.last_new_uid = std::max({st_.last_new_uid, held_new_uid_, lo.highest_unknown});
  held_new_uid_ = 0;
  return write(lo.records, lo.resolved);
}

std::optional<checkpoint_write> folder_brain::finish(std::optional<std::uint64_t> legacy_modseq) {
  // The HIGHESTMODSEQ seen before this complete run: a later change raises
  // it, so the next run looks again.
  if (!legacy_modseq || *legacy_modseq == 0 || st_.highest_modseq == *legacy_modseq)
    return std::nullopt;
  st_.highest_modseq = *legacy_modseq;
  return write();
}

}  // namespace suction::sync
