#include "imap/response.hpp"

namespace suction::imap {
namespace {

std::optional<std::uint32_t> as_u32(const value& v) {
  auto n = v.number();
  if (!n || *n > 0xffffffffu) return std::nullopt;
  return static_cast<std::uint32_t>(*n);
}

std::optional<std::vector<std::string>> atom_list(const value& v) {
  if (!v.is_list()) return std::nullopt;
  std::vector<std::string> out;
  out.reserve(v.items.size());
  for (const auto& i : v.items) {
    if (i.is_list()) return std::nullopt;
    out.push_back(i.text);
  }
  return out;
}

const response_code* code_named(const response& r, std::string_view name) {
  if (!r.code || r.code->name != name) return nullptr;
  return &*r.code;
}

std::optional<char> separator_of(const value& v) {
  if (v.is_nil()) return std::nullopt;
  if (v.text.size() == 1) return v.text[0];
  return std::nullopt;
}

std::vector<namespace_entry> namespace_group(const value& v, bool& ok) {
  std::vector<namespace_entry> out;
  if (v.is_nil()) return out;
  if (!v.is_list()) {
    ok = false;
    return out;
  }
  for (const auto& e : v.items) {
    if (!e.is_list() || e.items.size() < 2 || !e.items[0].is_text()) {
      ok = false;
      return out;
    }
    out.push_back({e.items[0].text, separator_of(e.items[1])});
  }
  return out;
}

}  // namespace

const fetch_section* fetch_data::section(std::string_view name) const {
  for (const auto& s : sections)
    if (iequals(s.name, name)) return &s;
  return nullptr;
}

bool list_data::has_attribute(std::string_view attr) const {
  for (const auto& a : attributes)
    if (iequals(a, attr)) return true;
  return false;
}

std::optional<fetch_data> decode_fetch(const response& r) {
  if (r.keyword != "FETCH" || !r.number || r.data.size() != 1 || !r.data[0].is_list())
    return std::nullopt;
  const auto& items = r.data[0].items;
  if (items.size() % 2 != 0) return std::nullopt;
  fetch_data f;
  f.seq = *r.number;
  for (std::size_t i = 0; i < items.size(); i += 2) {
    const value& key = items[i];
    const value& val = items[i + 1];
    if (!key.is_atom()) return std::nullopt;
    std::string name = to_upper(key.text);
    if (name == "UID") {
      f.uid = as_u32(val);
      if (!f.uid) return std::nullopt;
    } else if (name == "FLAGS") {
      f.flags = atom_list(val);
      if (!f.flags) return std::nullopt;
    } else if (name == "INTERNALDATE") {
      if (!val.is_string()) return std::nullopt;
      f.internaldate = val.text;
    } else if (name == "RFC822.SIZE") {
      f.rfc822_size = val.number();
      if (!f.rfc822_size) return std::nullopt;
    } else if (name == "MODSEQ") {
      if (!val.is_list() || val.items.size() != 1) return std::nullopt;
      f.modseq = val.items[0].number();
      if (!f.modseq) return std::nullopt;
    } else if (name.starts_with("BODY[") || name.starts_with("BINARY[") ||
               name.starts_with("RFC822")) {
      f.sections.push_back({std::move(name), &val});
    }
    // ENVELOPE, BODYSTRUCTURE, BINARY.SIZE ... stay available in r.data
  }
  return f;
}

std::optional<list_data> decode_list(const response& r) {
  bool lsub = r.keyword == "LSUB";
  if ((r.keyword != "LIST" && !lsub) || r.data.size() < 3) return std::nullopt;
  auto attrs = atom_list(r.data[0]);
  if (!attrs || !r.data[1].is_text() || r.data[2].is_list()) return std::nullopt;
  list_data l;
  l.attributes = std::move(*attrs);
  l.separator = separator_of(r.data[1]);
  // A mailbox named NIL arrives quoted; a bare NIL atom here is the name "NIL" too.
  l.name = r.data[2].is_nil() ? std::string("NIL") : r.data[2].text;
  l.lsub = lsub;
  return l;
}

std::optional<status_data> decode_status(const response& r) {
  if (r.keyword != "STATUS" || r.data.size() != 2 || !r.data[0].is_text() || !r.data[1].is_list())
    return std::nullopt;
  status_data s;
  s.mailbox = r.data[0].is_nil() ? std::string("NIL") : r.data[0].text;
  const auto& items = r.data[1].items;
  if (items.size() % 2 != 0) return std::nullopt;
  for (std::size_t i = 0; i < items.size(); i += 2) {
    std::string name = to_upper(items[i].text);
    const value& v = items[i + 1];
    if (name == "MESSAGES") s.messages = as_u32(v);
    else if (name == "RECENT") s.recent = as_u32(v);
    else if (name == "UIDNEXT") s.uidnext = as_u32(v);
    else if (name == "UIDVALIDITY") s.uidvalidity = as_u32(v);
    else if (name == "UNSEEN") s.unseen = as_u32(v);
    else if (name == "HIGHESTMODSEQ") s.highestmodseq = v.number();
    else if (name == "SIZE") s.size = v.number();
  }
  return s;
}

std::optional<esearch_data> decode_esearch(const response& r) {
  if (r.keyword != "ESEARCH") return std::nullopt;
  esearch_data e;
  std::size_t i = 0;
  if (i < r.data.size() && r.data[i].is_list()) {  // (TAG "A282")
    const auto& c = r.data[i].items;
    if (c.size() == 2 && c[0].is_atom("TAG")) e.tag = c[1].text;
    ++i;
  }
  if (i < r.data.size() && r.data[i].is_atom("UID")) {
    e.uid = true;
    ++i;
  }
  for (; i + 1 < r.data.size(); i += 2) {
    std::string name = to_upper(r.data[i].text);
    const value& v = r.data[i + 1];
    if (name == "MIN") e.min = as_u32(v);
    else if (name == "MAX") e.max = as_u32(v);
    else if (name == "COUNT") e.count = as_u32(v);
    else if (name == "ALL") e.all = v.text;
    else if (name == "MODSEQ") e.modseq = v.number();
  }
  if (i != r.data.size()) return std::nullopt;
  return e;
}

std::optional<search_data> decode_search(const response& r) {
  if (r.keyword != "SEARCH") return std::nullopt;
  search_data s;
  for (const auto& v : r.data) {
    if (v.is_list()) {  // (MODSEQ 917162500)
      if (v.items.size() == 2 && v.items[0].is_atom("MODSEQ")) s.modseq = v.items[1].number();
      continue;
    }
    auto n = as_u32(v);
    if (!n) return std::nullopt;
    s.numbers.push_back(*n);
  }
  return s;
}

std::optional<namespace_data> decode_namespace(const response& r) {
  if (r.keyword != "NAMESPACE" || r.data.size() != 3) return std::nullopt;
  bool ok = true;
  namespace_data n;
  n.personal = namespace_group(r.data[0], ok);
  n.other = namespace_group(r.data[1], ok);
  n.shared = namespace_group(r.data[2], ok);
  if (!ok) return std::nullopt;
  return n;
}

std::optional<vanished_data> decode_vanished(const response& r) {
  if (r.keyword != "VANISHED" || r.data.empty()) return std::nullopt;
  vanished_data v;
  std::size_t i = 0;
  if (r.data[0].is_list()) {
    v.earlier = r.data[0].items.size() == 1 && r.data[0].items[0].is_atom("EARLIER");
    ++i;
  }
  if (i + 1 != r.data.size() || !r.data[i].is_atom()) return std::nullopt;
  v.uids = r.data[i].text;
  return v;
}

std::optional<std::vector<std::string>> decode_flags(const response& r) {
  if (r.keyword != "FLAGS" || r.data.size() != 1) return std::nullopt;
  return atom_list(r.data[0]);
}

std::optional<std::vector<std::string>> decode_enabled(const response& r) {
  if (r.keyword != "ENABLED") return std::nullopt;
  std::vector<std::string> out;
  for (const auto& v : r.data) {
    if (!v.is_atom()) return std::nullopt;
    out.push_back(v.text);
  }
  return out;
}

std::optional<capability_set> decode_capability(const response& r) {
  if (r.keyword == "CAPABILITY" && !r.is_status()) {
    std::vector<std::string> atoms;
    for (const auto& v : r.data) {
      if (!v.is_atom()) return std::nullopt;
      atoms.push_back(v.text);
    }
    return capability_set(std::move(atoms));
  }
  if (auto c = code_named(r, "CAPABILITY")) return capability_set::parse(c->raw_args);
  return std::nullopt;
}

std::optional<appenduid_data> decode_appenduid(const response_code& c) {
  if (c.name != "APPENDUID" || c.args.size() != 2) return std::nullopt;
  auto v = as_u32(c.args[0]);
  if (!v || !c.args[1].is_atom()) return std::nullopt;
  return appenduid_data{*v, c.args[1].text};
}

std::optional<copyuid_data> decode_copyuid(const response_code& c) {
  if (c.name != "COPYUID" || c.args.size() != 3) return std::nullopt;
  auto v = as_u32(c.args[0]);
  if (!v) return std::nullopt;
  return copyuid_data{*v, c.args[1].text, c.args[2].text};
}

std::optional<appenduid_data> decode_appenduid(const response& r) {
  if (!r.code) return std::nullopt;
  return decode_appenduid(*r.code);
}

std::optional<copyuid_data> decode_copyuid(const response& r) {
  if (!r.code) return std::nullopt;
  return decode_copyuid(*r.code);
}

std::optional<std::uint32_t> decode_uidvalidity(const response& r) {
  auto c = code_named(r, "UIDVALIDITY");
  if (!c || c->args.size() != 1) return std::nullopt;
  return as_u32(c->args[0]);
}

std::optional<std::uint32_t> decode_uidnext(const response& r) {
  auto c = code_named(r, "UIDNEXT");
  if (!c || c->args.size() != 1) return std::nullopt;
  return as_u32(c->args[0]);
}

std::optional<std::uint64_t> decode_highestmodseq(const response& r) {
  auto c = code_named(r, "HIGHESTMODSEQ");
  if (!c || c->args.size() != 1) return std::nullopt;
  return c->args[0].number();
}

std::optional<std::vector<std::string>> decode_permanentflags(const response& r) {
  auto c = code_named(r, "PERMANENTFLAGS");
  if (!c || c->args.size() != 1) return std::nullopt;
  return atom_list(c->args[0]);
}

}  // namespace suction::imap
