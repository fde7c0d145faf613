#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "imap/mutf7.hpp"
#include "sync/folder_plan.hpp"

using namespace suction::sync;

namespace {

const namespace_info courier{"INBOX.", '.'};
const namespace_info dovecot{"", '/'};
const folder_rules no_rules{};

mailbox_info box(std::string name, std::vector<std::string> attributes = {}, bool subscribed = false,
                 std::optional<char> separator = '.') {
  return {std::move(name), separator, std::move(attributes), subscribed};
}
mailbox_info sub(std::string name, std::vector<std::string> attributes = {}) {
  return box(std::move(name), std::move(attributes), true);
}

// The test bed's "new" server: Dovecot defaults with RFC 6154 folders.
std::vector<mailbox_info> new_server() {
  return {box("INBOX", {"\\HasNoChildren"}, true, '/'),
          box("Drafts", {"\\HasNoChildren", "\\Drafts"}, true, '/'),
          box("Sent", {"\\HasNoChildren", "\\Sent"}, true, '/'),
          box("Trash", {"\\HasNoChildren", "\\Trash"}, true, '/'),
          box("Junk", {"\\HasNoChildren", "\\Junk"}, true, '/'),
          box("Archive", {"\\HasNoChildren", "\\Archive"}, true, '/')};
}

// The test bed's legacy corpus (tests/testbed/README.md) as LIST + LSUB give it.
std::vector<mailbox_info> testbed_legacy() {
  return {sub("INBOX", {"\\HasChildren"}),
          sub("INBOX.Projects", {"\\HasChildren"}),
          sub("INBOX.Projects.2024", {"\\HasChildren"}),
          sub("INBOX.Projects.2024.Q1", {"\\HasNoChildren"}),
          sub("INBOX.Sent Items", {"\\HasNoChildren"}),
          sub("INBOX.Deleted Items", {"\\HasNoChildren"}),
          sub("INBOX.Junk E-mail", {"\\HasNoChildren"}),
          sub("INBOX.Drafts", {"\\HasNoChildren"}),
          sub("INBOX.Entwürfe", {"\\HasNoChildren"}),
          box("INBOX.Éléments envoyés", {"\\HasNoChildren"}),
          sub("INBOX.日本語", {"\\HasNoChildren"}),
          box("INBOX.Say \"hi\"", {"\\HasNoChildren"}),
          sub("INBOX.100% done", {"\\HasNoChildren"}),
          box("INBOX.Tom & Jerry", {"\\HasNoChildren"}),
          sub("INBOX.Empty", {"\\HasNoChildren"}),
          box("INBOX.Ghost", {"\\Noselect", "\\HasChildren"}),
          sub("INBOX.Ghost.Child", {"\\HasNoChildren"}),
          sub("INBOX.Gone", {"\\NonExistent"})};
}

// One line per mapping, so a failing CHECK shows the whole plan.
std::string show(const folder_mapping& m) {
  std::string s = m.legacy_name + " -> " + m.new_name;
  if (m.use != special_use::none) s += std::string(" [") + to_string(m.use) + "]";
  if (!m.selectable) s += " noselect";
  if (m.subscribe) s += " sub";
  if (!m.note.empty()) s += " (" + m.note + ")";
  return s;
}
std::string show(const std::vector<folder_mapping>& ms) {
  std::string s;
  for (const auto& m : ms) s += show(m) + "\n";
  return s;
}
std::string lines(const std::vector<std::string>& ls) {
  std::string s;
  for (const auto& l : ls) s += l + "\n";
  return s;
}

const folder_mapping* find(const folder_plan& plan, const std::string& legacy) {
  for (const auto& m : plan.folders)
    if (m.legacy_name == legacy) return &m;
  return nullptr;
}
// "legacy -> new (note)" for one folder, or "missing" so the CHECK says which.
std::string of(const folder_plan& plan, const std::string& legacy) {
  const auto* m = find(plan, legacy);
  return m ? show(*m) : legacy + " missing";
}

}  // namespace

