#include "sync/late_copies.hpp"

#include <algorithm>
#include <map>
#include <set>

namespace suction::sync {

namespace {

// One journaled, recorded legacy message: it may have one late second copy.
struct slot {
  std::int64_t entry = 0;
  std::uint32_t from_uid = 0;  // the entry's uidnext_seen
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
  // Rule 2's budget: one slot per journaled legacy message that is recorded.
  std::map<std::string_view, std::vector<slot>> slots;
  for (auto& e : journal)
    for (auto lu : e.legacy_uids)
      if (auto it = by_uid.find(lu); it != by_uid.end() && it->second->recorded)
        slots[it->second->signature].push_back({e.id, e.uidnext_seen, false});

  std::set<std::int64_t> resolved;
  // Rule 1 also resolves the entries that held the paired message, when the
  // copy is where that entry's batch could land.
  auto resolve_holders = [&](std::uint32_t legacy_uid, std::uint32_t new_uid) {
    for (auto& e : journal)
      if (new_uid >= e.uidnext_seen &&
          std::find(e.legacy_uids.begin(), e.legacy_uids.end(), legacy_uid) != e.legacy_uids.end())
        resolved.insert(e.id);
  };
  for (auto& [sig, fresh] : copies) {
    std::size_t i = 0;
    if (auto p = pending.find(sig); p != pending.end())
      for (; i < fresh.size() && i < p->second.size(); ++i) {
        plan.record.emplace_back(p->second[i], fresh[i]);
        resolve_holders(p->second[i], fresh[i]);
      }
    auto s = slots.find(sig);
    for (; i < fresh.size(); ++i) {
      slot* free_slot = nullptr;
      if (s != slots.end())
        for (auto& sl : s->second)
          if (!sl.used && fresh[i] >= sl.from_uid) {
            free_slot = &sl;
            break;
          }
      if (free_slot) {
        free_slot->used = true;
        resolved.insert(free_slot->entry);
        plan.remove.push_back(fresh[i]);
      } else {
        plan.users_own.push_back(fresh[i]);
      }
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
