#include "sync/folder_plan.hpp"

#include <algorithm>
#include <array>
#include <map>
#include <regex>
#include <set>
#include <stdexcept>
#include <string_view>
#include <tuple>

#include "imap/mutf7.hpp"
#include "imap/utf8.hpp"
#include "imap/value.hpp"

namespace suction::sync {
namespace {

using imap::append_utf8;
using imap::decode_utf8;

// A legacy name without the prefix, split on the legacy separator.
using path_t = std::vector<std::string>;

// Lower case for the scripts the well-known names use: ASCII, Latin-1 and Latin
// Extended-A ("ENTWÜRFE", "WYSŁANE"). Enough to compare folder names with a fixed
// list; not a general case folding (no Unicode tables, no normalization: NFC only).
char32_t to_lower(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if ((c >= 0x100 && c <= 0x12F) || (c >= 0x132 && c <= 0x137) || (c >= 0x14A && c <= 0x177))
    return c | 1;  // upper case even, lower case odd
  if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E)) return c % 2 ? c + 1 : c;
  if (c == 0x178) return 0xFF;  // Ÿ
  return c;
}

std::string fold_case(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const auto cp = decode_utf8(s, i);
    if (cp.size == 0) {
      out += s[i++];
      continue;
    }
    append_utf8(out, to_lower(cp.value));
    i += cp.size;
  }
  return out;
}

// ---------------------------------------------------------------- special-use

constexpr std::array<std::pair<special_use, std::string_view>, 5> use_attributes{{
    {special_use::sent, "\\Sent"},
    {special_use::trash, "\\Trash"},
    {special_use::drafts, "\\Drafts"},
    {special_use::junk, "\\Junk"},
    {special_use::archive, "\\Archive"},
}};

std::string attribute_of(special_use use) {
  for (const auto& [u, attr] : use_attributes)
    if (u == use) return std::string(attr);
  return {};
}

// What clients in several languages (Outlook, Apple Mail, Thunderbird, webmailers)
// have called these folders on servers without SPECIAL-USE.
constexpr std::pair<special_use, std::string_view> well_known_names[] = {
    {special_use::sent, "Sent"}, {special_use::sent, "Sent Items"},
    {special_use::sent, "Sent Messages"}, {special_use::sent, "Sent Mail"},
    {special_use::sent, "Gesendet"}, {special_use::sent, "Gesendete Objekte"},
    {special_use::sent, "Gesendete Elemente"}, {special_use::sent, "Éléments envoyés"},
    {special_use::sent, "Envoyés"}, {special_use::sent, "Messages envoyés"},
    {special_use::sent, "Enviados"}, {special_use::sent, "Elementos enviados"},
    {special_use::sent, "Posta inviata"}, {special_use::sent, "Inviati"},
    {special_use::sent, "Verzonden items"}, {special_use::sent, "Skickat"},
    {special_use::sent, "Wysłane"},
    {special_use::trash, "Trash"}, {special_use::trash, "Deleted Items"},
    {special_use::trash, "Deleted Messages"}, {special_use::trash, "Papierkorb"},
    {special_use::trash, "Gelöschte Objekte"}, {special_use::trash, "Gelöschte Elemente"},
    {special_use::trash, "Corbeille"}, {special_use::trash, "Éléments supprimés"},
    {special_use::trash, "Papelera"}, {special_use::trash, "Elementos eliminados"},
    {special_use::trash, "Cestino"}, {special_use::trash, "Prullenbak"},
    {special_use::trash, "Kosz"},
    {special_use::drafts, "Drafts"}, {special_use::drafts, "Entwürfe"},
    {special_use::drafts, "Brouillons"}, {special_use::drafts, "Borradores"},
    {special_use::drafts, "Bozze"}, {special_use::drafts, "Concepten"},
    {special_use::drafts, "Kopie robocze"},
    {special_use::junk, "Junk"}, {special_use::junk, "Junk E-mail"},
    {special_use::junk, "Junk Email"}, {special_use::junk, "Spam"},
    {special_use::junk, "Bulk Mail"}, {special_use::junk, "Junk-E-Mail"},
    {special_use::junk, "Courrier indésirable"}, {special_use::junk, "Correo no deseado"},
    {special_use::junk, "Posta indesiderata"}, {special_use::junk, "Ongewenste e-mail"},
    {special_use::archive, "Archive"}, {special_use::archive, "Archives"},
    {special_use::archive, "Archiv"}, {special_use::archive, "Archief"},
    {special_use::archive, "Archivio"}, {special_use::archive, "Archivo"},
};

