#include "imap/parser.hpp"

#include <algorithm>
#include <cstring>

namespace suction::imap {
namespace detail {
namespace {

bool is_status_keyword(std::string_view w, status& st) {
  if (iequals(w, "OK")) st = status::ok;
  else if (iequals(w, "NO")) st = status::no;
  else if (iequals(w, "BAD")) st = status::bad;
  else if (iequals(w, "PREAUTH")) st = status::preauth;
  else if (iequals(w, "BYE")) st = status::bye;
  else return false;
  return true;
}

// A word up to the next space (or the end). Advances pos past one following space.
std::string_view next_word(std::string_view s, std::size_t& pos) {
  std::size_t end = s.find(' ', pos);
  if (end == std::string_view::npos) end = s.size();
  std::string_view w = s.substr(pos, end - pos);
  pos = end < s.size() ? end + 1 : end;
  return w;
}

bool is_atom_stop(char c) { return c == ' ' || c == '(' || c == ')' || c == '"'; }

// True when the segment ends with a non-synchronizing literal announcement {n+}.
bool ends_with_nonsync_literal(std::string_view seg) {
  return seg.size() >= 4 && seg.back() == '}' && seg[seg.size() - 2] == '+' &&
         seg.rfind('{') != std::string_view::npos;
}

// Tokenizes a response code's arguments when they follow the generic grammar;
// free-form ones (REFERRAL URLs, ALERT text) keep only raw_args.
std::vector<value> tokenize_code_args(std::string_view raw) {
  std::vector<value> out;
  std::vector<std::vector<value>*> stack{&out};
  std::size_t p = 0;
  while (p < raw.size()) {
    char c = raw[p];
    if (c == ' ') { ++p; continue; }
    auto& top = *stack.back();
    if (c == '(') {
      top.push_back(value{value_kind::list});
      stack.push_back(&top.back().items);
      ++p;
    } else if (c == ')') {
      if (stack.size() == 1) return {};
      stack.pop_back();
      ++p;
    } else if (c == '"') {
      value v{value_kind::string};
      ++p;
      bool closed = false;
      while (p < raw.size()) {
        char d = raw[p++];
        if (d == '"') { closed = true; break; }
        if (d == '\\' && p < raw.size()) d = raw[p++];
        v.text.push_back(d);
      }
      if (!closed) return {};
      top.push_back(std::move(v));
    } else {
      std::size_t start = p;
      while (p < raw.size() && !is_atom_stop(raw[p])) ++p;
      value v{value_kind::atom};
      v.text.assign(raw.substr(start, p - start));
      if (iequals(v.text, "NIL")) v.kind = value_kind::nil, v.text.clear();
      top.push_back(std::move(v));
    }
  }
  if (stack.size() != 1) return {};
  return out;
}

}  // namespace

engine::engine(mode m, parser_limits limits) : mode_(m), limits_(limits) { reset(); }

void engine::reset() {
  state_ = state::line;
  first_segment_ = true;
  line_.clear();
  message_bytes_ = 0;
  root_ = value{value_kind::list};
  stack_.assign(1, &root_);
  literal_left_ = 0;
  literal_streamed_ = false;
  pending_begin_ = false;
  pending_nonsync_ = false;
  chunk_ = {};
  error_.clear();
  recoverable_ = false;
  response_ = {};
  command_ = {};
}

engine::segment_outcome engine::fail(errc e) {
  error_ = e;
  return segment_outcome::failed;
}

parse_result engine::feed(std::string_view in) {
  std::size_t used = 0;
  for (;;) {
    switch (state_) {
      case state::failed:
        return {used, parse_event::error};

      case state::raw_line:
      case state::line: {
        const char* base = in.data() + used;
        const void* nl = used < in.size() ? std::memchr(base, '\n', in.size() - used) : nullptr;
        if (!nl) {
          line_.append(base, in.size() - used);
          used = in.size();
          if (line_.size() > limits_.max_line) {
            error_ = errc::line_too_long;
            recoverable_ = false;
            state_ = state::failed;
            return {used, parse_event::error};
          }
          return {used, parse_event::need_more};
        }
        std::size_t len = static_cast<const char*>(nl) - base;
        std::string_view seg;
        if (line_.empty()) {
          seg = std::string_view(base, len);
        } else {
          line_.append(base, len);
          seg = line_;
        }
        used += len + 1;
        if (!seg.empty() && seg.back() == '\r') seg.remove_suffix(1);
        if (seg.size() > limits_.max_line) {
          error_ = errc::line_too_long;
          recoverable_ = false;
          state_ = state::failed;
          return {used, parse_event::error};
        }

        if (state_ == state::raw_line) {
          raw_line_.assign(seg);
          line_.clear();
          state_ = state::line;
          return {used, parse_event::line};
        }

        if (first_segment_) {
          response_ = {};
          command_ = {};
          root_ = value{value_kind::list};
          stack_.assign(1, &root_);
          message_bytes_ = 0;
          nul_seen_ = false;
        }
        message_bytes_ += seg.size();
        segment_outcome out = message_bytes_ > limits_.max_message
                                  ? fail(errc::line_too_long)
                                  : parse_segment(seg);
        if (out == segment_outcome::complete && nul_seen_) out = fail(errc::nul_in_string);
        first_segment_ = false;
        bool nonsync = ends_with_nonsync_literal(seg);
        line_.clear();

        if (out == segment_outcome::failed) {
          // A command whose whole line was read can be skipped; a response stream,
          // or a command with a literal already on its way, cannot.
          recoverable_ = mode_ == mode::command && !nonsync && error_ != errc::line_too_long;
          if (mode_ == mode::command && error_ == errc::literal_too_large && nonsync)
            recoverable_ = false;
          if (recoverable_) {
            first_segment_ = true;
            state_ = state::line;
          } else {
            state_ = state::failed;
          }
          return {used, parse_event::error};
        }
        if (out == segment_outcome::complete) {
          finish_message();
          return {used, parse_event::message};
        }
        // A literal follows this segment.
        state_ = state::literal;
        if (mode_ == mode::command && literal_info_.synchronizing) {
          pending_begin_ = literal_streamed_;
          return {used, parse_event::need_continuation};
        }
        if (literal_streamed_) return {used, parse_event::literal_begin};
        continue;
      }

      case state::literal: {
        if (pending_begin_) {
          pending_begin_ = false;
          return {used, parse_event::literal_begin};
        }
        if (literal_left_ == 0) {
          state_ = state::line;
          if (literal_streamed_) {
            literal_streamed_ = false;
            return {used, parse_event::literal_end};
          }
          continue;
        }
        if (used == in.size()) return {used, parse_event::need_more};
        std::size_t n = static_cast<std::size_t>(
            std::min<std::uint64_t>(literal_left_, in.size() - used));
        literal_left_ -= n;
        if (mode_ == mode::command && !literal_info_.binary &&
            std::memchr(in.data() + used, '\0', n) != nullptr)
          nul_seen_ = true;
        if (literal_streamed_) {
          chunk_ = in.substr(used, n);
          used += n;
          return {used, parse_event::literal_data};
        }
        stack_.back()->items.back().text.append(in.data() + used, n);
        used += n;
        continue;
      }
    }
  }
}

void engine::finish_message() {
  if (mode_ == mode::response) response_.data = std::move(root_.items);
  else command_.args = std::move(root_.items);
  root_.items.clear();
  first_segment_ = true;
  state_ = state::line;
}

engine::segment_outcome engine::parse_segment(std::string_view seg) {
  // A client's NUL cuts a user name short in the backend's C strings while we
  // would see another name: refused, as Dovecot does, once the whole command
  // is read (its literals too), so the BAD goes to its tag and the next
  // command parses.
  if (mode_ == mode::command && std::memchr(seg.data(), '\0', seg.size()) != nullptr) nul_seen_ = true;
  std::size_t pos = 0;
  if (first_segment_) {
    auto out = mode_ == mode::response ? parse_response_header(seg, pos)
                                       : parse_command_header(seg, pos);
    if (out != segment_outcome::literal) return out;  // complete or failed
  }
  return parse_values(seg, pos);
}

engine::segment_outcome engine::parse_response_header(std::string_view seg, std::size_t& pos) {
  response& r = response_;
  if (!seg.empty() && seg[0] == '+') {
    r.kind = response_kind::continuation;
    r.text.assign(seg.substr(std::min<std::size_t>(seg.size(), seg.size() > 1 && seg[1] == ' ' ? 2 : 1)));
    return segment_outcome::complete;
  }
  std::string_view tag = next_word(seg, pos);
  if (tag.empty()) return fail(errc::syntax);
  r.kind = tag == "*" ? response_kind::untagged : response_kind::tagged;
  if (r.kind == response_kind::tagged) r.tag.assign(tag);

  std::string_view word = next_word(seg, pos);
  if (word.empty()) return fail(errc::syntax);
  if (r.kind == response_kind::untagged) {
    if (auto n = parse_number(word)) {
      if (*n > 0xffffffffu) return fail(errc::syntax);
      r.number = static_cast<std::uint32_t>(*n);
      word = next_word(seg, pos);
      if (word.empty()) return fail(errc::syntax);
    }
  }
  r.keyword = to_upper(word);
  if (!r.number && is_status_keyword(word, r.status)) {
    // resp-text: optional [code], then free text (which may hold anything).
    if (pos < seg.size() && seg[pos] == '[') {
      std::size_t close = seg.find(']', pos);
      if (close == std::string_view::npos) return fail(errc::syntax);
      std::string_view inner = seg.substr(pos + 1, close - pos - 1);
      response_code code;
      std::size_t sp = inner.find(' ');
      code.name = to_upper(inner.substr(0, sp));
      if (sp != std::string_view::npos) {
        code.raw_args.assign(inner.substr(sp + 1));
        code.args = tokenize_code_args(code.raw_args);
      }
      r.code = std::move(code);
      pos = close + 1;
      if (pos < seg.size() && seg[pos] == ' ') ++pos;
    }
    r.text.assign(seg.substr(pos));
    return segment_outcome::complete;
  }
  if (r.kind == response_kind::tagged) return fail(errc::syntax);
  return segment_outcome::literal;  // "go on with the values"
}

engine::segment_outcome engine::parse_command_header(std::string_view seg, std::size_t& pos) {
  command& c = command_;
  std::size_t sp = seg.find(' ');
  std::string_view tag = seg.substr(0, sp);
  for (char ch : tag)
    if (static_cast<unsigned char>(ch) <= 0x20 || ch == '(' || ch == ')' || ch == '{' ||
        ch == '"' || ch == '\\' || ch == '%' || ch == '*' || ch == '+' || ch == ']' ||
        static_cast<unsigned char>(ch) >= 0x7f)
      return fail(errc::syntax);
  if (tag.empty()) return fail(errc::syntax);
  c.tag.assign(tag);
  if (sp == std::string_view::npos) return fail(errc::syntax);
  pos = sp + 1;
  std::string_view name = next_word(seg, pos);
  if (name.empty()) return fail(errc::syntax);
  for (char ch : name)
    if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
          ch == '-' || ch == '_' || ch == '.'))
      return fail(errc::syntax);
  c.name = to_upper(name);
  if (c.name == "UID") {
    std::string_view sub = next_word(seg, pos);
    if (sub.empty()) return fail(errc::syntax);
    c.name += ' ';
    c.name += to_upper(sub);
  }
  return segment_outcome::literal;  // "go on with the values"
}

