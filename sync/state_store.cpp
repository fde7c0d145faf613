#include "sync/state_store.hpp"

#include <sqlite3.h>

#include <cerrno>
#include <csignal>
#include <system_error>

#include <unistd.h>

namespace suction::sync {

namespace {

// Each entry moves the schema from version i to i+1. Never edit a shipped
// entry: add one.
constexpr const char* kMigrations[] = {
    // 0 -> 1
    R"sql(
    CREATE TABLE folders (
      user TEXT NOT NULL,
      legacy_name TEXT NOT NULL,
      legacy_uidvalidity INTEGER NOT NULL,
      last_legacy_uid INTEGER NOT NULL,
      highest_modseq INTEGER NOT NULL,
      new_name TEXT NOT NULL,
      new_uidvalidity INTEGER NOT NULL,
      last_new_uid INTEGER NOT NULL,
      PRIMARY KEY (user, legacy_name)
    ) WITHOUT ROWID;
    CREATE TABLE messages (
      user TEXT NOT NULL,
      legacy_name TEXT NOT NULL,
      legacy_uid INTEGER NOT NULL,
      new_uid INTEGER NOT NULL,
      flags TEXT NOT NULL,
      PRIMARY KEY (user, legacy_name, legacy_uid)
    ) WITHOUT ROWID;
    CREATE TABLE runs (
      id INTEGER PRIMARY KEY AUTOINCREMENT,
      user TEXT NOT NULL,
      started_at INTEGER NOT NULL,
      finished_at INTEGER NOT NULL DEFAULT 0,
      result TEXT NOT NULL,
      messages_copied INTEGER NOT NULL DEFAULT 0,
      bytes_copied INTEGER NOT NULL DEFAULT 0,
      messages_failed INTEGER NOT NULL DEFAULT 0,
      error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX runs_by_user ON runs (user, id);
    )sql",
    // 1 -> 2: the process running a run, for one run per user across processes
    R"sql(
    ALTER TABLE runs ADD COLUMN pid INTEGER NOT NULL DEFAULT 0;
    )sql",
    // 2 -> 3: the append journal (APPENDs sent, outcome not recorded yet)
    R"sql(
    CREATE TABLE append_journal (
      id INTEGER PRIMARY KEY AUTOINCREMENT,
      user TEXT NOT NULL,
      legacy_name TEXT NOT NULL,
      legacy_uids TEXT NOT NULL,
      uidnext_seen INTEGER NOT NULL,
      written_at INTEGER NOT NULL
    );
    CREATE INDEX append_journal_by_folder ON append_journal (user, legacy_name);
    )sql",
    // 3 -> 4: what started a run (a login, a bulk job, the command line) and
    // the bytes it knew were still to copy when it ended (-1: not known)
    R"sql(
    ALTER TABLE runs ADD COLUMN started_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN bytes_left INTEGER NOT NULL DEFAULT -1;
    )sql",
};
static_assert(std::size(kMigrations) == state_store::kSchemaVersion);

// Whether a process with this id exists (on this machine: the store is a local file).
bool process_alive(std::int64_t pid) {
  if (pid <= 0) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

run_result parse_result(std::string_view s) {
  if (s == "done") return run_result::done;
  if (s == "failed") return run_result::failed;
  if (s == "interrupted") return run_result::interrupted;
  return run_result::running;
}

}  // namespace

std::string_view to_string(run_result r) {
  switch (r) {
    case run_result::running: return "running";
    case run_result::done: return "done";
    case run_result::failed: return "failed";
    case run_result::interrupted: return "interrupted";
  }
  return "running";
}