special_use use_by_name(std::string_view name) {
  static const auto folded = [] {
    std::map<std::string, special_use> m;
    for (const auto& [use, n] : well_known_names) m.emplace(fold_case(n), use);
    return m;
  }();
  const auto it = folded.find(fold_case(name));
  return it == folded.end() ? special_use::none : it->second;
}

bool has_attribute(const std::vector<std::string>& attributes, std::string_view attr) {
  return std::ranges::any_of(attributes, [&](const auto& a) { return imap::iequals(a, attr); });
}

// The lowest use among the attributes, so a folder marked twice still gets one answer.
special_use use_by_attribute(const std::vector<std::string>& attributes) {
  for (const auto& [use, attr] : use_attributes)
    if (has_attribute(attributes, attr)) return use;
  return special_use::none;
}

// ---------------------------------------------------------------- names

path_t split(std::string_view s, std::optional<char> sep) {
  path_t out;
  if (!sep) return {std::string(s)};
  for (std::size_t start = 0;;) {
    const auto pos = s.find(*sep, start);
    out.emplace_back(s.substr(start, pos == std::string_view::npos ? pos : pos - start));
    if (pos == std::string_view::npos) return out;
    start = pos + 1;
  }
}

std::string join(path_t::const_iterator begin, path_t::const_iterator end, char sep) {
  std::string out;
  for (auto it = begin; it != end; ++it) {
    if (it != begin) out += sep;
    out += *it;
  }
  return out;
}

std::string join(const path_t& p, char sep) { return join(p.begin(), p.end(), sep); }

// The prefix compared as servers do: its INBOX part case-insensitively, the rest exactly.
std::optional<std::string_view> strip_prefix(std::string_view name, std::string_view prefix) {
  if (name.starts_with(prefix)) return name.substr(prefix.size());
  const bool inbox_prefix = prefix.size() >= 5 && imap::iequals(prefix.substr(0, 5), "INBOX");
  if (inbox_prefix && name.size() >= prefix.size() && imap::iequals(name.substr(0, 5), "INBOX") &&
      name.substr(5, prefix.size() - 5) == prefix.substr(5))
    return name.substr(prefix.size());
  return std::nullopt;
}

// Two names the new server takes for one mailbox: equal, or INBOX in any case.
std::string collision_key(std::string name, std::optional<char> sep) {
  if (name.size() >= 5 && imap::iequals(std::string_view(name).substr(0, 5), "INBOX") &&
      (name.size() == 5 || (sep && name[5] == *sep)))
    name.replace(0, 5, "INBOX");
  return name;
}

// One name component as the new server will take it. Refused bytes become '_' ('-'
// where '_' is the separator): the new separator (it would split the name), control
// characters (C0, DEL, C1) and bytes that are not UTF-8 (no mUTF-7 for them). An
// empty component (a leading, trailing or doubled separator) becomes "_" too, which
// keeps the depth and stays distinct from its parent.
std::string sanitize(std::string_view component, std::optional<char> sep,
                     std::vector<std::string>& notes) {
  const char substitute = sep == '_' ? '-' : '_';
  const std::string sub_text = std::string("'") + substitute + "'";
  if (component.empty()) {
    notes.push_back("empty name component replaced with " + sub_text);
    return std::string(1, substitute);
  }
  std::string out;
  bool separator = false, control = false, invalid = false;
  for (std::size_t i = 0; i < component.size();) {
    const auto cp = decode_utf8(component, i);
    if (cp.size == 0) {
      invalid = true;
      out += substitute;
      ++i;
      continue;
    }
    if (sep && cp.value == static_cast<unsigned char>(*sep)) {
      separator = true;
      out += substitute;
    } else if (cp.value < 0x20 || (cp.value >= 0x7F && cp.value <= 0x9F)) {
      control = true;
      out += substitute;
    } else {
      out.append(component.substr(i, cp.size));
    }
    i += cp.size;
  }
  if (separator)
    notes.push_back(std::string("the new separator '") + *sep + "' replaced with " + sub_text);
  if (control) notes.push_back("control character replaced with " + sub_text);
  if (invalid) notes.push_back("bytes that are not UTF-8 replaced with " + sub_text);
  return out;
}

