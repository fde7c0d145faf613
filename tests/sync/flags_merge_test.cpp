#include <doctest/doctest.h>

#include "sync/flags_merge.hpp"

using namespace suction::sync;
using flags = std::vector<std::string>;

TEST_CASE("flags are normalized: system flags canonical, \\Recent dropped, case-insensitive set") {
  CHECK(normalize_flags(flags{"\\seen", "$Forwarded", "\\Recent", "\\SEEN", "\\flagged", "$forwarded"}) ==
        flags{"$Forwarded", "\\Flagged", "\\Seen"});
  CHECK(normalize_flags(flags{}) == flags{});
  CHECK(join_flags(normalize_flags(flags{"\\Seen", "Junk", "$Label1"})) == "$Label1 \\Seen Junk");
  CHECK(split_flags("$Label1  Junk \\Seen \\Recent") == flags{"$Label1", "\\Seen", "Junk"});
}

TEST_CASE("three-way merge: legacy changes arrive where the user did not touch the flag") {
  // Read on legacy since the last run: carried over.
  auto m = merge_flags(flags{}, flags{"\\Seen"}, flags{});
  CHECK(m.add == flags{"\\Seen"});
  CHECK(m.remove.empty());
  CHECK(m.agreed == flags{"\\Seen"});
  // Unflagged on legacy: carried over.
  m = merge_flags(flags{"\\Flagged"}, flags{}, flags{"\\Flagged"});
  CHECK(m.remove == flags{"\\Flagged"});
  // Nothing changed anywhere: nothing to do.
  CHECK_FALSE(merge_flags(flags{"\\Seen"}, flags{"\\Seen"}, flags{"\\Seen"}).changes());
}

TEST_CASE("three-way merge: the user's work on the new server wins") {
  // The user marked it unread on the new server; legacy did not change: kept unread.
  auto m = merge_flags(flags{"\\Seen"}, flags{"\\Seen"}, flags{});
  CHECK_FALSE(m.changes());
  // The user flagged it; legacy flagged it too: nothing to store.
  CHECK_FALSE(merge_flags(flags{}, flags{"\\Flagged"}, flags{"\\Flagged"}).changes());
  // The user answered it on the new server and legacy marked it unread: each
  // side's own change arrives, flag by flag.
  m = merge_flags(flags{"\\Seen"}, flags{}, flags{"\\Seen", "\\Answered"});
  CHECK(m.remove == flags{"\\Seen"});
  CHECK(m.add.empty());
  m = merge_flags(flags{}, flags{"\\Seen"}, flags{"$Important"});
  CHECK(m.add == flags{"\\Seen"});     // per flag: the user's keyword does not block legacy's \Seen
  CHECK(m.remove.empty());
  // A flag the user removed on the new server stays removed even if legacy keeps it.
  m = merge_flags(flags{"\\Seen", "\\Flagged"}, flags{"\\Seen", "\\Flagged", "$Forwarded"}, flags{"\\Seen"});
  CHECK(m.add == flags{"$Forwarded"});
  CHECK(m.remove.empty());
  // Case does not matter.
  CHECK_FALSE(merge_flags(flags{"\\seen"}, flags{"\\SEEN"}, flags{"\\Seen"}).changes());
}

TEST_CASE("content signatures: same content, same signature, anything else differs") {
  std::string h1 = "Message-ID: <a@example.org>\r\nSubject: Hello\r\n  world\r\nDate: Mon, 1 Jan 2024\r\n\r\n";
  std::string h1_folded = "subject: Hello world\r\nmessage-id:   <a@example.org>\r\nDATE: Mon, 1 Jan 2024\r\n";
  CHECK(content_signature(100, 5, h1) == content_signature(100, 5, h1_folded));
  CHECK(content_signature(100, 5, h1) != content_signature(101, 5, h1));
  CHECK(content_signature(100, 5, h1) != content_signature(100, 6, h1));
  CHECK(content_signature(100, 5, h1) != content_signature(100, 5, "Message-ID: <b@example.org>\r\n"));
  CHECK(content_signature(0, 0, "") == content_signature(0, 0, "\r\n"));  // no headers at all
}

TEST_CASE("matching by signature pairs duplicates by count, in UID order") {
  std::vector<std::pair<std::uint32_t, std::string>> legacy = {
      {3, "dup"}, {1, "a"}, {2, "dup"}, {4, "gone-on-new"}, {5, "dup"}};
  std::vector<std::pair<std::uint32_t, std::string>> fresh = {{21, "dup"}, {20, "a"}, {22, "dup"}, {30, "other"}};
  auto pairs = match_by_signature(legacy, fresh);
  std::vector<std::pair<std::uint32_t, std::uint32_t>> expected = {{1, 20}, {2, 21}, {3, 22}};
  CHECK(pairs == expected);  // legacy 5 (a third "dup") and 4 have no copy: they are to be copied
  CHECK(match_by_signature({}, fresh).empty());
}