TEST_CASE("folder plan: the test bed's legacy corpus onto the new server") {
  const auto plan = plan_folders(testbed_legacy(), courier, new_server(), dovecot, no_rules);
  CHECK(show(plan.folders) == lines({
            "INBOX -> INBOX sub",
            "INBOX.Sent Items -> Sent [sent] sub (\\Sent by name)",
            "INBOX.Éléments envoyés -> Sent [sent] (\\Sent by name)",
            "INBOX.Deleted Items -> Trash [trash] sub (\\Trash by name)",
            "INBOX.Drafts -> Drafts [drafts] sub (\\Drafts by name)",
            "INBOX.Entwürfe -> Drafts [drafts] sub (\\Drafts by name)",
            "INBOX.Junk E-mail -> Junk [junk] sub (\\Junk by name)",
            "INBOX.100% done -> 100% done sub",
            "INBOX.Empty -> Empty sub",
            "INBOX.Ghost -> Ghost noselect (\\Noselect on legacy: created empty)",
            "INBOX.Ghost.Child -> Ghost/Child sub",
            "INBOX.Projects -> Projects sub",
            "INBOX.Projects.2024 -> Projects/2024 sub",
            "INBOX.Projects.2024.Q1 -> Projects/2024/Q1 sub",
            "INBOX.Say \"hi\" -> Say \"hi\"",
            "INBOX.Tom & Jerry -> Tom & Jerry",
            "INBOX.日本語 -> 日本語 sub",
        }));
  CHECK(show(plan.subscribe_only) == "INBOX.Gone -> Gone noselect sub\n");
  CHECK(plan.excluded.empty());
  CHECK(lines(plan.problems) ==
        lines({"merged into Sent (\\Sent): INBOX.Sent Items, INBOX.Éléments envoyés",
               "merged into Drafts (\\Drafts): INBOX.Drafts, INBOX.Entwürfe"}));
  // Every new name can go on the wire.
  for (const auto& m : plan.folders) CHECK(suction::imap::mutf7_encode(m.new_name).has_value());
}

TEST_CASE("folder plan: RFC 6154 attributes win over names and reach the new server's folders") {
  const std::vector<mailbox_info> legacy{
      box("INBOX", {}, false, '/'),
      box("Trash", {"\\Junk"}, false, '/'),            // the attribute, not the name
      box("Sent", {}, false, '/'),                     // by name
      box("Outgoing", {"\\Sent"}, false, '/'),         // by attribute only
      box("Projects", {}, false, '/'),
      box("Projects/Old mail", {"\\Archive"}, false, '/'),  // attributes count at any depth
      box("Projects/Sent", {}, false, '/'),            // names only at the top level
  };
  // Names that are not the usual ones, and two \Sent folders: the first in byte order.
  const std::vector<mailbox_info> fresh{
      box("INBOX", {}, false, '/'),          box("Sent", {"\\Sent"}, false, '/'),
      box("Gesendet", {"\\Sent"}, false, '/'), box("Papierkorb", {"\\Trash"}, false, '/'),
      box("Spam", {"\\Junk"}, false, '/'),   box("Archiv", {"\\Archive"}, false, '/')};
  const auto plan = plan_folders(legacy, dovecot, fresh, dovecot, no_rules);
  CHECK(show(plan.folders) == lines({
            "INBOX -> INBOX",
            "Outgoing -> Gesendet [sent] (\\Sent by attribute)",
            "Sent -> Gesendet [sent] (\\Sent by name)",
            "Trash -> Spam [junk] (\\Junk by attribute)",
            "Projects/Old mail -> Archiv [archive] (\\Archive by attribute)",
            "Projects -> Projects",
            "Projects/Sent -> Projects/Sent",
        }));
  CHECK(lines(plan.problems) == lines({"merged into Gesendet (\\Sent): Outgoing, Sent"}));
}