std::regex compile(const std::string& pattern) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw std::invalid_argument("folder rule: invalid regex \"" + pattern + "\": " + e.what());
  }
}

// ---------------------------------------------------------------- the plan

struct node {
  std::string legacy_name;
  bool listed = false;      // LIST shows it (\NonExistent does not count)
  bool noselect = false;
  bool subscribed = false;
  bool needed = false;      // the parent of a listed folder
  special_use attr_use = special_use::none;

  special_use use = special_use::none;
  bool direct = false;        // named by a rename or special-use, not from its parent
  bool into_special = false;  // goes into one of the new server's special-use folders
  bool changed = false;       // its own component was renamed or had characters replaced
  std::string component;      // its own component, sanitized (when not direct)
  std::string new_name;
  std::vector<std::string> notes;

  bool planned() const { return listed || needed; }
};

class planner {
 public:
  planner(const namespace_info& legacy_ns, const namespace_info& new_ns, const folder_rules& rules)
      : legacy_ns_(legacy_ns), new_ns_(new_ns) {
    for (const auto& [from, to] : rules.rename) renames_.push_back({compile(from), from, to});
    for (const auto& pattern : rules.exclude) excludes_.push_back(compile(pattern));
  }

  folder_plan run(const std::vector<mailbox_info>& legacy, const std::vector<mailbox_info>& fresh) {
    find_targets(fresh);
    read_legacy(legacy);
    exclude();
    add_parents();
    for (auto& [path, n] : nodes_) map_directly(path, n);
    claim_special_use();
    name_the_rest();
    return output();
  }

 private:
  struct rename_rule {
    std::regex re;
    std::string from, to;
  };

  char new_sep() const { return new_ns_.separator.value_or('/'); }

  // On a legacy server without a prefix INBOX is the top-level "INBOX" and may have
  // children; with a prefix ("INBOX." on Courier) everything sits below the prefix.
  bool is_inbox(const path_t& p) const {
    return legacy_ns_.prefix.empty() && p.size() == 1 && p[0] == "INBOX";
  }

  // The new server's folder for each use: the first name in byte order when it has
  // several, so the answer does not depend on LIST order.
  void find_targets(const std::vector<mailbox_info>& fresh) {
    for (const auto& m : fresh)
      for (const auto& [use, attr] : use_attributes)
        if (has_attribute(m.attributes, attr)) {
          auto [it, inserted] = targets_.emplace(use, m.name);
          if (!inserted && m.name < it->second) it->second = m.name;
        }
  }

  void read_legacy(const std::vector<mailbox_info>& legacy) {
    std::set<std::string> outside;
    for (const auto& m : legacy) {
      if (imap::iequals(m.name, "INBOX")) {
        inbox_subscribed_ |= m.subscribed;
        continue;
      }
      const auto rest = strip_prefix(m.name, legacy_ns_.prefix);
      if (!rest) {
        // The namespace's own root ("Mail" for "Mail/") may be listed as \Noselect.
        const auto sep = legacy_ns_.separator;
        if (!(sep && m.name + *sep == legacy_ns_.prefix)) outside.insert(m.name);
        continue;
      }
      if (rest->empty()) continue;  // the prefix itself
      path_t path = split(*rest, legacy_ns_.separator);
      if (legacy_ns_.prefix.empty() && imap::iequals(path[0], "INBOX")) path[0] = "INBOX";
      node& n = nodes_[path];
      if (n.legacy_name.empty() || m.name < n.legacy_name) n.legacy_name = m.name;
      const bool nonexistent = has_attribute(m.attributes, "\\NonExistent");
      n.listed |= !nonexistent;
      n.noselect |= nonexistent || has_attribute(m.attributes, "\\Noselect");
      n.subscribed |= m.subscribed;
      const auto use = use_by_attribute(m.attributes);
      if (use != special_use::none && (n.attr_use == special_use::none || use < n.attr_use))
        n.attr_use = use;
    }
    for (const auto& name : outside)
      problems_.push_back(name + ": outside the personal namespace \"" + legacy_ns_.prefix +
                          "\", not copied");
  }

