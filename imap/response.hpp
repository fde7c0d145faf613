// Typed views of parsed server responses. Each decoder reads a generic
// imap::response and returns std::nullopt when it is not the expected shape.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "imap/capabilities.hpp"
#include "imap/parser.hpp"

namespace suction::imap {

struct fetch_section {
  std::string name;            // upper-case item name: "BODY[]", "BINARY[1]", "RFC822.HEADER"
  const value* content = nullptr;  // points into the response's data
};

struct fetch_data {
  std::uint32_t seq = 0;
  std::optional<std::uint32_t> uid;
  std::optional<std::vector<std::string>> flags;
  std::optional<std::string> internaldate;
  std::optional<std::uint64_t> rfc822_size;
  std::optional<std::uint64_t> modseq;
  std::vector<fetch_section> sections;  // BODY[...], BINARY[...], RFC822*
  const fetch_section* section(std::string_view name) const;
};

struct list_data {
  std::vector<std::string> attributes;  // as sent, e.g. "\\HasNoChildren"
  std::optional<char> separator;        // nullopt for NIL (flat namespace)
  std::string name;                     // as sent on the wire (modified UTF-7 unless UTF8=ACCEPT)
  bool lsub = false;
  bool has_attribute(std::string_view attr) const;
};

struct status_data {
  std::string mailbox;
  std::optional<std::uint32_t> messages, recent, uidnext, uidvalidity, unseen;
  std::optional<std::uint64_t> highestmodseq, size;
};

struct esearch_data {
  std::string tag;  // the command it answers, if given
  bool uid = false;
  std::optional<std::uint32_t> min, max, count;
  std::string all;  // sequence set
  std::optional<std::uint64_t> modseq;
};

struct search_data {
  std::vector<std::uint32_t> numbers;
  std::optional<std::uint64_t> modseq;
};

struct namespace_entry {
  std::string prefix;
  std::optional<char> separator;
};

struct namespace_data {
  std::vector<namespace_entry> personal, other, shared;
};

struct vanished_data {
  bool earlier = false;
  std::string uids;  // sequence set
};

struct appenduid_data {
  std::uint32_t uidvalidity = 0;
  std::string uids;  // one UID, or a set for MULTIAPPEND
};

struct copyuid_data {
  std::uint32_t uidvalidity = 0;
  std::string source_uids, dest_uids;
};

std::optional<fetch_data> decode_fetch(const response& r);
std::optional<list_data> decode_list(const response& r);  // LIST and LSUB
std::optional<status_data> decode_status(const response& r);
std::optional<esearch_data> decode_esearch(const response& r);
std::optional<search_data> decode_search(const response& r);
std::optional<namespace_data> decode_namespace(const response& r);
std::optional<vanished_data> decode_vanished(const response& r);
std::optional<std::vector<std::string>> decode_flags(const response& r);    // * FLAGS (...)
std::optional<std::vector<std::string>> decode_enabled(const response& r);  // * ENABLED ...
std::optional<capability_set> decode_capability(const response& r);  // * CAPABILITY or [CAPABILITY]

// Response codes, from a whole response or from a tagged result's code.
std::optional<appenduid_data> decode_appenduid(const response_code& c);
std::optional<copyuid_data> decode_copyuid(const response_code& c);
std::optional<appenduid_data> decode_appenduid(const response& r);
std::optional<copyuid_data> decode_copyuid(const response& r);
std::optional<std::uint32_t> decode_uidvalidity(const response& r);
std::optional<std::uint32_t> decode_uidnext(const response& r);
std::optional<std::uint64_t> decode_highestmodseq(const response& r);
std::optional<std::vector<std::string>> decode_permanentflags(const response& r);

}  // namespace suction::imap