engine::segment_outcome engine::parse_values(std::string_view seg, std::size_t pos) {
  const std::size_t n = seg.size();
  while (pos < n) {
    char c = seg[pos];
    if (c == ' ') { ++pos; continue; }
    value& top = *stack_.back();
    switch (c) {
      case '(': {
        if (stack_.size() > limits_.max_depth) return fail(errc::nesting_too_deep);
        top.items.push_back(value{value_kind::list});
        stack_.push_back(&top.items.back());
        ++pos;
        break;
      }
      case ')': {
        if (stack_.size() == 1) return fail(errc::syntax);
        stack_.pop_back();
        ++pos;
        break;
      }
      case '"': {
        value v{value_kind::string};
        ++pos;
        bool closed = false;
        while (pos < n) {
          char d = seg[pos++];
          if (d == '"') { closed = true; break; }
          if (d == '\\') {
            if (pos == n) break;
            d = seg[pos++];
          }
          v.text.push_back(d);
        }
        if (!closed) return fail(errc::syntax);
        top.items.push_back(std::move(v));
        break;
      }
      case '{':
        return begin_literal(seg, pos);
      case '~':
        if (pos + 1 < n && seg[pos + 1] == '{') return begin_literal(seg, pos);
        [[fallthrough]];
      default: {
        // An atom; a "[...]" section inside it (BODY[HEADER.FIELDS (A B)]<0>) may
        // hold spaces and parentheses.
        std::size_t start = pos;
        int brackets = 0;
        while (pos < n) {
          char d = seg[pos];
          if (brackets > 0) {
            if (d == ']') --brackets;
            else if (d == '[') ++brackets;
          } else if (is_atom_stop(d)) {
            break;
          } else if (d == '[') {
            ++brackets;
          }
          ++pos;
        }
        if (brackets > 0) return fail(errc::syntax);
        value v{value_kind::atom};
        v.text.assign(seg.substr(start, pos - start));
        if (iequals(v.text, "NIL")) {
          v.kind = value_kind::nil;
          v.text.clear();
        }
        top.items.push_back(std::move(v));
        break;
      }
    }
  }
  if (stack_.size() != 1) return fail(errc::syntax);
  return segment_outcome::complete;
}

