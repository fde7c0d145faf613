#include "sync/late_copies.hpp"

#include <algorithm>
#include <map>
#include <set>

namespace suction::sync {

namespace {

// One journaled legacy message of one entry: that entry's batch may bring one
// copy of it, at or above the UIDNEXT the entry was written with.
struct slot {
  std::int64_t entry = 0;
  std::uint32_t from_uid = 0;  // the entry's uidnext_seen
  std::uint32_t legacy_uid = 0;
  bool used = false;
};

}  // namespace

late_copies_plan resolve_late_copies(std::span<const unknown_copy> unknown,
                                     std::span<const legacy_candidate> candidates,
                                     std::span<const journal_entry> journal) {
  late_copies_plan plan;
  // Per signature: the unknown copies and the pending legacy messages, ascending.
  std::map<std::string_view, std::vector<std::uint32_t>> copies, pending;
  for (auto& u : unknown) copies[u.signature].push_back(u.new_uid);
  std::map<std::uint32_t, const legacy_candidate*> by_uid;
  for (auto& c : candidates) {
    by_uid.emplace(c.legacy_uid, &c);
    if (!c.recorded) pending[c.signature].push_back(c.legacy_uid);
  }
  for (auto& [sig, v] : copies) std::sort(v.begin(), v.end());
  for (auto& [sig, v] : pending) {
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
  }
  // Every entry (oldest first) can bring one copy of each of its messages:
  // two dead runs with the same batch in flight can both land.
  std::vector<const journal_entry*> entries;
  for (auto& e : journal) entries.push_back(&e);
  std::sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->id < b->id; });
  std::map<std::string_view, std::vector<slot>> slots;
  for (auto* e : entries)
    for (auto lu : e->legacy_uids)
      if (auto it = by_uid.find(lu); it != by_uid.end())
        slots[it->second->signature].push_back({e->id, e->uidnext_seen, lu, false});

  std::set<std::int64_t> resolved;
  std::set<std::uint32_t> paired;  // legacy UIDs rule 1 gave a copy now
  auto take = [&](std::string_view sig, std::uint32_t new_uid, auto&& fits) -> bool {
    auto s = slots.find(sig);
    if (s == slots.end()) return false;
    for (auto& sl : s->second)
      if (!sl.used && new_uid >= sl.from_uid && fits(sl)) {
        sl.used = true;
        resolved.insert(sl.entry);
        return true;
      }
    return false;
  };
  for (auto& [sig, fresh] : copies) {
    std::size_t i = 0;
    // Rule 1: copies of pending messages. The entry that sent it is found
    // (one entry per copy: another may still bring its own).
    if (auto p = pending.find(sig); p != pending.end())
      for (; i < fresh.size() && i < p->second.size(); ++i) {
        const std::uint32_t lu = p->second[i];
        plan.record.emplace_back(lu, fresh[i]);
        paired.insert(lu);
        take(sig, fresh[i], [&](const slot& sl) { return sl.legacy_uid == lu; });
      }
    // Rule 2: a further copy of a message that has one (recorded before, or
    // paired just now), brought by an entry that held it.
    for (; i < fresh.size(); ++i) {
      const bool ours = take(sig, fresh[i], [&](const slot& sl) {
        return by_uid.at(sl.legacy_uid)->recorded || paired.contains(sl.legacy_uid);
      });
      (ours ? plan.remove : plan.users_own).push_back(fresh[i]);
    }
  }
  std::sort(plan.record.begin(), plan.record.end());
  std::sort(plan.remove.begin(), plan.remove.end());
  std::sort(plan.users_own.begin(), plan.users_own.end());
  plan.resolved.assign(resolved.begin(), resolved.end());
  return plan;
}

std::vector<std::int64_t> expired_entries(std::span<const journal_entry> journal,
                                          std::span<const std::int64_t> resolved,
                                          std::int64_t now) {
  std::vector<std::int64_t> out;
  for (auto& e : journal)
    if (now - e.written_at > kJournalGraceSeconds &&
        std::find(resolved.begin(), resolved.end(), e.id) == resolved.end())
      out.push_back(e.id);
  return out;
}

}  // namespace suction::sync
