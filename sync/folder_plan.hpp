// The folder plan: which legacy folder goes to which folder on the new server.
// Pure logic over the two servers' LIST answers and the configured rules; the engine
// does the I/O (LIST, LSUB, NAMESPACE, CREATE, SUBSCRIBE) around it. The same input
// always gives the same plan, so a re-run maps every folder where the last run did.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "imap/response.hpp"

namespace suction::sync {

// One legacy or new-server mailbox, as LIST (and LSUB) describe it.
struct mailbox_info {
  std::string name;                      // UTF-8 (mUTF-7 decoded), full name with the prefix
  std::optional<char> separator;         // nullopt: flat (NIL)
  std::vector<std::string> attributes;   // \Noselect, \HasChildren, \Sent, ...
  // On the legacy server: LSUB lists it. A name LSUB lists and LIST does not is given
  // with the attribute \NonExistent (as LIST-EXTENDED would say).
  bool subscribed = false;

  bool operator==(const mailbox_info&) const = default;
};

// The personal namespace (NAMESPACE, or LIST "" "" when the server lacks it).
struct namespace_info {
  std::string prefix;             // UTF-8, e.g. "INBOX." (Courier) or "" (Dovecot)
  std::optional<char> separator;  // nullopt: flat namespace, no hierarchy

  bool operator==(const namespace_info&) const = default;
};

// [folders] from the config. Patterns are ECMAScript regexes, searched (not anchored:
// write ^ and $) in a legacy name's "rule form": the name without the legacy prefix,
// components joined with '/' whatever the legacy separator ("INBOX.Sent Items" on
// Courier -> "Sent Items", "INBOX.Projects.2024" -> "Projects/2024"), so one rule
// set fits every legacy server. They see UTF-8 bytes and are case-sensitive.
struct folder_rules {
  // First match wins; the first occurrence of the match is replaced ($1 ... work) and
  // '/' in the result makes hierarchy. Beats special-use; children follow. A parent a
  // rename invents ("Old/Deleted") is not planned: CREATE makes missing superiors.
  std::vector<std::pair<std::string, std::string>> rename;
  // A match leaves out the folder and everything below it.
  std::vector<std::string> exclude;
};

enum class special_use : std::uint8_t { none, sent, trash, drafts, junk, archive };

struct folder_mapping {
  std::string legacy_name;  // UTF-8, as on legacy
  std::string new_name;     // UTF-8, as to create (or find) on the new server
  // What the folder is for: the legacy RFC 6154 attribute or well-known name, or the
  // new server's special-use folder a rename sent it into.
  special_use use = special_use::none;
  // false: a \Noselect or unlisted parent on legacy. CREATE it anyway (as a plain
  // folder, even where the new server would make parents implicitly: issue 4 wants
  // them to exist afterwards) and copy nothing.
  bool selectable = true;
  bool subscribe = false;  // subscribed on legacy
  std::string note;        // why the name is not simply translated, for the report

  bool operator==(const folder_mapping&) const = default;
};

struct folder_plan {
  // INBOX first; then the folders that go into the new server's special-use folders
  // (which exist already), by use; then the rest by new name, parents before children.
  // Two entries share a new_name only when both go into one special-use folder.
  std::vector<folder_mapping> folders;
  // Subscribed on legacy but not there (LSUB without LIST): SUBSCRIBE, create nothing.
  std::vector<folder_mapping> subscribe_only;
  std::vector<std::string> excluded;  // legacy names left out by exclude rules
  // Not errors, for the report: merges into one special-use folder, names taken by
  // another folder (suffixed " (2)"), names outside the personal namespace. Who keeps a
  // contested name: INBOX and the special-use folders, then parents before children,
  // then at one depth a folder whose name needed no rename or replacement, then the
  // lower legacy name in byte order.
  std::vector<std::string> problems;

  bool operator==(const folder_plan&) const = default;
};

// Throws std::invalid_argument for a rule that is not a valid regex (config/ checks
// them at start-up, so here that is a bug).
folder_plan plan_folders(const std::vector<mailbox_info>& legacy, const namespace_info& legacy_ns,
                         const std::vector<mailbox_info>& fresh, const namespace_info& new_ns,
                         const folder_rules& rules);

// LIST and LSUB answers -> mailbox_info, names decoded from modified UTF-7 (as sent
// when `utf8_names`, i.e. UTF8=ACCEPT is enabled, or when a server sends raw UTF-8
// against RFC 3501). A LIST entry with \Subscribed (LIST-EXTENDED) counts as
// subscribed; an LSUB name LIST lacks comes back with \NonExistent.
std::vector<mailbox_info> mailboxes_from(const std::vector<imap::list_data>& list,
                                         const std::vector<imap::list_data>& lsub,
                                         bool utf8_names = false);

// The first personal namespace of a NAMESPACE answer, its prefix decoded; nullopt
// when there is none (then ask LIST "" "").
std::optional<namespace_info> personal_namespace(const imap::namespace_data& ns,
                                                 bool utf8_names = false);

const char* to_string(special_use use);  // "sent", ..., "none"

}  // namespace suction::sync
