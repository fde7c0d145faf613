// The PostgreSQL back end of sync/sql.hpp (libpq, loaded at run time): the
// state of several nodes in one database. Every value goes as a parameter,
// as text, never spliced into the statement.
#include <dlfcn.h>
#include <libpq-fe.h>

#include <cstdlib>
#include <vector>

#include "sync/sql.hpp"
#include "sync/sql_backends.hpp"
#include "sync/state_store.hpp"

namespace suction::sync::sql {

namespace {

#define SUCTION_PQ_FUNCTIONS(X) X(PQclear) X(PQconndefaults) X(PQconnectdbParams) \
  X(PQconninfoFree) X(PQconninfoParse) X(PQerrorMessage) X(PQexec) X(PQexecParams) X(PQfinish) \
  X(PQfreemem) X(PQgetisnull) X(PQgetlength) X(PQgetvalue) X(PQntuples) X(PQreset) \
  X(PQresultErrorMessage) X(PQresultStatus) X(PQsetNoticeProcessor) X(PQstatus)

// libpq, loaded the first time a PostgreSQL location is seen: a node whose
// state is a SQLite file never maps libpq and the twenty libraries it pulls
// in (Kerberos, LDAP, ...), which cost every `suction` process about 11 ms
// at start and 4 MiB (tests/bench/RESULTS.md). Only the functions used here.
struct libpq_api {
#define SUCTION_PQ(name) decltype(&::name) name = nullptr;
  SUCTION_PQ_FUNCTIONS(SUCTION_PQ)
#undef SUCTION_PQ
};

const libpq_api& pq() {
  static const libpq_api api = [] {
    void* lib = ::dlopen("libpq.so.5", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* why = ::dlerror();
      throw state_error(std::string("state store: PostgreSQL needs libpq (Debian package libpq5): ") +
                        (why ? why : "not found"));
    }
    libpq_api a;
#define SUCTION_PQ(name)                                                                   \
  a.name = reinterpret_cast<decltype(&::name)>(::dlsym(lib, #name));                     \
  if (!a.name) throw state_error("state store: libpq.so.5 has no " #name);
    SUCTION_PQ_FUNCTIONS(SUCTION_PQ)
#undef SUCTION_PQ
    return a;
  }();
  return api;
}

// ?N -> $N: the statements are written once, in SQLite's form. None of them
// has a '?' inside a string literal.
std::string to_dollars(std::string_view sql) {
  std::string out(sql);
  for (std::size_t i = 0; i + 1 < out.size(); ++i)
    if (out[i] == '?' && out[i + 1] >= '0' && out[i + 1] <= '9') out[i] = '$';
  return out;
}

std::string trimmed(const char* msg) {
  std::string s = msg ? msg : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  for (char& c : s)
    if (c == '\n') c = ' ';
  return s;
}

// The parsed connection string, freed with it; opts null when libpq cannot
// parse it (its message is not kept: it may quote the password).
struct conninfo_options {
  PQconninfoOption* opts = nullptr;
  explicit conninfo_options(const std::string& conninfo) {
    char* err = nullptr;
    opts = pq().PQconninfoParse(conninfo.c_str(), &err);
    pq().PQfreemem(err);
  }
  ~conninfo_options() { pq().PQconninfoFree(opts); }
  const char* get(std::string_view key) const {
    for (auto* o = opts; o && o->keyword; ++o)
      if (key == o->keyword) return o->val;
    return nullptr;
  }
};

// One statement's round trip, with its parameters as text. A connection the
// server closed (a restart, an idle cut) is opened again and the statement
// sent once more, unless it was inside a transaction: that one is gone with
// the connection, and the caller's transaction fails as a whole.
PGresult* round_trip(PGconn* conn, bool in_transaction, const std::string& sql,
                     const std::vector<const char*>& values) {
  for (int attempt = 0;; ++attempt) {
    PGresult* res = values.empty() ? pq().PQexec(conn, sql.c_str())
                                   : pq().PQexecParams(conn, sql.c_str(), static_cast<int>(values.size()),
                                                       nullptr, values.data(), nullptr, nullptr, 0);
    const auto status = pq().PQresultStatus(res);
    if (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK) return res;
    if (attempt == 0 && !in_transaction && pq().PQstatus(conn) == CONNECTION_BAD) {
      pq().PQclear(res);
      pq().PQreset(conn);
      if (pq().PQstatus(conn) == CONNECTION_OK) continue;
      return nullptr;
    }
    return res;
  }
}

class pg_statement final : public statement {
 public:
  pg_statement(PGconn* conn, const std::string& where, const bool& in_transaction, std::string_view sql)
      : conn_(conn), where_(where), in_transaction_(in_transaction), sql_(to_dollars(sql)) {}
  ~pg_statement() override { pq().PQclear(res_); }

  statement& bind(int i, std::string_view v) override {
    slot(i) = std::string(v);
    return *this;
  }
  statement& bind(int i, std::int64_t v) override {
    slot(i) = std::to_string(v);
    return *this;
  }
  bool step() override {
    if (!res_) execute();
    return ++row_ < pq().PQntuples(res_);
  }
  std::int64_t integer(int col) const override {
    if (pq().PQgetisnull(res_, row_, col)) return 0;
    return std::strtoll(pq().PQgetvalue(res_, row_, col), nullptr, 10);
  }
  std::string text(int col) const override {
    return std::string(pq().PQgetvalue(res_, row_, col),
                       static_cast<std::size_t>(pq().PQgetlength(res_, row_, col)));
  }
  void reset() override {
    pq().PQclear(res_);
    res_ = nullptr;
    row_ = -1;
    params_.clear();
  }

 private:
  std::string& slot(int i) {
    if (params_.size() < static_cast<std::size_t>(i)) params_.resize(static_cast<std::size_t>(i));
    return params_[static_cast<std::size_t>(i - 1)];
  }
  void execute() {
    std::vector<const char*> values;
    values.reserve(params_.size());
    for (const auto& p : params_) values.push_back(p.c_str());
    res_ = round_trip(conn_, in_transaction_, sql_, values);
    const auto status = pq().PQresultStatus(res_);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      std::string msg = trimmed(res_ ? pq().PQresultErrorMessage(res_) : pq().PQerrorMessage(conn_));
      pq().PQclear(res_);
      res_ = nullptr;
      throw state_error("state store " + where_ + ": " + msg);
    }
    row_ = -1;
  }
  PGconn* conn_;
  const std::string& where_;
  const bool& in_transaction_;
  std::string sql_;
  std::vector<std::string> params_;
  PGresult* res_ = nullptr;
  int row_ = -1;
};

class pg_database final : public database {
 public:
  explicit pg_database(const std::string& conninfo) {
    conninfo_options parsed(conninfo);
    // libpq's own words quote parts of the string, which may be the
    // password (a URI's "user:secret@"): not repeated.
    if (!parsed.opts)
      throw state_error("state store: [sync] state_db: not a PostgreSQL connection string (libpq cannot "
                        "parse it; check quoting and %-escapes)");
    where_ = "postgresql";
    for (const char* key : {"host", "port", "dbname", "user"})
      if (const char* v = parsed.get(key); v && *v) where_ += std::string(" ") + key + "=" + v;
    // A server that does not answer is an error after 10 s, not a hang,
    // unless the connection string says otherwise.
    const bool has_timeout = parsed.get("connect_timeout") != nullptr;
    const char* keys[] = {"dbname", "application_name", has_timeout ? nullptr : "connect_timeout", nullptr};
    const char* vals[] = {conninfo.c_str(), "suction", has_timeout ? nullptr : "10", nullptr};
    conn_ = pq().PQconnectdbParams(keys, vals, 1);
    if (!conn_ || pq().PQstatus(conn_) != CONNECTION_OK) {
      std::string msg = conn_ ? trimmed(pq().PQerrorMessage(conn_)) : "out of memory";
      pq().PQfinish(conn_);
      conn_ = nullptr;
      throw state_error("state store: cannot connect to " + where_ + ": " + msg);
    }
    // NOTICEs ("relation already exists, skipping") are not for stderr.
    pq().PQsetNoticeProcessor(conn_, [](void*, const char*) {}, nullptr);
  }
  ~pg_database() override { pq().PQfinish(conn_); }

  dialect kind() const override { return dialect::postgresql; }
  std::unique_ptr<statement> prepare(std::string_view sql) override {
    return std::make_unique<pg_statement>(conn_, where_, in_transaction_, sql);
  }
  void exec(std::string_view sql) override {
    const std::string text(sql);
    PGresult* res = round_trip(conn_, in_transaction_, text, {});
    const auto status = pq().PQresultStatus(res);
    // COMMIT and ROLLBACK end the transaction whatever they answer.
    if (text == "COMMIT" || text == "ROLLBACK") in_transaction_ = false;
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
      std::string msg = trimmed(res ? pq().PQresultErrorMessage(res) : pq().PQerrorMessage(conn_));
      pq().PQclear(res);
      throw state_error("state store " + where_ + ": " + msg);
    }
    pq().PQclear(res);
  }
  void begin() override {
    exec("BEGIN");
    in_transaction_ = true;
  }
  void lock(std::string_view name) override {
    pg_statement st(conn_, where_, in_transaction_, "SELECT pg_advisory_xact_lock(hashtextextended(?1, 0))");
    st.bind(1, name);
    st.run();
  }
  int schema_version() override {
    // Read from pg_class with the statement's snapshot, not to_regclass: a
    // name lookup may answer from a cache that still says "no such table"
    // after another node's migration committed while this one waited.
    pg_statement st(conn_, where_, in_transaction_,
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE c.relname = 'suction_schema'"
                    " AND n.nspname = current_schema())");
    if (!st.step() || st.text(0) != "t") return 0;
    pg_statement v(conn_, where_, in_transaction_, "SELECT max(version) FROM suction_schema");
    return v.step() ? static_cast<int>(v.integer(0)) : 0;
  }
  void set_schema_version(int v) override {
    exec("CREATE TABLE IF NOT EXISTS suction_schema (version INTEGER NOT NULL);"
         " DELETE FROM suction_schema; INSERT INTO suction_schema (version) VALUES (" +
         std::to_string(v) + ")");
  }
  const char* now_ms_sql() const override {
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";
  }
  const std::string& where() const override { return where_; }

 private:
  PGconn* conn_ = nullptr;
  bool in_transaction_ = false;  // round_trip resends nothing inside one
  std::string where_;
};

}  // namespace

std::unique_ptr<database> open_postgresql(const std::string& conninfo) {
  return std::make_unique<pg_database>(conninfo);
}

bool is_postgresql(std::string_view location) {
  if (location.starts_with("postgresql://") || location.starts_with("postgres://")) return true;
  std::size_t n = 0;
  while (n < location.size() && ((location[n] >= 'a' && location[n] <= 'z') || location[n] == '_')) ++n;
  std::size_t eq = n;
  while (eq < location.size() && location[eq] == ' ') ++eq;
  if (n == 0 || eq >= location.size() || location[eq] != '=') return false;
  const std::string key(location.substr(0, n));
  PQconninfoOption* defaults = pq().PQconndefaults();
  bool known = false;
  for (auto* o = defaults; o && o->keyword; ++o)
    if (key == o->keyword) known = true;
  pq().PQconninfoFree(defaults);
  return known;
}

std::unique_ptr<database> open(const std::string& location) {
  return is_postgresql(location) ? open_postgresql(location) : open_sqlite(location);
}

}  // namespace suction::sync::sql