engine::segment_outcome engine::begin_literal(std::string_view seg, std::size_t pos) {
  literal_info info;
  if (seg[pos] == '~') {
    info.binary = true;
    ++pos;
  }
  ++pos;  // '{'
  std::size_t digits = pos;
  while (pos < seg.size() && seg[pos] >= '0' && seg[pos] <= '9') ++pos;
  auto size = parse_number(seg.substr(digits, pos - digits));
  if (!size) return fail(errc::bad_literal);
  info.synchronizing = true;
  if (pos < seg.size() && (seg[pos] == '+' || seg[pos] == '-')) {
    info.synchronizing = false;
    ++pos;
  }
  if (pos >= seg.size() || seg[pos] != '}' || pos + 1 != seg.size())
    return fail(errc::bad_literal);
  if (*size > limits_.max_literal) return fail(errc::literal_too_large);
  info.size = *size;

  value& top = *stack_.back();
  literal_item_.clear();
  if (!top.items.empty() && top.items.back().is_atom()) literal_item_ = top.items.back().text;
  info.item = literal_item_;
  if (mode_ == mode::response) info.message_number = response_.number;

  value v{value_kind::string};
  v.literal = true;
  v.binary = info.binary;
  v.literal_size = info.size;
  literal_streamed_ = info.size > limits_.inline_literal_max;
  if (literal_streamed_) {
    v.streamed = true;
  } else {
    message_bytes_ += info.size;
    if (message_bytes_ > limits_.max_message) return fail(errc::literal_too_large);
    v.text.reserve(static_cast<std::size_t>(info.size));
  }
  top.items.push_back(std::move(v));
  literal_left_ = info.size;
  literal_info_ = info;
  return segment_outcome::literal;
}

}  // namespace detail

void command_parser::expect_line() {
  if (state_ == state::line && first_segment_) state_ = state::raw_line;
}

}  // namespace suction::imap