// A prepared statement: bind by position (from 1), step, read columns (from 0).
class state_store::statement {
 public:
  statement(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) fail("prepare");
  }
  ~statement() { sqlite3_finalize(stmt_); }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;

  statement& bind(int i, std::string_view v) {
    // An empty view may have no data(): SQLite would bind NULL, not ''.
    check(sqlite3_bind_text(stmt_, i, v.empty() ? "" : v.data(), static_cast<int>(v.size()),
                            SQLITE_TRANSIENT),
          "bind");
    return *this;
  }
  statement& bind(int i, std::int64_t v) {
    check(sqlite3_bind_int64(stmt_, i, v), "bind");
    return *this;
  }
  // True while there is a row.
  bool step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail("step");
  }
  void run() {
    while (step()) {
    }
    sqlite3_reset(stmt_);
  }
  std::int64_t integer(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string text(int col) const {
    auto p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
    return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, col))) : std::string();
  }
  void reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

 private:
  void check(int rc, const char* what) {
    if (rc != SQLITE_OK) fail(what);
  }
  [[noreturn]] void fail(const char* what) {
    throw state_error(std::string("state store: ") + what + ": " + sqlite3_errmsg(db_));
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

namespace {

folder_state read_folder(const auto& st) {
  folder_state f;
  f.legacy_name = st.text(0);
  f.legacy_uidvalidity = static_cast<std::uint32_t>(st.integer(1));
  f.last_legacy_uid = static_cast<std::uint32_t>(st.integer(2));
  f.highest_modseq = static_cast<std::uint64_t>(st.integer(3));
  f.new_name = st.text(4);
  f.new_uidvalidity = static_cast<std::uint32_t>(st.integer(5));
  f.last_new_uid = static_cast<std::uint32_t>(st.integer(6));
  return f;
}

constexpr const char* kFolderColumns =
    "legacy_name, legacy_uidvalidity, last_legacy_uid, highest_modseq, new_name, new_uidvalidity, "
    "last_new_uid";

}  // namespace

state_store::state_store(const std::filesystem::path& path) : path_(path) {
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw state_error("state store: cannot open " + path.string() + ": " + msg);
  }
  sqlite3_busy_timeout(db_, 5000);
  exec("PRAGMA journal_mode = WAL");
  // WAL with synchronous=NORMAL survives a process crash at any instant
  // (only a power loss may drop the last transactions, never corrupt).
  exec("PRAGMA synchronous = NORMAL");
  exec("PRAGMA foreign_keys = ON");
  migrate();
}

state_store::~state_store() { sqlite3_close(db_); }

void state_store::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    throw state_error("state store " + path_.string() + ": " + msg);
  }
}

int state_store::schema_version() const {
  statement st(db_, "PRAGMA user_version");
  return st.step() ? static_cast<int>(st.integer(0)) : 0;
}