  // A folder goes when a rule matches its rule form or that of one of its parents:
  // keeping a child of an excluded folder would need the parent anyway.
  void exclude() {
    for (auto it = nodes_.begin(); it != nodes_.end();) {
      const path_t& p = it->first;
      bool hit = false;
      for (std::size_t len = p[0] == "INBOX" && legacy_ns_.prefix.empty() ? 2 : 1;
           len <= p.size() && !hit; ++len) {
        const auto form = join(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(len), '/');
        hit = std::ranges::any_of(excludes_, [&](const auto& re) { return std::regex_search(form, re); });
      }
      if (hit) {
        excluded_.push_back(it->second.legacy_name);
        it = nodes_.erase(it);
      } else {
        ++it;
      }
    }
    std::ranges::sort(excluded_);
  }

  // Parents the legacy server does not list (\NonExistent, or simply missing) are
  // planned so the hierarchy exists; a subscription to a missing folder gets its
  // parents as names only, to follow their renames.
  void add_parents() {
    auto add = [&](const path_t& p, bool needed) {
      for (std::size_t len = 1; len < p.size(); ++len) {
        path_t parent(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(len));
        if (is_inbox(parent)) continue;
        node& n = nodes_[parent];
        n.needed |= needed;
        if (n.legacy_name.empty())
          n.legacy_name = legacy_ns_.prefix + join(parent, legacy_ns_.separator.value_or('/'));
      }
    };
    std::vector<path_t> listed;
    for (const auto& [p, n] : nodes_)
      if (n.listed) listed.push_back(p);
    for (const auto& p : listed) add(p, true);
    std::erase_if(nodes_, [](const auto& e) { return !e.second.planned() && !e.second.subscribed; });
    std::vector<path_t> subscription_only;
    for (const auto& [p, n] : nodes_)
      if (!n.planned()) subscription_only.push_back(p);
    for (const auto& p : subscription_only) add(p, false);
  }

  // Precedence: exclude (done), then an explicit rename, then special-use, then the
  // parent's new name plus the folder's own component.
  void map_directly(const path_t& p, node& n) {
    n.use = n.attr_use != special_use::none ? n.attr_use
            : p.size() == 1                 ? use_by_name(p[0])
                                            : special_use::none;
    const std::string form = join(p, '/');
    for (const auto& rule : renames_) {
      if (!std::regex_search(form, rule.re)) continue;
      const std::string renamed =
          std::regex_replace(form, rule.re, rule.to, std::regex_constants::format_first_only);
      n.direct = true;
      n.changed = renamed != form;
      n.notes.push_back("renamed by rule \"" + rule.from + "\" -> \"" + rule.to + "\"");
      path_t parts = split(renamed, '/');
      for (auto& part : parts) part = sanitize(part, new_ns_.separator, n.notes);
      n.new_name = new_ns_.prefix + join(parts, new_sep());
      // Renamed onto a special-use folder of the new server: put it there, as special-use
      // would (merging), rather than beside it with a suffix.
      for (const auto& [use, target] : targets_)
        if (n.new_name == target) {
          n.into_special = true;
          n.use = use;
        }
      return;
    }
    if (n.use != special_use::none) {
      const std::string how = attribute_of(n.use) + (n.attr_use != special_use::none
                                                         ? " by attribute" : " by name");
      if (const auto t = targets_.find(n.use); t != targets_.end()) {
        n.direct = n.into_special = true;
        n.new_name = t->second;
        n.notes.push_back(how);
        return;
      }
      n.notes.push_back(how + ", but the new server has no " + attribute_of(n.use) +
                        " folder: name kept");
    }
    n.component = sanitize(p.back(), new_ns_.separator, n.notes);
    n.changed = n.component != p.back();
  }