TEST_CASE("folder plan: every well-known name in any case and at the top level only") {
  struct known {
    const char* name;
    special_use use;
    const char* target;
  };
  const known table[] = {
      {"Sent", special_use::sent, "Sent"},
      {"Sent Items", special_use::sent, "Sent"},
      {"Sent Messages", special_use::sent, "Sent"},
      {"Sent Mail", special_use::sent, "Sent"},
      {"Gesendet", special_use::sent, "Sent"},
      {"Gesendete Objekte", special_use::sent, "Sent"},
      {"Gesendete Elemente", special_use::sent, "Sent"},
      {"Éléments envoyés", special_use::sent, "Sent"},
      {"Envoyés", special_use::sent, "Sent"},
      {"Messages envoyés", special_use::sent, "Sent"},
      {"Enviados", special_use::sent, "Sent"},
      {"Elementos enviados", special_use::sent, "Sent"},
      {"Posta inviata", special_use::sent, "Sent"},
      {"Inviati", special_use::sent, "Sent"},
      {"Verzonden items", special_use::sent, "Sent"},
      {"Skickat", special_use::sent, "Sent"},
      {"Wysłane", special_use::sent, "Sent"},
      {"Trash", special_use::trash, "Trash"},
      {"Deleted Items", special_use::trash, "Trash"},
      {"Deleted Messages", special_use::trash, "Trash"},
      {"Papierkorb", special_use::trash, "Trash"},
      {"Gelöschte Objekte", special_use::trash, "Trash"},
      {"Gelöschte Elemente", special_use::trash, "Trash"},
      {"Corbeille", special_use::trash, "Trash"},
      {"Éléments supprimés", special_use::trash, "Trash"},
      {"Papelera", special_use::trash, "Trash"},
      {"Elementos eliminados", special_use::trash, "Trash"},
      {"Cestino", special_use::trash, "Trash"},
      {"Prullenbak", special_use::trash, "Trash"},
      {"Kosz", special_use::trash, "Trash"},
      {"Drafts", special_use::drafts, "Drafts"},
      {"Entwürfe", special_use::drafts, "Drafts"},
      {"Brouillons", special_use::drafts, "Drafts"},
      {"Borradores", special_use::drafts, "Drafts"},
      {"Bozze", special_use::drafts, "Drafts"},
      {"Concepten", special_use::drafts, "Drafts"},
      {"Kopie robocze", special_use::drafts, "Drafts"},
      {"Junk", special_use::junk, "Junk"},
      {"Junk E-mail", special_use::junk, "Junk"},
      {"Junk Email", special_use::junk, "Junk"},
      {"Spam", special_use::junk, "Junk"},
      {"Bulk Mail", special_use::junk, "Junk"},
      {"Junk-E-Mail", special_use::junk, "Junk"},
      {"Courrier indésirable", special_use::junk, "Junk"},
      {"Correo no deseado", special_use::junk, "Junk"},
      {"Posta indesiderata", special_use::junk, "Junk"},
      {"Ongewenste e-mail", special_use::junk, "Junk"},
      {"Archive", special_use::archive, "Archive"},
      {"Archives", special_use::archive, "Archive"},
      {"Archiv", special_use::archive, "Archive"},
      {"Archief", special_use::archive, "Archive"},
      {"Archivio", special_use::archive, "Archive"},
      {"Archivo", special_use::archive, "Archive"},
      // Case does not matter, in ASCII, Latin-1 and Latin Extended-A.
      {"SENT ITEMS", special_use::sent, "Sent"},
      {"sent items", special_use::sent, "Sent"},
      {"ÉLÉMENTS ENVOYÉS", special_use::sent, "Sent"},
      {"WYSŁANE", special_use::sent, "Sent"},
      {"GELÖSCHTE OBJEKTE", special_use::trash, "Trash"},
      {"ENTWÜRFE", special_use::drafts, "Drafts"},
      {"junk e-mail", special_use::junk, "Junk"},
      // Near misses are ordinary folders.
      {"Sent Items 2", special_use::none, "Sent Items 2"},
      {"Sentx", special_use::none, "Sentx"},
      {"Spam ", special_use::none, "Spam "},
      {"Old.Sent", special_use::none, "Old/Sent"},
      {"Old.Deleted Items", special_use::none, "Old/Deleted Items"},
  };
  for (const auto& k : table) {
    CAPTURE(k.name);
    const std::string legacy_name = std::string("INBOX.") + k.name;
    const auto plan =
        plan_folders({box("INBOX"), box(legacy_name)}, courier, new_server(), dovecot, no_rules);
    const auto* m = find(plan, legacy_name);
    REQUIRE(m != nullptr);
    CHECK(m->new_name == k.target);
    CHECK(m->use == k.use);
  }
}

