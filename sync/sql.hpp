// The state store's thin SQL layer: one interface, two back ends (SQLite, the
// embedded default; PostgreSQL, the shared state of several nodes). Private
// to sync/: the state store speaks SQL through it and nothing else does.
//
// Statements are written once with SQLite's numbered parameters (?1, ?2 ...);
// the PostgreSQL back end rewrites them to $1, $2. Identifiers that are
// keywords in PostgreSQL ("user") are double-quoted, which both accept.
// Failures throw state_error (state_store.hpp); a statement's text never
// carries a value, so no message ever shows one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace suction::sync::sql {

enum class dialect : std::uint8_t { sqlite, postgresql };

class statement {
 public:
  virtual ~statement() = default;
  virtual statement& bind(int i, std::string_view v) = 0;  // positions from 1
  virtual statement& bind(int i, std::int64_t v) = 0;
  // Runs the statement on the first call; true while there is a row.
  virtual bool step() = 0;
  virtual std::int64_t integer(int col) const = 0;  // columns from 0
  virtual std::string text(int col) const = 0;
  // Ready to be bound and run again.
  virtual void reset() = 0;
  // Runs it to the end, then reset().
  void run() {
    while (step()) {
    }
    reset();
  }
};

class database {
 public:
  virtual ~database() = default;
  virtual dialect kind() const = 0;
  virtual std::unique_ptr<statement> prepare(std::string_view sql) = 0;
  // Statements without parameters, one or several.
  virtual void exec(std::string_view sql) = 0;
  // Begins a write transaction (SQLite: the file's write lock at once).
  virtual void begin() = 0;
  // Inside a transaction: waits for, then holds until its end, the lock named
  // `name` (PostgreSQL: an advisory lock; SQLite: begin() already holds the
  // only one).
  virtual void lock(std::string_view name) = 0;
  // The schema's version (0: none yet); set inside the migration's transaction.
  virtual int schema_version() = 0;
  virtual void set_schema_version(int v) = 0;
  // Milliseconds since the epoch by the database's clock: the one clock every
  // node of a cluster agrees on (leases).
  virtual const char* now_ms_sql() const = 0;
  // What to call it in messages: the path, or the server and database
  // (never a password).
  virtual const std::string& where() const = 0;
};

// A PostgreSQL location: a URI (postgresql://, postgres://) or a libpq
// keyword=value string whose first keyword libpq knows ("host=... dbname=...").
// Anything else is a path.
bool is_postgresql(std::string_view location);

// Opens the database; creates a SQLite file and its folder if needed.
std::unique_ptr<database> open(const std::string& location);

}  // namespace suction::sync::sql