  // INBOX and the special-use folders of the new server exist already and are where
  // their legacy counterparts go, whatever else is planned: they claim names first.
  void claim_special_use() {
    taken_.emplace("INBOX", "INBOX");
    std::map<std::string, std::vector<std::string>> merged;
    for (const auto& [p, n] : nodes_)
      if (n.into_special && n.planned()) {
        taken_.emplace(collision_key(n.new_name, new_ns_.separator), n.legacy_name);
        merged[n.new_name].push_back(n.legacy_name);
      }
    for (const auto& [use, target] : targets_) {
      auto it = merged.find(target);
      if (it == merged.end() || it->second.size() < 2) continue;
      std::ranges::sort(it->second);
      std::string sources;
      for (const auto& name : it->second) sources += (sources.empty() ? "" : ", ") + name;
      problems_.push_back("merged into " + target + " (" + attribute_of(use) + "): " + sources);
    }
  }

  // Parents before children (a child's name starts with its parent's final one); at
  // one depth, names that needed no change first, so a replacement or rename yields
  // to the folder that really has the name; ties by legacy name.
  void name_the_rest() {
    std::vector<std::pair<const path_t*, node*>> order;
    for (auto& [p, n] : nodes_)
      if (!n.into_special) order.emplace_back(&p, &n);
    const auto key = [](const auto& e) {
      return std::tuple<std::size_t, bool, const std::string&>(e.first->size(), e.second->changed,
                                                              e.second->legacy_name);
    };
    std::ranges::sort(order, [&](const auto& a, const auto& b) { return key(a) < key(b); });
    for (auto [p, n] : order) {
      if (!n->direct) n->new_name = parent_name(*p, *n) + n->component;
      if (!n->planned()) continue;  // a subscription: it may share a name
      const auto key = collision_key(n->new_name, new_ns_.separator);
      if (const auto it = taken_.find(key); it != taken_.end()) {
        const std::string wanted = n->new_name;
        for (int i = 2; taken_.contains(collision_key(n->new_name, new_ns_.separator)); ++i)
          n->new_name = wanted + " (" + std::to_string(i) + ")";
        n->notes.push_back("\"" + wanted + "\" is taken by " + it->second + ": suffixed");
        problems_.push_back(n->legacy_name + " -> " + n->new_name + ": \"" + wanted +
                            "\" is taken by " + it->second);
      }
      taken_.emplace(collision_key(n->new_name, new_ns_.separator), n->legacy_name);
    }
  }

  // The new name up to and including the separator before the folder's own component.
  std::string parent_name(const path_t& p, node& n) {
    if (p.size() == 1) return new_ns_.prefix;
    const path_t parent(p.begin(), p.end() - 1);
    if (is_inbox(parent)) return "INBOX" + std::string(1, new_sep());
    const node& up = nodes_.at(parent);  // add_parents made it; shallower: named already
    if (moved(parent, up)) n.notes.push_back("follows its parent");
    return up.new_name + new_sep();
  }

  // Whether a folder's place changed beyond the prefix and separator translation.
  bool moved(const path_t& p, const node& n) const {
    if (!n.new_name.starts_with(new_ns_.prefix)) return true;
    return split(std::string_view(n.new_name).substr(new_ns_.prefix.size()), new_ns_.separator) != p;
  }

  folder_mapping mapping_of(const node& n) const {
    folder_mapping m{n.legacy_name, n.new_name, n.use, n.listed && !n.noselect, n.subscribed, {}};
    std::vector<std::string> notes = n.notes;
    if (n.listed && n.noselect) notes.push_back("\\Noselect on legacy: created empty");
    if (!n.listed && n.planned()) notes.push_back("a parent missing on legacy: created empty");
    for (const auto& note : notes) m.note += (m.note.empty() ? "" : "; ") + note;
    return m;
  }