TEST_CASE("folder plan: without the new server's special-use folder the name is kept") {
  const std::vector<mailbox_info> fresh{box("INBOX", {}, false, '/')};
  const auto plan = plan_folders({box("INBOX"), box("INBOX.Sent Items"), box("INBOX.Gesendet"),
                                  box("INBOX.Sent Items.2023"), box("INBOX.Old", {"\\Trash"})},
                                 courier, fresh, dovecot, no_rules);
  CHECK(show(plan.folders) ==
        lines({"INBOX -> INBOX",
               "INBOX.Gesendet -> Gesendet [sent] (\\Sent by name, but the new server has no "
               "\\Sent folder: name kept)",
               "INBOX.Old -> Old [trash] (\\Trash by attribute, but the new server has no "
               "\\Trash folder: name kept)",
               "INBOX.Sent Items -> Sent Items [sent] (\\Sent by name, but the new server has "
               "no \\Sent folder: name kept)",
               "INBOX.Sent Items.2023 -> Sent Items/2023"}));
  CHECK(plan.problems.empty());
}

TEST_CASE("folder plan: children follow a special-use folder and merged children get a suffix") {
  const auto plan = plan_folders(
      {box("INBOX"), box("INBOX.Sent Items"), box("INBOX.Sent Items.2023"),
       box("INBOX.Éléments envoyés"), box("INBOX.Éléments envoyés.2023"), box("INBOX.Drafts"),
       box("INBOX.Drafts.Old")},
      courier, new_server(), dovecot, no_rules);
  CHECK(show(plan.folders) ==
        lines({"INBOX -> INBOX",
               "INBOX.Sent Items -> Sent [sent] (\\Sent by name)",
               "INBOX.Éléments envoyés -> Sent [sent] (\\Sent by name)",
               "INBOX.Drafts -> Drafts [drafts] (\\Drafts by name)",
               // Drafts kept its name: nothing to say about its child.
               "INBOX.Drafts.Old -> Drafts/Old",
               "INBOX.Sent Items.2023 -> Sent/2023 (follows its parent)",
               "INBOX.Éléments envoyés.2023 -> Sent/2023 (2) (follows its parent; \"Sent/2023\" "
               "is taken by INBOX.Sent Items.2023: suffixed)"}));
  CHECK(lines(plan.problems) ==
        lines({"merged into Sent (\\Sent): INBOX.Sent Items, INBOX.Éléments envoyés",
               "INBOX.Éléments envoyés.2023 -> Sent/2023 (2): \"Sent/2023\" is taken by "
               "INBOX.Sent Items.2023"}));
}

