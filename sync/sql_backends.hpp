// The two back ends of sync/sql.hpp, chosen by sql::open (sql.cpp).
#pragma once

#include <memory>
#include <string>

#include "sync/sql.hpp"

namespace suction::sync::sql {

std::unique_ptr<database> open_sqlite(const std::string& path);
std::unique_ptr<database> open_postgresql(const std::string& conninfo);

}  // namespace suction::sync::sql
