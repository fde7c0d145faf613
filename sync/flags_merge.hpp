// Flags between the two copies of a message (DESIGN.md: "the user's work
// wins"): a three-way merge against the flags last agreed, and the content
// signature that matches messages when UIDs cannot (a legacy UIDVALIDITY
// change, messages appended but not recorded before a crash).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace suction::sync {

// Canonical form: system flags spelled as RFC 3501 does (\Seen ...), \Recent
// dropped (no client may set it), keywords kept as sent, duplicates removed
// case-insensitively, sorted. IMAP compares flags case-insensitively.
std::vector<std::string> normalize_flags(std::span<const std::string> flags);
std::string join_flags(std::span<const std::string> normalized);     // "a b c"
std::vector<std::string> split_flags(std::string_view joined);

struct flag_merge {
  std::vector<std::string> add, remove;  // STORE on the new copy
  std::vector<std::string> agreed;       // the new "last agreed": legacy's flags now
  bool changes() const { return !add.empty() || !remove.empty(); }
};

// Per flag: a change on legacy since `base` is carried over only where the new
// copy still has the base value for that flag; whatever the user changed on
// the new server stays as the user left it.
flag_merge merge_flags(std::span<const std::string> base, std::span<const std::string> legacy,
                       std::span<const std::string> fresh);

// What identifies a message's content without its UID: size, INTERNALDATE
// instant and the Message-ID/Date/From/Subject header fields (unfolded,
// names lower-cased). Exact duplicates share a signature, and match by count.
std::string content_signature(std::uint64_t size, std::int64_t internaldate_epoch,
                              std::string_view header_fields);

// Pairs messages with equal signatures, the n-th legacy copy with the n-th new
// one in UID order. Inputs: (uid, signature). Output: (legacy uid, new uid).
std::vector<std::pair<std::uint32_t, std::uint32_t>> match_by_signature(
    std::span<const std::pair<std::uint32_t, std::string>> legacy,
    std::span<const std::pair<std::uint32_t, std::string>> fresh);

}  // namespace suction::sync