TEST_CASE("folder plan: rename rules") {
  auto legacy = testbed_legacy();
  legacy.push_back(box("INBOX.Outbox-sent"));
  legacy.push_back(box("INBOX.Archived"));
  const folder_rules rules{
      .rename = {{"^Projects$", "Work"},                // children follow
                 {"^Projects/2024/Q1$", "Quarterly/Q1"},  // a child's own rule beats following
                 {"^Projects/2024/(Q.)$", "never"},       // first match wins
                 {"^Deleted Items$", "Old/Deleted"},      // beats special-use
                 {"^Outbox-sent$", "Sent"},               // onto a special-use folder: merges
                 {"ed$", "ED"}},                          // searched; replaces the match only
      .exclude = {}};
  const auto plan = plan_folders(legacy, courier, new_server(), dovecot, rules);
  CHECK(of(plan, "INBOX.Projects") ==
        "INBOX.Projects -> Work sub (renamed by rule \"^Projects$\" -> \"Work\")");
  CHECK(of(plan, "INBOX.Projects.2024") == "INBOX.Projects.2024 -> Work/2024 sub (follows its parent)");
  CHECK(of(plan, "INBOX.Projects.2024.Q1") ==
        "INBOX.Projects.2024.Q1 -> Quarterly/Q1 sub (renamed by rule \"^Projects/2024/Q1$\" -> "
        "\"Quarterly/Q1\")");
  CHECK(of(plan, "INBOX.Deleted Items") ==
        "INBOX.Deleted Items -> Old/Deleted [trash] sub (renamed by rule \"^Deleted Items$\" -> "
        "\"Old/Deleted\")");
  CHECK(of(plan, "INBOX.Outbox-sent") ==
        "INBOX.Outbox-sent -> Sent [sent] (renamed by rule \"^Outbox-sent$\" -> \"Sent\")");
  CHECK(of(plan, "INBOX.Archived") == "INBOX.Archived -> ArchivED (renamed by rule \"ed$\" -> \"ED\")");
  // Nothing went to Trash; three went to Sent.
  CHECK(std::ranges::none_of(plan.folders, [](const auto& m) { return m.new_name == "Trash"; }));
  CHECK(std::ranges::count_if(plan.folders, [](const auto& m) { return m.new_name == "Sent"; }) == 3);
  CHECK(plan.problems.front() ==
        "merged into Sent (\\Sent): INBOX.Outbox-sent, INBOX.Sent Items, INBOX.Éléments envoyés");
  // INBOX is never renamed.
  const auto inbox = plan_folders({box("INBOX")}, courier, new_server(), dovecot,
                                  {.rename = {{".*", "X"}}, .exclude = {}});
  CHECK(show(inbox.folders) == "INBOX -> INBOX\n");
}

TEST_CASE("folder plan: exclude rules take whole subtrees and come first") {
  const folder_rules rules{.rename = {{"^Empty$", "Full"}},
                           .exclude = {"^Junk E-mail$", "^Ghost$", "^Empty$", "^INBOX\\.", "Jerry"}};
  const auto plan = plan_folders(testbed_legacy(), courier, new_server(), dovecot, rules);
  CHECK(plan.excluded == std::vector<std::string>{"INBOX.Empty", "INBOX.Ghost", "INBOX.Ghost.Child",
                                                  "INBOX.Junk E-mail", "INBOX.Tom & Jerry"});
  for (const char* gone : {"INBOX.Empty", "INBOX.Ghost", "INBOX.Ghost.Child", "INBOX.Junk E-mail",
                           "INBOX.Tom & Jerry"}) {
    CAPTURE(gone);
    CHECK(find(plan, gone) == nullptr);
  }
  // Rules see names without the prefix: "^INBOX\." matches nothing on Courier.
  CHECK(plan.folders.size() == 17 - 5);
  CHECK(plan.folders.front().new_name == "INBOX");
  // An excluded subscription is not copied either.
  const auto gone = plan_folders(testbed_legacy(), courier, new_server(), dovecot,
                                 {.rename = {}, .exclude = {"^Gone$"}});
  CHECK(gone.subscribe_only.empty());
  CHECK(gone.excluded == std::vector<std::string>{"INBOX.Gone"});
  // INBOX stays whatever the rules say.
  const auto all = plan_folders(testbed_legacy(), courier, new_server(), dovecot,
                                {.rename = {}, .exclude = {".*"}});
  CHECK(show(all.folders) == "INBOX -> INBOX sub\n");
  CHECK(all.excluded.size() == 17);
}

TEST_CASE("folder plan: an invalid rule is an error naming it") {
  CHECK_THROWS_WITH_AS(plan_folders({}, courier, {}, dovecot, {.rename = {{"(", "x"}}, .exclude = {}}),
                       doctest::Contains("\"(\""), std::invalid_argument);
  CHECK_THROWS_AS(plan_folders({}, courier, {}, dovecot, {.rename = {}, .exclude = {"[a"}}),
                  std::invalid_argument);
}