  folder_plan output() const {
    folder_plan plan;
    plan.folders.push_back({"INBOX", "INBOX", special_use::none, true, inbox_subscribed_, {}});
    std::vector<const node*> special, rest, subscriptions;
    for (const auto& [p, n] : nodes_) {
      if (!n.planned())
        subscriptions.push_back(&n);
      else if (n.into_special)
        special.push_back(&n);
      else
        rest.push_back(&n);
    }
    std::ranges::sort(special, [](const node* a, const node* b) {
      return std::tie(a->use, a->new_name, a->legacy_name) <
             std::tie(b->use, b->new_name, b->legacy_name);
    });
    // Component-wise, so every parent comes right before its children.
    const auto by_new_name = [this](const node* a, const node* b) {
      return std::pair(split(a->new_name, new_ns_.separator), a->legacy_name) <
             std::pair(split(b->new_name, new_ns_.separator), b->legacy_name);
    };
    std::ranges::sort(rest, by_new_name);
    std::ranges::sort(subscriptions, by_new_name);
    for (const node* n : special) plan.folders.push_back(mapping_of(*n));
    for (const node* n : rest) plan.folders.push_back(mapping_of(*n));
    for (const node* n : subscriptions)
      if (n->subscribed) plan.subscribe_only.push_back(mapping_of(*n));
    plan.excluded = excluded_;
    plan.problems = problems_;
    return plan;
  }

  const namespace_info& legacy_ns_;
  const namespace_info& new_ns_;
  std::vector<rename_rule> renames_;
  std::vector<std::regex> excludes_;
  std::map<special_use, std::string> targets_;
  std::map<path_t, node> nodes_;
  bool inbox_subscribed_ = false;
  std::map<std::string, std::string> taken_;  // collision key -> the legacy name that has it
  std::vector<std::string> excluded_;
  std::vector<std::string> problems_;
};

std::string decode_name(const std::string& wire, bool utf8_names) {
  if (utf8_names) return wire;
  auto decoded = imap::mutf7_decode(wire);
  return decoded ? std::move(*decoded) : wire;
}

std::string inbox_upper(const std::string& name) {
  return imap::iequals(name, "INBOX") ? "INBOX" : name;
}

}  // namespace

folder_plan plan_folders(const std::vector<mailbox_info>& legacy, const namespace_info& legacy_ns,
                         const std::vector<mailbox_info>& fresh, const namespace_info& new_ns,
                         const folder_rules& rules) {
  return planner(legacy_ns, new_ns, rules).run(legacy, fresh);
}

std::vector<mailbox_info> mailboxes_from(const std::vector<imap::list_data>& list,
                                         const std::vector<imap::list_data>& lsub,
                                         bool utf8_names) {
  std::set<std::string> subscribed, seen;
  for (const auto& l : lsub) subscribed.insert(inbox_upper(l.name));
  std::vector<mailbox_info> out;
  for (const auto& l : list) {
    const auto wire = inbox_upper(l.name);
    seen.insert(wire);
    out.push_back({decode_name(l.name, utf8_names), l.separator, l.attributes,
                   subscribed.contains(wire) || l.has_attribute("\\Subscribed")});
  }
  for (const auto& l : lsub)
    if (seen.insert(inbox_upper(l.name)).second)
      out.push_back({decode_name(l.name, utf8_names), l.separator, {"\\NonExistent"}, true});
  return out;
}

std::optional<namespace_info> personal_namespace(const imap::namespace_data& ns, bool utf8_names) {
  if (ns.personal.empty()) return std::nullopt;
  const auto& first = ns.personal.front();
  return namespace_info{decode_name(first.prefix, utf8_names), first.separator};
}

const char* to_string(special_use use) {
  switch (use) {
    case special_use::none: return "none";
    case special_use::sent: return "sent";
    case special_use::trash: return "trash";
    case special_use::drafts: return "drafts";
    case special_use::junk: return "junk";
    case special_use::archive: return "archive";
  }
  return "none";
}

}  // namespace suction::sync