void state_store::migrate() {
  int version = schema_version();
  if (version > kSchemaVersion)
    throw state_error("state store " + path_.string() + ": schema version " + std::to_string(version) +
                      " is newer than this suction knows (" + std::to_string(kSchemaVersion) + ")");
  while (version < kSchemaVersion) {
    exec("BEGIN IMMEDIATE");
    try {
      // Another process (the daemon, `suction report`) may have migrated
      // since the version was read: read it again under the write lock.
      version = schema_version();
      if (version >= kSchemaVersion) {
        exec("COMMIT");
        break;
      }
      exec(kMigrations[version]);
      exec(("PRAGMA user_version = " + std::to_string(version + 1)).c_str());
      exec("COMMIT");
      ++version;
    } catch (...) {
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
  }
}

std::optional<folder_state> state_store::folder(std::string_view user, std::string_view legacy_name) const {
  statement st(db_, (std::string("SELECT ") + kFolderColumns +
                     " FROM folders WHERE user = ?1 AND legacy_name = ?2").c_str());
  st.bind(1, user).bind(2, legacy_name);
  if (!st.step()) return std::nullopt;
  return read_folder(st);
}

std::vector<folder_state> state_store::folders(std::string_view user) const {
  statement st(db_, (std::string("SELECT ") + kFolderColumns +
                     " FROM folders WHERE user = ?1 ORDER BY legacy_name").c_str());
  st.bind(1, user);
  std::vector<folder_state> out;
  while (st.step()) out.push_back(read_folder(st));
  return out;
}

void state_store::save_folder(std::string_view user, const folder_state& f) {
  statement st(db_,
               "INSERT INTO folders (user, legacy_name, legacy_uidvalidity, last_legacy_uid, highest_modseq,"
               " new_name, new_uidvalidity, last_new_uid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
               " ON CONFLICT (user, legacy_name) DO UPDATE SET legacy_uidvalidity = ?3,"
               " last_legacy_uid = ?4, highest_modseq = ?5, new_name = ?6, new_uidvalidity = ?7,"
               " last_new_uid = ?8");
  st.bind(1, user)
      .bind(2, f.legacy_name)
      .bind(3, std::int64_t{f.legacy_uidvalidity})
      .bind(4, std::int64_t{f.last_legacy_uid})
      .bind(5, static_cast<std::int64_t>(f.highest_modseq))
      .bind(6, f.new_name)
      .bind(7, std::int64_t{f.new_uidvalidity})
      .bind(8, std::int64_t{f.last_new_uid});
  st.run();
}

void state_store::forget_folder(std::string_view user, std::string_view legacy_name) {
  exec("BEGIN IMMEDIATE");
  try {
    for (const char* sql : {"DELETE FROM messages WHERE user = ?1 AND legacy_name = ?2",
                            "DELETE FROM append_journal WHERE user = ?1 AND legacy_name = ?2",
                            "DELETE FROM folders WHERE user = ?1 AND legacy_name = ?2"}) {
      statement st(db_, sql);
      st.bind(1, user).bind(2, legacy_name);
      st.run();
    }
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

void state_store::record_batch(std::string_view user, const folder_state& updated,
                               std::span<const message_record> copied,
                               std::span<const std::int64_t> resolved) {
  exec("BEGIN IMMEDIATE");
  try {
    statement st(db_,
                 "INSERT INTO messages (user, legacy_name, legacy_uid, new_uid, flags)"
                 " VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (user, legacy_name, legacy_uid)"
                 " DO UPDATE SET new_uid = ?4, flags = ?5");
    for (const auto& m : copied) {
      st.bind(1, user)
          .bind(2, updated.legacy_name)
          .bind(3, std::int64_t{m.legacy_uid})
          .bind(4, std::int64_t{m.new_uid})
          .bind(5, m.flags);
      st.run();
      st.reset();
    }
    save_folder(user, updated);
    delete_journal(resolved);
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

void state_store::delete_journal(std::span<const std::int64_t> ids) {
  if (ids.empty()) return;
  statement st(db_, "DELETE FROM append_journal WHERE id = ?1");
  for (auto id : ids) {
    st.bind(1, id);
    st.run();
    st.reset();
  }
}

std::int64_t state_store::journal_batch(std::string_view user, std::string_view legacy_name,
                                        std::span<const std::uint32_t> legacy_uids,
                                        std::uint32_t uidnext_seen, std::int64_t now) {
  std::string uids;
  for (auto u : legacy_uids) {
    if (!uids.empty()) uids += ',';
    uids += std::to_string(u);
  }
  statement st(db_,
               "INSERT INTO append_journal (user, legacy_name, legacy_uids, uidnext_seen, written_at)"
               " VALUES (?1, ?2, ?3, ?4, ?5)");
  st.bind(1, user).bind(2, legacy_name).bind(3, uids).bind(4, std::int64_t{uidnext_seen}).bind(5, now);
  st.run();
  return sqlite3_last_insert_rowid(db_);
}

void state_store::drop_journal(std::span<const std::int64_t> ids) {
  if (ids.empty()) return;
  exec("BEGIN IMMEDIATE");
  try {
    delete_journal(ids);
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

std::vector<journal_entry> state_store::journal(std::string_view user,
                                                std::string_view legacy_name) const {
  statement st(db_,
               "SELECT id, legacy_uids, uidnext_seen, written_at FROM append_journal"
               " WHERE user = ?1 AND legacy_name = ?2 ORDER BY id");
  st.bind(1, user).bind(2, legacy_name);
  std::vector<journal_entry> out;
  while (st.step()) {
    journal_entry e;
    e.id = st.integer(0);
    const std::string uids = st.text(1);
    std::uint64_t v = 0;
    bool digits = false;
    for (char c : uids + ",") {
      if (c >= '0' && c <= '9') {
        v = v * 10 + static_cast<std::uint64_t>(c - '0');
        digits = true;
      } else {
        if (digits && v > 0 && v <= UINT32_MAX) e.legacy_uids.push_back(static_cast<std::uint32_t>(v));
        v = 0;
        digits = false;
      }
    }
    e.uidnext_seen = static_cast<std::uint32_t>(st.integer(2));
    e.written_at = st.integer(3);
    out.push_back(std::move(e));
  }
  return out;
}

std::set<std::string> state_store::journaled_folders(std::string_view user) const {
  statement st(db_, "SELECT DISTINCT legacy_name FROM append_journal WHERE user = ?1");
  st.bind(1, user);
  std::set<std::string> out;
  while (st.step()) out.insert(st.text(0));
  return out;
}

std::optional<message_record> state_store::message(std::string_view user, std::string_view legacy_name,
                                                   std::uint32_t legacy_uid) const {
  statement st(db_,
               "SELECT legacy_uid, new_uid, flags FROM messages"
               " WHERE user = ?1 AND legacy_name = ?2 AND legacy_uid = ?3");
  st.bind(1, user).bind(2, legacy_name).bind(3, std::int64_t{legacy_uid});
  if (!st.step()) return std::nullopt;
  return message_record{static_cast<std::uint32_t>(st.integer(0)), static_cast<std::uint32_t>(st.integer(1)),
                        st.text(2)};
}

std::set<std::uint32_t> state_store::recorded_above(std::string_view user, std::string_view legacy_name,
                                                   std::uint32_t above) const {
  statement st(db_,
               "SELECT legacy_uid FROM messages"
               " WHERE user = ?1 AND legacy_name = ?2 AND legacy_uid > ?3");
  st.bind(1, user).bind(2, legacy_name).bind(3, std::int64_t{above});
  std::set<std::uint32_t> out;
  while (st.step()) out.insert(static_cast<std::uint32_t>(st.integer(0)));
  return out;
}

std::set<std::uint32_t> state_store::recorded_new_above(std::string_view user,
                                                       std::string_view legacy_name,
                                                       std::uint32_t above) const {
  statement st(db_,
               "SELECT new_uid FROM messages WHERE user = ?1 AND legacy_name = ?2 AND new_uid > ?3");
  st.bind(1, user).bind(2, legacy_name).bind(3, std::int64_t{above});
  std::set<std::uint32_t> out;
  while (st.step()) out.insert(static_cast<std::uint32_t>(st.integer(0)));
  return out;
}

std::vector<message_record> state_store::messages(std::string_view user, std::string_view legacy_name) const {
  statement st(db_,
               "SELECT legacy_uid, new_uid, flags FROM messages"
               " WHERE user = ?1 AND legacy_name = ?2 ORDER BY legacy_uid");
  st.bind(1, user).bind(2, legacy_name);
  std::vector<message_record> out;
  while (st.step())
    out.push_back({static_cast<std::uint32_t>(st.integer(0)), static_cast<std::uint32_t>(st.integer(1)),
                   st.text(2)});
  return out;
}

void state_store::update_flags(std::string_view user, std::string_view legacy_name,
                               std::span<const std::pair<std::uint32_t, std::string>> flags) {
  if (flags.empty()) return;
  exec("BEGIN IMMEDIATE");
  try {
    statement st(db_, "UPDATE messages SET flags = ?4 WHERE user = ?1 AND legacy_name = ?2 AND legacy_uid = ?3");
    for (const auto& [legacy_uid, f] : flags) {
      st.bind(1, user).bind(2, legacy_name).bind(3, std::int64_t{legacy_uid}).bind(4, f);
      st.run();
      st.reset();
    }
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

std::int64_t state_store::begin_run(std::string_view user, std::int64_t now, std::int64_t pid,
                                    std::string_view started_by) {
  if (pid == 0) pid = ::getpid();
  // Check and insert in one write transaction: two processes cannot both pass.
  exec("BEGIN IMMEDIATE");
  try {
    statement running(db_, "SELECT id, pid FROM runs WHERE user = ?1 AND result = 'running'");
    running.bind(1, user);
    std::vector<std::int64_t> dead;
    while (running.step()) {
      const std::int64_t other = running.integer(1);
      if (process_alive(other))
        throw run_busy("a migration of " + std::string(user) + " is running in process " +
                           std::to_string(other),
                       other);
      dead.push_back(running.integer(0));
    }
    for (auto id : dead) {
      statement cut(db_, "UPDATE runs SET result = 'interrupted', finished_at = ?2 WHERE id = ?1");
      cut.bind(1, id).bind(2, now);
      cut.run();
    }
    statement st(db_, "INSERT INTO runs (user, started_at, result, pid, started_by)"
                      " VALUES (?1, ?2, 'running', ?3, ?4)");
    st.bind(1, user).bind(2, now).bind(3, pid).bind(4, started_by);
    st.run();
    const std::int64_t id = sqlite3_last_insert_rowid(db_);
    exec("COMMIT");
    return id;
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

void state_store::finish_run(const run_record& r) {
  statement st(db_,
               "UPDATE runs SET finished_at = ?2, result = ?3, messages_copied = ?4, bytes_copied = ?5,"
               " messages_failed = ?6, error = ?7, bytes_left = ?8 WHERE id = ?1");
  st.bind(1, r.id)
      .bind(2, r.finished_at)
      .bind(3, to_string(r.result))
      .bind(4, static_cast<std::int64_t>(r.messages_copied))
      .bind(5, static_cast<std::int64_t>(r.bytes_copied))
      .bind(6, static_cast<std::int64_t>(r.messages_failed))
      .bind(7, r.error)
      .bind(8, r.bytes_left);
  st.run();
}

namespace {
constexpr const char* kRunColumns =
    "id, user, started_at, finished_at, result, messages_copied, bytes_copied, messages_failed, error,"
    " started_by, bytes_left";
}  // namespace

std::vector<run_record> state_store::runs(std::string_view user, std::size_t limit) const {
  statement st(db_, (std::string("SELECT ") + kRunColumns +
                     " FROM runs WHERE user = ?1 ORDER BY id DESC LIMIT ?2").c_str());
  st.bind(1, user).bind(2, static_cast<std::int64_t>(limit));
  return read_runs(st);
}

std::vector<run_record> state_store::latest_runs() const {
  statement st(db_, (std::string("SELECT ") + kRunColumns +
                     " FROM runs WHERE id IN (SELECT MAX(id) FROM runs GROUP BY user) ORDER BY user")
                        .c_str());
  return read_runs(st);
}

run_totals state_store::totals() const {
  statement st(db_, "SELECT COUNT(*), COALESCE(SUM(messages_copied), 0), COALESCE(SUM(bytes_copied), 0)"
                    " FROM runs");
  run_totals t;
  if (st.step()) {
    t.runs = static_cast<std::uint64_t>(st.integer(0));
    t.messages_copied = static_cast<std::uint64_t>(st.integer(1));
    t.bytes_copied = static_cast<std::uint64_t>(st.integer(2));
  }
  return t;
}

std::vector<run_record> state_store::read_runs(statement& st) {
  std::vector<run_record> out;
  while (st.step()) {
    run_record r;
    r.id = st.integer(0);
    r.user = st.text(1);
    r.started_at = st.integer(2);
    r.finished_at = st.integer(3);
    r.result = parse_result(st.text(4));
    r.messages_copied = static_cast<std::uint64_t>(st.integer(5));
    r.bytes_copied = static_cast<std::uint64_t>(st.integer(6));
    r.messages_failed = static_cast<std::uint64_t>(st.integer(7));
    r.error = st.text(8);
    r.started_by = st.text(9);
    r.bytes_left = st.integer(10);
    out.push_back(std::move(r));
  }
  return out;
}

std::size_t state_store::mark_interrupted(std::int64_t now) {
  // Runs of this process (it is stopping) and of processes gone; not those of
  // another live suction (a `suction sync` beside the daemon).
  statement running(db_, "SELECT id, pid FROM runs WHERE result = 'running'");
  std::vector<std::int64_t> cut;
  while (running.step()) {
    const std::int64_t pid = running.integer(1);
    if (pid == ::getpid() || !process_alive(pid)) cut.push_back(running.integer(0));
  }
  for (auto id : cut) {
    statement st(db_, "UPDATE runs SET result = 'interrupted', finished_at = ?2 WHERE id = ?1");
    st.bind(1, id).bind(2, now);
    st.run();
  }
  return cut.size();
}

}  // namespace suction::sync