TEST_CASE("folder plan: characters the new server refuses are replaced") {
  const auto plan = plan_folders(
      {box("INBOX"), box("INBOX.a/b"), box("INBOX.a/b.c"), box("INBOX.tab\there"),
       box("INBOX.x..y"), box("INBOX.end."), box("INBOX.\xff bad"), box("INBOX.c1\xc2\x85")},
      courier, new_server(), dovecot, no_rules);
  CHECK(show(plan.folders) ==
        lines({"INBOX -> INBOX",
               "INBOX.\xff bad -> _ bad (bytes that are not UTF-8 replaced with '_')",
               "INBOX.a/b -> a_b (the new separator '/' replaced with '_')",
               "INBOX.a/b.c -> a_b/c (follows its parent)",
               "INBOX.c1\xc2\x85 -> c1_ (control character replaced with '_')",
               "INBOX.end -> end noselect (a parent missing on legacy: created empty)",
               "INBOX.end. -> end/_ (empty name component replaced with '_')",
               "INBOX.tab\there -> tab_here (control character replaced with '_')",
               "INBOX.x -> x noselect (a parent missing on legacy: created empty)",
               "INBOX.x. -> x/_ noselect (empty name component replaced with '_'; a parent "
               "missing on legacy: created empty)",
               "INBOX.x..y -> x/_/y (follows its parent)"}));
  CHECK(plan.problems.empty());

  // The other way round: '/' legacy onto a '.' server with a prefix.
  const auto back = plan_folders({box("INBOX", {}, false, '/'), box("v1.2", {}, false, '/'),
                                  box("Projects/2024", {}, false, '/')},
                                 dovecot, {box("INBOX")}, courier, no_rules);
  CHECK(show(back.folders) == lines({"INBOX -> INBOX",
                                     "Projects -> INBOX.Projects noselect (a parent missing on "
                                     "legacy: created empty)",
                                     "Projects/2024 -> INBOX.Projects.2024",
                                     "v1.2 -> INBOX.v1_2 (the new separator '.' replaced with '_')"}));

  // Where '_' is the separator, '-' replaces.
  const auto underscore = plan_folders({box("INBOX"), box("INBOX.a_b")}, courier, {},
                                       namespace_info{"", '_'}, no_rules);
  CHECK(of(underscore, "INBOX.a_b") == "INBOX.a_b -> a-b (the new separator '_' replaced with '-')");
}

TEST_CASE("folder plan: collisions get a deterministic suffix and are reported") {
  const auto plan = plan_folders(
      {box("INBOX"), box("INBOX.a_b"), box("INBOX.a/b"), box("INBOX.a\x01" "b"), box("INBOX.a/b.kid"),
       box("INBOX.inbox"), box("INBOX.Projects"), box("INBOX.Old")},
      courier, new_server(), dovecot, {.rename = {{"^Old$", "Projects"}}, .exclude = {}});
  CHECK(show(plan.folders) ==
        lines({"INBOX -> INBOX",
               "INBOX.Projects -> Projects",
               // An explicit rename yields too.
               "INBOX.Old -> Projects (2) (renamed by rule \"^Old$\" -> \"Projects\"; "
               "\"Projects\" is taken by INBOX.Projects: suffixed)",
               "INBOX.a_b -> a_b",
               // Replacements yield to the folder that really has the name.
               "INBOX.a\x01" "b -> a_b (2) (control character replaced with '_'; \"a_b\" is taken "
               "by INBOX.a_b: suffixed)",
               "INBOX.a/b -> a_b (3) (the new separator '/' replaced with '_'; \"a_b\" is taken "
               "by INBOX.a_b: suffixed)",
               "INBOX.a/b.kid -> a_b (3)/kid (follows its parent)",
               // INBOX is case-insensitive on the new server too.
               "INBOX.inbox -> inbox (2) (\"inbox\" is taken by INBOX: suffixed)"}));
  CHECK(lines(plan.problems) ==
        lines({"INBOX.inbox -> inbox (2): \"inbox\" is taken by INBOX",
               "INBOX.Old -> Projects (2): \"Projects\" is taken by INBOX.Projects",
               "INBOX.a\x01" "b -> a_b (2): \"a_b\" is taken by INBOX.a_b",
               "INBOX.a/b -> a_b (3): \"a_b\" is taken by INBOX.a_b"}));
}

