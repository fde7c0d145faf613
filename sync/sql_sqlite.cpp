// The SQLite back end of sync/sql.hpp: one file in WAL mode.
#include <sqlite3.h>

#include <chrono>
#include <filesystem>
#include <thread>
#include <system_error>

#include "sync/sql.hpp"
#include "sync/sql_backends.hpp"
#include "sync/state_store.hpp"

namespace suction::sync::sql {

namespace {

class sqlite_statement final : public statement {
 public:
  sqlite_statement(sqlite3* db, std::string_view sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &stmt_, nullptr) != SQLITE_OK)
      fail("prepare");
  }
  ~sqlite_statement() override { sqlite3_finalize(stmt_); }

  statement& bind(int i, std::string_view v) override {
    // An empty view may have no data(): SQLite would bind NULL, not ''.
    check(sqlite3_bind_text(stmt_, i, v.empty() ? "" : v.data(), static_cast<int>(v.size()),
                            SQLITE_TRANSIENT),
          "bind");
    return *this;
  }
  statement& bind(int i, std::int64_t v) override {
    check(sqlite3_bind_int64(stmt_, i, v), "bind");
    return *this;
  }
  bool step() override {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail("step");
  }
  std::int64_t integer(int col) const override { return sqlite3_column_int64(stmt_, col); }
  std::string text(int col) const override {
    auto p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
    return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, col))) : std::string();
  }
  void reset() override {
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

class sqlite_database final : public database {
 public:
  explicit sqlite_database(const std::filesystem::path& path) : where_(path.string()) {
    std::error_code ec;
    if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        nullptr) != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      db_ = nullptr;
      throw state_error("state store: cannot open " + where_ + ": " + msg);
    }
    sqlite3_busy_timeout(db_, 5000);
    // Switching a new file to WAL needs it to itself, and SQLite answers
    // "locked" at once instead of waiting when another process opens it at
    // the same instant (the daemon and `suction report`): tried again for 5 s.
    for (int tries = 0;; ++tries) {
      const int rc = sqlite3_exec(db_, "PRAGMA journal_mode = WAL", nullptr, nullptr, nullptr);
      if (rc == SQLITE_OK) break;
      if ((rc != SQLITE_BUSY && rc != SQLITE_LOCKED) || tries >= 250) exec("PRAGMA journal_mode = WAL");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    // WAL with synchronous=NORMAL survives a process crash at any instant
    // (only a power loss may drop the last transactions, never corrupt).
    exec("PRAGMA synchronous = NORMAL");
    exec("PRAGMA foreign_keys = ON");
  }
  ~sqlite_database() override { sqlite3_close(db_); }

  dialect kind() const override { return dialect::sqlite; }
  std::unique_ptr<statement> prepare(std::string_view sql) override {
    return std::make_unique<sqlite_statement>(db_, sql);
  }
  void exec(std::string_view sql) override {
    char* err = nullptr;
    const std::string text(sql);
    if (sqlite3_exec(db_, text.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : sqlite3_errmsg(db_);
      sqlite3_free(err);
      throw state_error("state store " + where_ + ": " + msg);
    }
  }
  void begin() override { exec("BEGIN IMMEDIATE"); }
  void lock(std::string_view) override {}
  int schema_version() override {
    sqlite_statement st(db_, "PRAGMA user_version");
    return st.step() ? static_cast<int>(st.integer(0)) : 0;
  }
  void set_schema_version(int v) override { exec("PRAGMA user_version = " + std::to_string(v)); }
  // unixepoch('subsec') needs SQLite 3.42; Debian 12 has 3.40.
  const char* now_ms_sql() const override {
    return "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
  }
  const std::string& where() const override { return where_; }

 private:
  sqlite3* db_ = nullptr;
  std::string where_;
};

}  // namespace

std::unique_ptr<database> open_sqlite(const std::string& path) {
  return std::make_unique<sqlite_database>(std::filesystem::path(path));
}

}  // namespace suction::sync::sql