TEST_CASE("folder plan: a legacy server without prefix keeps the names") {
  const std::vector<mailbox_info> legacy{
      box("INBOX", {}, true, '/'),          box("INBOX/Sub", {}, true, '/'),
      box("Projects", {}, false, '/'),      box("Projects/2024", {}, false, '/'),
      box("Projects/2024/Q1", {}, false, '/'), box("Sent", {"\\Sent"}, true, '/'),
      box("Archive", {}, false, '/'),       box("Archive/2019", {}, false, '/'),
      box("with.dot", {}, false, '/')};
  const auto plan = plan_folders(legacy, dovecot, new_server(), dovecot, no_rules);
  CHECK(show(plan.folders) == lines({"INBOX -> INBOX sub",
                                     "Sent -> Sent [sent] sub (\\Sent by attribute)",
                                     "Archive -> Archive [archive] (\\Archive by name)",
                                     "Archive/2019 -> Archive/2019",
                                     "INBOX/Sub -> INBOX/Sub sub",
                                     "Projects -> Projects",
                                     "Projects/2024 -> Projects/2024",
                                     "Projects/2024/Q1 -> Projects/2024/Q1",
                                     "with.dot -> with.dot"}));
  CHECK(plan.problems.empty());

  // A flat legacy server: no hierarchy to translate.
  const auto flat = plan_folders({box("INBOX", {}, false, std::nullopt),
                                  box("a.b/c", {}, false, std::nullopt)},
                                 namespace_info{"", std::nullopt}, new_server(), dovecot, no_rules);
  CHECK(show(flat.folders) ==
        lines({"INBOX -> INBOX", "a.b/c -> a.b_c (the new separator '/' replaced with '_')"}));
}

TEST_CASE("folder plan: Noselect and missing parents exist and subscriptions are copied") {
  const auto plan = plan_folders(
      {box("INBOX"), sub("INBOX.a.b.c"), sub("INBOX.x", {"\\NonExistent"}), box("INBOX.x.y"),
       box("INBOX.quiet", {"\\NonExistent"}), box("INBOX.Old"), sub("INBOX.Old.Gone", {"\\NonExistent"}),
       sub("INBOX.p.q", {"\\NonExistent"})},
      courier, new_server(), dovecot, {.rename = {{"^Old$", "New"}}, .exclude = {}});
  CHECK(show(plan.folders) ==
        lines({"INBOX -> INBOX",
               "INBOX.Old -> New (renamed by rule \"^Old$\" -> \"New\")",
               "INBOX.a -> a noselect (a parent missing on legacy: created empty)",
               "INBOX.a.b -> a/b noselect (a parent missing on legacy: created empty)",
               "INBOX.a.b.c -> a/b/c sub",
               "INBOX.x -> x noselect sub (a parent missing on legacy: created empty)",
               "INBOX.x.y -> x/y"}));
  // Subscriptions to missing folders follow their parents' renames; "p" is not created.
  CHECK(show(plan.subscribe_only) ==
        lines({"INBOX.Old.Gone -> New/Gone noselect sub (follows its parent)",
               "INBOX.p.q -> p/q noselect sub"}));
}

TEST_CASE("folder plan: INBOX always comes first and names outside the namespace are reported") {
  const auto plan = plan_folders({box("INBOX.Zeta"), box("Public.shared"), box("#news.x"),
                                  box("inbox", {}, true), box("INBOX.")},
                                 courier, new_server(), dovecot, no_rules);
  CHECK(show(plan.folders) == lines({"INBOX -> INBOX sub", "INBOX.Zeta -> Zeta"}));
  CHECK(lines(plan.problems) ==
        lines({"#news.x: outside the personal namespace \"INBOX.\", not copied",
               "Public.shared: outside the personal namespace \"INBOX.\", not copied"}));
  // Listed or not, INBOX is planned; the namespace root "Mail" of "Mail/" is no folder.
  const auto no_inbox = plan_folders({box("Mail", {"\\Noselect"}, false, '/'), box("Mail/a", {}, false, '/')},
                                     namespace_info{"Mail/", '/'}, new_server(), dovecot, no_rules);
  CHECK(show(no_inbox.folders) == lines({"INBOX -> INBOX", "Mail/a -> a"}));
  CHECK(no_inbox.problems.empty());
}

TEST_CASE("folder plan: the same input in any order gives the same plan") {
  auto legacy = testbed_legacy();
  for (const char* extra : {"INBOX.a/b", "INBOX.a_b", "INBOX.a\x01" "b", "INBOX.inbox", "INBOX.Sent",
                            "INBOX.Sent.2023", "INBOX.Sent Items.2023", "INBOX.q.r.s"})
    legacy.push_back(box(extra));
  legacy.push_back(box("INBOX.Projects", {"\\HasChildren"}, false));  // listed twice, once subscribed
  const folder_rules rules{.rename = {{"^Projects/(.*)$", "Work/$1"}}, .exclude = {"^Empty$"}};
  auto fresh = new_server();
  fresh.push_back(box("Gesendet", {"\\Sent"}, false, '/'));
  const auto expected = plan_folders(legacy, courier, fresh, dovecot, rules);
  // Two merges and four collisions: the order of the input could matter for each.
  CHECK(expected.problems.size() == 6);

  std::mt19937 rng(20240611);
  for (int round = 0; round < 50; ++round) {
    CAPTURE(round);
    std::ranges::shuffle(legacy, rng);
    std::ranges::shuffle(fresh, rng);
    const auto plan = plan_folders(legacy, courier, fresh, dovecot, rules);
    CHECK(show(plan.folders) == show(expected.folders));
    CHECK(plan == expected);
  }
}

TEST_CASE("folder plan: LIST and LSUB answers become mailbox_info") {
  using suction::imap::list_data;
  const std::vector<list_data> list{
      {{"\\HasChildren"}, '.', "INBOX", false},
      {{"\\HasNoChildren"}, '.', "INBOX.Entw&APw-rfe", false},
      {{"\\HasNoChildren"}, '.', "INBOX.Tom &- Jerry", false},
      {{"\\HasNoChildren", "\\Subscribed"}, '.', "INBOX.&ZeVnLIqe-", false},
      {{"\\HasNoChildren"}, '.', "INBOX.caf\xc3\xa9", false},  // raw UTF-8: kept as sent
  };
  const std::vector<list_data> lsub{{{}, '.', "inbox", true},
                                    {{}, '.', "INBOX.Entw&APw-rfe", true},
                                    {{}, '.', "INBOX.Gone", true},
                                    {{}, '.', "INBOX.Gone", true}};
  const auto boxes = mailboxes_from(list, lsub);
  REQUIRE(boxes.size() == 6);
  CHECK(boxes[0] == mailbox_info{"INBOX", '.', {"\\HasChildren"}, true});
  CHECK(boxes[1] == mailbox_info{"INBOX.Entwürfe", '.', {"\\HasNoChildren"}, true});
  CHECK(boxes[2] == mailbox_info{"INBOX.Tom & Jerry", '.', {"\\HasNoChildren"}, false});
  CHECK(boxes[3] == mailbox_info{"INBOX.日本語", '.', {"\\HasNoChildren", "\\Subscribed"}, true});
  CHECK(boxes[4] == mailbox_info{"INBOX.café", '.', {"\\HasNoChildren"}, false});
  CHECK(boxes[5] == mailbox_info{"INBOX.Gone", '.', {"\\NonExistent"}, true});

  // With UTF8=ACCEPT names are UTF-8 as sent, '&' included.
  const auto utf8 = mailboxes_from({{{}, '.', "INBOX.Tom &- Jerry", false}}, {}, true);
  CHECK(utf8.at(0).name == "INBOX.Tom &- Jerry");

  suction::imap::namespace_data ns;
  CHECK_FALSE(personal_namespace(ns).has_value());
  ns.personal = {{"INBOX.", '.'}, {"Other.", '.'}};
  CHECK(personal_namespace(ns) == namespace_info{"INBOX.", '.'});
  ns.personal = {{"&AMk-l&AOk-ments/", '/'}};
  CHECK(personal_namespace(ns) == namespace_info{"Éléments/", '/'});
}
